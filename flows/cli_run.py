"""``atompipe run`` and ``atompipe active``: a campaign's flows through Prefect (or the no-op
rerun without it), their checks before any work, and the lines after the run.

Prefect, torch and MLflow are imported inside the commands only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_common import OWN_PACKAGES, CampaignArgument, fail, load_config, note
from flows.cli_signals import run_or_exit


def run(
    campaign: CampaignArgument,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: models.nn.activation=tanh")
    ] = None,
    features_only: Annotated[
        bool, typer.Option("--features-only", help="the featurize flow: datasets and features")
    ] = False,
    model: Annotated[
        list[str] | None, typer.Option("--model", help="the train flow for this model (repeat)")
    ] = None,
    quiet: Annotated[bool, typer.Option(help="no progress bars")] = False,
    fast_path: Annotated[
        bool,
        typer.Option(
            "--fast-path/--no-fast-path",
            help="answer a rerun with nothing to do from the store, without Prefect",
        ),
    ] = True,
) -> None:
    """Run a campaign: ingest, featurize, train, evaluate, record in MLflow."""
    if fast_path and not (features_only or model) and _answered(campaign, set_):
        return
    cfg = load_config(campaign, set_)
    if features_only and model:
        fail("--features-only and --model exclude each other")
    unknown = [m for m in model or [] if m not in cfg.models]
    if unknown:
        fail(f"{campaign}: --model {unknown[0]!r}: the campaign's models are {list(cfg.models)}")
    _check_devices(cfg)
    import os

    # Prefect's cached results live with the campaign's workspace, not in ~/.prefect; in a
    # read-only workspace (every stage done: nothing to write there) in a folder of their own
    results = _results_folder(campaign, cfg, records=not features_only)
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(results))
    from flows.campaign import run_campaign
    from tasks.tracking import TrackingError, check_tracking

    try:  # an unreachable MLflow server fails now, not after hours of training
        if not features_only:
            check_tracking(cfg.tracking_uri)
    except TrackingError as exc:
        fail(f"{campaign}: tracking.uri: {exc}")
    _quiet_failure_tracebacks()
    from flows.settings import start_prefect_server_apart

    start_prefect_server_apart()  # Ctrl-C in the terminal stops the campaign, not Prefect's API
    typer.secho(
        f"campaign {cfg.name}: {len(cfg.datasets)} dataset(s), {len(cfg.features)} feature "
        f"set(s), {len(model or cfg.models)} model(s); a line per stage as it ends",
        err=True,
        dim=True,
    )
    summary = run_or_exit(
        lambda: run_campaign(
            cfg, show_progress=not quiet, features_only=features_only, models=model or None
        ),
        f"campaign {cfg.name}",
    )
    if features_only:
        for name, key in summary["features"].items():
            typer.echo(f"features {name}: {key}")
        return
    _outcome(summary)


def active(
    campaign: Annotated[Path, typer.Argument(help="campaign YAML file with an `active:` section")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: active.budget=50")
    ] = None,
    more: Annotated[
        int | None,
        typer.Option(
            "--more",
            min=1,
            help="run at most this many iterations beyond those finished before (what each "
            "run of `atompipe serve` does with 1)",
        ),
    ] = None,
) -> None:
    """Run the campaign's active-learning loop: explore, select, label, retrain (cached; a
    killed loop resumes where it stopped). docs/active-learning.md."""
    cfg = load_config(campaign, set_)
    import os

    os.environ.setdefault(
        "PREFECT_LOCAL_STORAGE_PATH", str((cfg.workspace_path / "prefect-results").resolve())
    )
    from flows.active import check_active, run_active
    from flows.config import ConfigError
    from tasks.record import TrackingError, check_tracking

    try:
        check_active(cfg)
        check_tracking(cfg.tracking_uri)
    except (ConfigError, TrackingError) as exc:
        fail(f"{campaign}: {exc}")
    _quiet_failure_tracebacks()
    summary = run_or_exit(lambda: run_active(cfg, more), f"active learning of {cfg.name}")
    for row in summary["iterations"]:
        typer.echo(
            f"iteration {row['iteration']}: {row['dataset_size']} structures, "
            f"{row['labels_added']} labels added ({row['labels_computed']} computed now"
            + (f", {row['labels_failed']} failed" if row.get("labels_failed") else "")
            + "), "
            f"test force MAE {row['test_force_mae']:.4f} eV/Å"
        )
    typer.echo(f"stopped: {summary['stopped']}; model {summary['model']['dir']}")
    typer.echo(f"MLflow: {summary['tracking']['tracking_uri']}  (atompipe ui)")


def _answered(campaign: Path, overrides: list[str] | None) -> bool:
    """The no-op rerun (:mod:`flows.fastpath`): when every stage of the campaign is complete,
    print what the full run would print and return True, before Prefect or torch is imported;
    else say why the full path runs and return False."""
    from flows.fastpath import completed_run, results_folder
    from flows.progress import CampaignProgress

    cfg = load_config(campaign, overrides, build_featurizers=False)
    found = completed_run(cfg, results_folder(cfg))
    if found.summary is None:
        typer.secho(f"campaign {cfg.name}: full run ({found.reason})", err=True, dim=True)
        return False
    typer.secho(
        f"campaign {cfg.name}: every stage is complete (fast path: nothing to run, Prefect not "
        "started; --no-fast-path checks through Prefect)",
        err=True,
        dim=True,
    )
    CampaignProgress().summary_table(found.summary, cfg.evaluation.metric)
    _outcome(found.summary)
    return True


def _outcome(summary: dict[str, Any]) -> None:
    """The lines after a campaign run's table: the champion and where the runs are tracked."""
    champ = summary["tracking"].get("champion")
    if champ and champ.get("compared") is False:
        typer.echo(
            f"champion: {champ['model']} ({champ['name']} v{champ['version']}) kept: it was "
            "scored on another dataset or split, so this run's models are not compared with it"
        )
    elif champ:
        typer.echo(f"champion: {champ['model']} (registered {champ['name']} v{champ['version']})")
    typer.echo(f"MLflow: {summary['tracking']['tracking_uri']}  (atompipe ui)")


def _check_devices(cfg: Any) -> None:
    """A model asking for ``device: cuda`` on a machine without a GPU: one message now (the
    training then runs on the CPU without repeating it)."""
    if any(getattr(m, "device", "cpu") != "cpu" for m in cfg.models.values()):
        from atomistic.device import resolve_device

        for m in cfg.models.values():
            resolve_device(getattr(m, "device", "cpu"), report=note)


def _no_failure_traceback(record) -> bool:
    name = record.name
    return not (record.exc_info and name.startswith(("prefect.flow_runs", "prefect.task_runs")))


def _no_third_party_chatter(record) -> bool:
    """Below ERROR, only Prefect's and atompipe's records reach the terminal (not Dask's
    "Worker process still alive" or MLflow's database notes, which Prefect's handlers would
    print)."""
    import logging

    top = record.name.partition(".")[0]
    return record.levelno >= logging.ERROR or top in ("prefect", "root", *OWN_PACKAGES)


def _quiet_failure_tracebacks() -> None:
    """Keep Prefect's task and flow failure tracebacks off the terminal (they still reach the
    Prefect API's logs): a failed run ends with one ``error:`` line naming the culprit."""
    import logging

    from prefect.logging.configuration import ensure_logging_setup

    ensure_logging_setup()
    for name in ("", "prefect"):
        for handler in logging.getLogger(name).handlers:
            for check in (_no_failure_traceback, _no_third_party_chatter):
                if check not in handler.filters:
                    handler.addFilter(check)


def _not_writable(folder: Path) -> OSError | None:
    """Why a file cannot be created in ``folder`` (None when it can, or it does not exist)."""
    import os
    import uuid

    if not folder.is_dir():
        return None
    probe = folder / f".atompipe-probe-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except OSError as exc:
        return exc
    os.close(fd)
    probe.unlink()
    return None


def _results_folder(campaign: Path, cfg: Any, records: bool) -> Path:
    """Where Prefect keeps this campaign's results: ``<workspace>/prefect-results``, or, when
    the workspace is read-only, a temporary folder (results are a cache; the stages check
    their outputs in the store and the model folders). A read-only workspace that holds the
    MLflow database or its artifacts (sqlite or file tracking: ``<workspace>/mlartifacts``)
    cannot succeed when the run is recorded (not ``--features-only``): one line says so,
    before any work."""
    import tempfile

    work = cfg.workspace_path.resolve()
    denied = _not_writable(work)
    if denied is None:
        return work / "prefect-results"
    uri = cfg.tracking_uri
    if records and not uri.startswith(("http://", "https://")):
        fail(
            f"{campaign}: workspace {work} is read-only ({denied}); atompipe run records every "
            f"run in MLflow ({uri}, artifacts in {work / 'mlartifacts'}): make the workspace "
            "writable, or set tracking.uri to an MLflow server"
        )
    return Path(tempfile.mkdtemp(prefix="atompipe-results-"))
