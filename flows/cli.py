"""The ``atompipe`` command line. Imports stay inside commands so that ``--help`` is instant."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.settings import configure_environment

app = typer.Typer(
    name="atompipe",
    help="Atomistic machine learning campaigns: ingest, featurize, train, track.",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_STORE = "workspace/store.zarr"


@app.callback()
def _root() -> None:
    """Atomistic machine learning campaigns: ingest, featurize, train, track."""
    configure_environment()


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code=1)


@app.command()
def ingest(
    paths: Annotated[list[Path], typer.Argument(help="ASE-readable files, globs or folders")],
    store: Annotated[str, typer.Option(help="Zarr store path or fsspec URL")] = DEFAULT_STORE,
    unlabelled: Annotated[
        bool, typer.Option("--unlabelled", help="accept structures without energies")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Validate structures and store them as a content-addressed dataset; print its key."""
    from atomistic.data import DataError, load_files, write_dataset
    from atomistic.storage import StoreError

    try:
        ds = load_files(paths, require_energy=not unlabelled)
        key, written = write_dataset(ds, store)
    except (DataError, StoreError, OSError) as exc:
        _fail(str(exc))
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


def _load(campaign: Path, overrides: list[str] | None = None):
    import yaml

    from flows.config import ConfigError, load_campaign

    parsed = {}
    for item in overrides or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--set {item!r}: expected KEY=VALUE")
        parsed[key] = yaml.safe_load(value)
    try:
        return load_campaign(campaign, parsed)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def run(
    campaign: Annotated[Path, typer.Argument(help="campaign YAML file")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: models.nn.activation=tanh")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
) -> None:
    """Run a campaign: ingest, featurize, train, evaluate, record in MLflow."""
    cfg = _load(campaign, set_)
    from flows.campaign import run_campaign

    try:
        summary = run_campaign(cfg, show_progress=not quiet)
    except Exception as exc:  # the flow failed: one clear line, non-zero exit
        _fail(f"campaign {cfg.name} failed: {exc}")
    champ = summary["tracking"].get("champion")
    if champ:
        typer.echo(f"champion: {champ['model']} (registered {champ['name']} v{champ['version']})")
    typer.echo(f"MLflow: {summary['tracking']['tracking_uri']}  (atompipe ui)")


def main() -> None:  # pragma: no cover - console entry point
    configure_environment()
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
