"""The ``atompipe`` command line: the typer app, its small commands (``ingest``, ``featurize``,
``compare``) and the entry point. The other commands live in ``cli_run`` (run, active),
``cli_latent``, ``cli_serve`` (ui, serve) and ``cli_predict`` (predict, export); Ctrl-C
handling in ``cli_signals``. Imports stay inside commands so that ``--help`` is instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import (
    DEFAULT_STORE,
    OWN_PACKAGES,
    CampaignArgument,
    SetOption,
    StoreOption,
    fail,
    load_config,
    parse_pairs,
)
from flows.cli_latent import latent
from flows.cli_predict import export, predict
from flows.cli_run import active, run
from flows.cli_serve import serve, ui
from flows.cli_signals import exit_interrupted, stop_on_signals, stopped
from flows.settings import configure_environment

app = typer.Typer(
    name="atompipe",
    help="Atomistic machine learning campaigns: ingest, featurize, train, track.",
    no_args_is_help=True,
    add_completion=False,
)

# the first line of each command, printed before its heavy imports (torch, Prefect, MLflow)
_FIRST_LINE = {
    "run": "loading the campaign; Prefect's API starts if anything is to compute (about 10 s "
    "the first time)",
    "active": "loading the campaign; Prefect's API starts next (about 10 s the first time)",
    "compare": "reading the campaign's MLflow runs",
    "predict": "loading the model",
    "export": "loading the model",
    "ingest": "reading the structures",
    "featurize": "starting the Dask cluster",
    "latent": "loading the features",
    "serve": "loading the campaign",
}


@app.callback()
def _root(ctx: typer.Context) -> None:
    """Atomistic machine learning campaigns: ingest, featurize, train, track."""
    configure_environment()
    _quiet_third_party()
    hint = _FIRST_LINE.get(ctx.invoked_subcommand or "")
    if hint:
        typer.secho(f"atompipe {ctx.invoked_subcommand}: {hint} …", err=True, dim=True)


def _quiet_third_party() -> None:
    """Keep third-party warnings (MLflow's coloured UserWarnings, Dask's nanny, deprecations)
    off the terminal and out of redirected logs: the command line is an edge, and what a user
    sees there is atompipe's own output. Errors still show. Atompipe's own warnings (e.g.
    ``TrainingWarning``) still show. Child processes (Dask workers, Prefect's API server)
    inherit the same settings through the environment; a variable the user set wins."""
    import os
    import warnings

    os.environ.setdefault("PYTHONWARNINGS", "ignore")  # child processes
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    if getattr(warnings.showwarning, "_atompipe", False):
        return
    show = warnings.showwarning

    def own_only(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001
        if category.__module__.partition(".")[0] in OWN_PACKAGES:
            show(message, category, filename, lineno, file, line)

    own_only._atompipe = True  # type: ignore[attr-defined]
    warnings.showwarning = own_only


def ingest(
    paths: Annotated[list[Path], typer.Argument(help="ASE-readable files, globs or folders")],
    store: StoreOption = DEFAULT_STORE,
    unlabelled: Annotated[
        bool, typer.Option("--unlabelled", help="accept structures without energies")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    energy_key: Annotated[str, typer.Option(help="the energy label's name")] = "energy",
    forces_key: Annotated[str, typer.Option(help="the forces' name (a per-atom array)")] = "forces",
) -> None:
    """Validate structures and store them as a content-addressed dataset; print its key."""
    from atomistic.data import DataError, load_files, write_dataset
    from atomistic.storage import StoreError

    try:
        ds = load_files(
            paths, require_energy=not unlabelled, energy_key=energy_key, forces_key=forces_key
        )
        key, written = write_dataset(ds, store)
    except (DataError, StoreError, OSError) as exc:
        fail(str(exc))
    summary = ds.summary()
    summary["stored"] = "written" if written else "already present (nothing written)"
    summary["store"] = store
    if as_json:
        typer.echo(json.dumps(summary, indent=1))
        return
    typer.echo(f"dataset {key}")
    for name, value in summary.items():
        if name != "key":
            typer.echo(f"  {name:<26} {value}")


def featurize(
    dataset: Annotated[str, typer.Argument(help="dataset key (from `atompipe ingest`)")],
    features: Annotated[str, typer.Option(help="gaussian | aev")] = "gaussian",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="featurizer parameter KEY=VALUE (YAML)")
    ] = None,
    store: StoreOption = DEFAULT_STORE,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address")] = None,
    workers: Annotated[int | None, typer.Option(help="LocalCluster workers")] = None,
    rows_per_chunk: Annotated[
        int | None, typer.Option(min=1, help="atoms per chunk (one Dask task each)")
    ] = None,
) -> None:
    """Featurize a stored dataset on Dask into the store; print the feature key."""
    from atomistic.storage import StoreError
    from tasks.cluster import ClusterError, dask_client
    from tasks.featurize import featurize_dataset
    from tasks.refs import FeatureRef

    params = parse_pairs(param, "--param")
    if features not in ("gaussian", "aev"):
        fail(f"--features {features!r}: expected gaussian or aev")
    _check_params(features, params)
    try:
        with stop_on_signals(), dask_client(scheduler, workers) as client:
            ref = featurize_dataset(
                store, dataset, features, params, client=client, rows_per_chunk=rows_per_chunk
            )
    except (KeyError, ValueError, TypeError, StoreError, ClusterError) as exc:
        fail(exc)
    except BaseException as exc:
        if stopped(exc):
            exit_interrupted(f"featurization of {dataset}")
        raise
    made = FeatureRef.of(ref)
    typer.echo(f"features {made.key}")
    typer.echo(f"  chunks computed {made.computed_chunks} of {made.n_chunks}")


def _check_params(features: str, params: dict) -> None:
    """Featurizer parameters validated as a campaign's feature set is: an error names the
    ``--param`` at fault (``--param cutoff=abc``).

    Parameters
    ----------
    features : str
        ``gaussian`` or ``aev``.
    params : dict
        The ``--param`` values by name.
    """
    from pydantic import ValidationError

    from flows.config import AEVFeatures, GaussianFeatures

    model = GaussianFeatures if features == "gaussian" else AEVFeatures
    fields = {k: v for k, v in params.items() if k in model.model_fields}
    try:
        if features == "gaussian":
            model.model_validate({"dataset": "-", **params})
        else:
            model.model_validate({"dataset": "-", "params": params, **fields})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = [str(p) for p in err["loc"] if p != "params" and "[" not in str(p)]
        where = f"--param {loc[0]}" if loc else "--param"
        msg = err["msg"].removeprefix("Value error, ")
        fail(f"{where}: {msg}" if err["type"] != "extra_forbidden" else f"{where}: unknown key")


def compare(campaign: CampaignArgument, set_: SetOption = None) -> None:
    """Print the campaign's MLflow runs as a table (best first)."""
    cfg = load_config(campaign, set_, build_featurizers=False)  # computes nothing: no torch
    from flows.compare import NoExperiment, print_comparison

    try:
        print_comparison(cfg)
    except NoExperiment as exc:
        fail(exc)


# registered in this order: `atompipe --help` lists the commands so
for _command in (ingest, run, active, featurize, latent, compare, ui, predict, export, serve):
    app.command()(_command)


def main() -> None:  # pragma: no cover - console entry point
    """The ``atompipe`` console entry point."""
    configure_environment()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
