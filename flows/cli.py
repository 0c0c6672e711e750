"""The ``atompipe`` command line. Imports stay inside commands so that ``--help`` is instant."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer

from flows.settings import configure_environment

app = typer.Typer(
    name="atompipe",
    help="Atomistic machine learning campaigns: ingest, featurize, train, track.",
    no_args_is_help=True,
    add_completion=False,
)

DEFAULT_STORE = "workspace/store.zarr"
T = TypeVar("T")


# the first line of each command, printed before its heavy imports (torch, Prefect, MLflow)
_FIRST_LINE = {
    "run": "loading the campaign; Prefect's API starts next (about 10 s the first time)",
    "active": "loading the campaign; Prefect's API starts next (about 10 s the first time)",
    "compare": "reading the campaign's MLflow runs",
    "predict": "loading the model",
    "export": "loading the model",
    "ingest": "reading the structures",
    "featurize": "starting the Dask cluster",
    "latent": "loading the features",
    "serve": "loading the campaign",
}

# packages whose warnings are ours to show; every other package's are kept off the terminal
_OWN_PACKAGES = ("atomistic", "tasks", "flows")


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
        if category.__module__.partition(".")[0] in _OWN_PACKAGES:
            show(message, category, filename, lineno, file, line)

    own_only._atompipe = True  # type: ignore[attr-defined]
    warnings.showwarning = own_only


def _fail(message: object) -> NoReturn:
    if isinstance(message, KeyError) and message.args:  # str(KeyError) adds quotes
        message = message.args[0]
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


def _pairs(items: list[str] | None, option: str) -> dict:
    """``KEY=VALUE`` options as a dict, each value read as YAML (safe_load)."""
    import yaml

    parsed = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"{option} {item!r}: expected KEY=VALUE")
        parsed[key] = yaml.safe_load(value)
    return parsed


def _load(campaign: Path, overrides: list[str] | None = None, build_featurizers: bool = True):
    from flows.config import ConfigError, load_campaign

    try:
        return load_campaign(
            campaign, _pairs(overrides, "--set"), build_featurizers=build_featurizers
        )
    except ConfigError as exc:
        _fail(str(exc))


INTERRUPTED = 130  # the shell's status for a command stopped by SIGINT


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM ask the work to stop at its next safe point (a featurization chunk,
    a training batch: :mod:`atomistic.interrupt`) instead of killing it mid-write; what is
    complete stays and a rerun resumes from it. A second signal stops at once."""
    import signal

    from atomistic import interrupt

    def handler(signum: int, frame: object) -> None:
        if interrupt.stop_requested():  # impatient: the default behaviour from now on
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise KeyboardInterrupt
        interrupt.request_stop()

    interrupt.clear()
    sigs = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {sig: signal.signal(sig, handler) for sig in sigs}
    except ValueError:  # not the main thread (an embedding application): leave its handlers
        previous = {}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stoppable(fn: Callable[[], T]) -> T:
    """``fn()`` in a worker thread while this (the main) thread waits with the stop handlers
    installed. Prefect swaps in its own SIGTERM handler for a flow run in the main thread (it
    aborts the flow where it stands, training threads still running); a flow in a worker thread
    leaves ours in place, so SIGTERM stops at a safe point exactly as SIGINT does."""
    import contextvars
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the main thread below
            box["error"] = exc

    context = contextvars.copy_context()  # Prefect's settings (API URL) travel with it
    worker = threading.Thread(target=context.run, args=(target,), name="atompipe-run", daemon=True)
    with _stop_on_signals():
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _stopped(exc: BaseException) -> bool:
    """The failure is a stop request (or came after one: a server that died of the signal)."""
    from atomistic import interrupt

    name = type(exc).__name__
    return interrupt.stop_requested() or name in ("Interrupted", "TerminationSignal")


def _exit_interrupted(what: str) -> NoReturn:
    typer.secho(
        f"interrupted: {what} stopped; nothing partial was published, run the same command "
        "again to resume",
        fg=typer.colors.YELLOW,
        err=True,
    )
    raise typer.Exit(code=INTERRUPTED)


def _no_failure_traceback(record) -> bool:
    name = record.name
    return not (record.exc_info and name.startswith(("prefect.flow_runs", "prefect.task_runs")))


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


def _no_third_party_chatter(record) -> bool:
    """Below ERROR, only Prefect's and atompipe's records reach the terminal (not Dask's
    "Worker process still alive" or MLflow's database notes, which Prefect's handlers would
    print)."""
    import logging

    top = record.name.partition(".")[0]
    return record.levelno >= logging.ERROR or top in ("prefect", "root", *_OWN_PACKAGES)


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
        _fail(
            f"{campaign}: workspace {work} is read-only ({denied}); atompipe run records every "
            f"run in MLflow ({uri}, artifacts in {work / 'mlartifacts'}): make the workspace "
            "writable, or set tracking.uri to an MLflow server"
        )
    return Path(tempfile.mkdtemp(prefix="atompipe-results-"))


@app.command()
def run(
    campaign: Annotated[Path, typer.Argument(help="campaign YAML file")],
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
    cfg = _load(campaign, set_)
    if features_only and model:
        _fail("--features-only and --model exclude each other")
    unknown = [m for m in model or [] if m not in cfg.models]
    if unknown:
        _fail(f"{campaign}: --model {unknown[0]!r}: the campaign's models are {list(cfg.models)}")
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
        _fail(f"{campaign}: tracking.uri: {exc}")
    _quiet_failure_tracebacks()
    from flows.settings import start_prefect_server_apart

    start_prefect_server_apart()  # Ctrl-C in the terminal stops the campaign, not Prefect's API
    typer.secho(
        f"campaign {cfg.name}: {len(cfg.datasets)} dataset(s), {len(cfg.features)} feature "
        f"set(s), {len(model or cfg.models)} model(s); a line per stage as it ends",
        err=True,
        dim=True,
    )
    try:
        summary = _stoppable(
            lambda: run_campaign(
                cfg, show_progress=not quiet, features_only=features_only, models=model or None
            )
        )
    except BaseException as exc:  # the flow failed: one clear line, non-zero exit
        if _stopped(exc):
            _exit_interrupted(f"campaign {cfg.name}")
        if not isinstance(exc, Exception):
            raise
        _fail(f"campaign {cfg.name} failed: {exc}")
    if features_only:
        for name, key in summary["features"].items():
            typer.echo(f"features {name}: {key}")
        return
    _outcome(summary)


def _answered(campaign: Path, overrides: list[str] | None) -> bool:
    """The no-op rerun (:mod:`flows.fastpath`): when every stage of the campaign is complete,
    print what the full run would print and return True, before Prefect or torch is imported;
    else say why the full path runs and return False."""
    from flows.fastpath import completed_run, results_folder
    from flows.progress import CampaignProgress

    cfg = _load(campaign, overrides, build_featurizers=False)
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


@app.command()
def active(
    campaign: Annotated[Path, typer.Argument(help="campaign YAML file with an `active:` section")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key: active.budget=50")
    ] = None,
) -> None:
    """Run the campaign's active-learning loop: explore, select, label, retrain (cached; a
    killed loop resumes where it stopped). docs/active-learning.md."""
    cfg = _load(campaign, set_)
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
        _fail(f"{campaign}: {exc}")
    _quiet_failure_tracebacks()
    try:
        summary = _stoppable(lambda: run_active(cfg))
    except BaseException as exc:
        if _stopped(exc):
            _exit_interrupted(f"active learning of {cfg.name}")
        if not isinstance(exc, Exception):
            raise
        _fail(f"active learning of {cfg.name} failed: {exc}")
    for row in summary["iterations"]:
        typer.echo(
            f"iteration {row['iteration']}: {row['dataset_size']} structures, "
            f"{row['labels_added']} labels added ({row['labels_computed']} computed now), "
            f"test force MAE {row['test_force_mae']:.4f} eV/Å"
        )
    typer.echo(f"stopped: {summary['stopped']}; model {summary['model']['dir']}")
    typer.echo(f"MLflow: {summary['tracking']['tracking_uri']}  (atompipe ui)")


@app.command()
def featurize(
    dataset: Annotated[str, typer.Argument(help="dataset key (from `atompipe ingest`)")],
    features: Annotated[str, typer.Option(help="gaussian | aev")] = "gaussian",
    param: Annotated[
        list[str] | None, typer.Option("--param", help="featurizer parameter KEY=VALUE (YAML)")
    ] = None,
    store: Annotated[str, typer.Option(help="Zarr store path or fsspec URL")] = DEFAULT_STORE,
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

    params = _pairs(param, "--param")
    if features not in ("gaussian", "aev"):
        _fail(f"--features {features!r}: expected gaussian or aev")
    _check_params(features, params)
    try:
        with _stop_on_signals(), dask_client(scheduler, workers) as client:
            ref = featurize_dataset(
                store, dataset, features, params, client=client, rows_per_chunk=rows_per_chunk
            )
    except (KeyError, ValueError, TypeError, StoreError, ClusterError) as exc:
        _fail(exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc))
    except BaseException as exc:
        if _stopped(exc):
            _exit_interrupted(f"featurization of {dataset}")
        raise
    typer.echo(f"features {ref['key']}")
    typer.echo(f"  chunks computed {ref['computed_chunks']} of {ref['n_chunks']}")


def _check_params(features: str, params: dict) -> None:
    """Featurizer parameters validated as a campaign's feature set is: an error names the
    ``--param`` at fault (``--param cutoff=abc``)."""
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
        _fail(f"{where}: {msg}" if err["type"] != "extra_forbidden" else f"{where}: unknown key")


def _layers(text: str, option: str) -> tuple[int, ...]:
    try:
        layers = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        layers = ()
    if not layers or min(layers) < 1:
        _fail(f"{option} {text!r}: expected comma-separated positive widths, e.g. 20,10,4")
    return layers


def _option(loc: tuple) -> str:
    """The command-line option behind a settings field: ("training", "epochs") -> --epochs."""
    name = str(loc[-1]) if loc else ""
    return {"hiddenlayers": "--encoder/--decoder", "per_element": "--shared"}.get(
        str(loc[0]) if loc else "", "--" + name.replace("_", "-")
    )


@app.command()
def latent(
    features_key: Annotated[str, typer.Argument(help="feature key (from `atompipe featurize`)")],
    store: Annotated[str, typer.Option(help="Zarr store path or fsspec URL")] = DEFAULT_STORE,
    workspace: Annotated[Path, typer.Option(help="where the encoder is saved")] = Path("workspace"),
    kind: Annotated[str, typer.Option(help="autoencoder | vae")] = "autoencoder",
    encoder: Annotated[str, typer.Option(help="encoder widths; the last is the code")] = "20,10,4",
    decoder: Annotated[str | None, typer.Option(help="decoder widths (default: mirrored)")] = None,
    activation: Annotated[str, typer.Option()] = "tanh",
    variant: Annotated[str, typer.Option(help="VAE: multivariate | bernoulli")] = "multivariate",
    beta: Annotated[float, typer.Option(help="VAE: KL weight")] = 1.0,
    shared: Annotated[bool, typer.Option("--shared", help="one network for all elements")] = False,
    epochs: Annotated[int, typer.Option()] = 100,
    batch_size: Annotated[int, typer.Option()] = 256,
    lr: Annotated[float, typer.Option()] = 1e-3,
    seed: Annotated[int, typer.Option(help="split and training seed")] = 0,
    scaler: Annotated[str, typer.Option(help="minmax | standard")] = "minmax",
    map_png: Annotated[Path | None, typer.Option("--map", help="save the latent map here")] = None,
    samples: Annotated[int, typer.Option(help="VAE: decode this many prior samples")] = 0,
    samples_out: Annotated[Path, typer.Option(help="where the samples go (.npz)")] = Path(
        "latent_samples.npz"
    ),
) -> None:
    """Train an autoencoder or VAE on stored features; write latent/<key>; print its key."""
    from pydantic import ValidationError

    from atomistic.storage import StoreError
    from flows.config import AutoEncoderSettings, ScalerConfig, SplitConfig

    enc = _layers(encoder, "--encoder")
    dec = _layers(decoder, "--decoder") if decoder else tuple(reversed(enc))
    try:
        vae = {"variant": variant, "beta": beta} if kind == "vae" else {}
        settings = AutoEncoderSettings.model_validate(
            {
                "kind": kind,
                "hiddenlayers": {"encoder": enc, "decoder": dec},
                "activation": activation,
                "per_element": not shared,
                "training": {"epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed},
                **vae,
            }
        )
        bernoulli = kind == "vae" and variant == "bernoulli"
        scaling = ScalerConfig.model_validate(
            {"kind": scaler, "feature_range": (0.0, 1.0) if bernoulli else (-1.0, 1.0)}
        )
    except ValidationError as exc:
        _fail("; ".join(f"{_option(e['loc'])}: {e['msg']}" for e in exc.errors()))
    if samples and kind != "vae":
        _fail("--samples needs --kind vae (an autoencoder has no prior to sample)")
    from flows.latent import run_latent

    split = SplitConfig(seed=seed)
    try:  # SIGINT/SIGTERM stop the encoder's training at its next batch, as for `run`
        ref = _stoppable(
            lambda: run_latent(
                store,
                features_key,
                str(workspace),
                settings.canonical(),
                scaling.model_dump(mode="json"),
                {"fractions": list(split.fractions), "seed": split.seed},
                map_path=map_png,
                samples=samples,
            )
        )
    except BaseException as exc:
        if _stopped(exc):
            _exit_interrupted(f"latent features of {features_key}")
        if isinstance(exc, KeyError | ValueError | StoreError | OSError):
            _fail(exc)
        raise
    typer.echo(f"latent {ref['key']}")
    typer.echo(f"  encoder                    {ref['encoder_dir']}")
    typer.echo(f"  reconstruction MSE (test)  {ref['reconstruction_mse_test']:.4g}")
    typer.echo(f"  scaled feature variance    {ref['scaled_variance_test']:.4g}")
    if "kl_test" in ref:
        typer.echo(f"  KL per atom (test, nats)   {ref['kl_test']:.4g}")
    if "map" in ref:
        typer.echo(f"  latent map                 {ref['map']}")
    if "samples" in ref:
        import numpy as np

        np.savez(samples_out, **ref["samples"])
        typer.echo(f"  {samples} decoded samples per element -> {samples_out}")


@app.command()
def compare(
    campaign: Annotated[Path, typer.Argument(help="campaign YAML file")],
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key, as for `atompipe run`")
    ] = None,
) -> None:
    """Print the campaign's MLflow runs as a table (best first)."""
    cfg = _load(campaign, set_, build_featurizers=False)  # computes nothing: no torch
    from flows.compare import NoExperiment, print_comparison

    try:
        print_comparison(cfg)
    except NoExperiment as exc:
        _fail(exc)


@app.command()
def ui(
    campaign: Annotated[Path, typer.Argument(help="campaign YAML file")],
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 5000,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key, as for `atompipe run`")
    ] = None,
) -> None:
    """Start the MLflow UI for the campaign's tracking store (127.0.0.1 by default)."""
    cfg = _load(campaign, set_, build_featurizers=False)  # computes nothing: no torch
    if cfg.tracking_uri.startswith(("http://", "https://")):
        typer.echo(f"the campaign tracks to a server: open {cfg.tracking_uri} in a browser")
        return
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        cfg.tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    from tasks.tracking import TrackingError, check_tracking

    try:
        check_tracking(cfg.tracking_uri)
    except TrackingError as exc:
        _fail(f"{campaign}: tracking.uri: {exc}")
    import socket

    with socket.socket() as probe:  # MLflow's server would log the clash and still exit 0
        try:
            probe.bind((host, port))
        except OSError as exc:
            _fail(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})")
    typer.echo(f"MLflow UI on http://{host}:{port}")
    raise typer.Exit(_serve_child(cmd))


def _serve_child(cmd: list[str]) -> int:
    """Run a server command as the leader of its own process group and take the group down
    with us: SIGINT/SIGTERM to this process stop every process of it (MLflow's server starts
    workers of its own), and the leader gets SIGTERM if this process dies without a word
    (Linux ``PR_SET_PDEATHSIG``). Returns the server's exit status (non-zero on failure)."""
    import os
    import signal
    import subprocess

    def child_setup() -> None:  # in the child, before exec
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # not Linux: the signal forwarding still holds
            pass

    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=child_setup)

    def forward(signum: int, frame: object) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # workers the server left behind
        except ProcessLookupError:
            pass
    return INTERRUPTED if code in (-signal.SIGTERM, -signal.SIGINT) else abs(code)


PREDICTION_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".csv": "csv"}
_VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="a saved model directory")],
    files: Annotated[list[Path], typer.Argument(help="structure files")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".extxyz, .xyz or .csv")] = Path(
        "predictions.extxyz"
    ),
    device: Annotated[str, typer.Option(help="cpu | cuda (falls back to the CPU)")] = "cpu",
) -> None:
    """Predict energies, forces, stress (periodic structures) and, where the model has them,
    uncertainties (energy_std, forces_std)."""
    fmt = PREDICTION_FORMATS.get(output.suffix.lower())
    if fmt is None:
        known = ", ".join(PREDICTION_FORMATS)
        _fail(f"-o {output}: unknown output format {output.suffix or '(no suffix)'!r}; use {known}")
    if device not in ("cpu", "cuda"):
        _fail(f"--device {device!r}: expected cpu or cuda")
    from atomistic.data import DataError, load_files
    from atomistic.device import resolve_device
    from atomistic.models.base import AtomisticModel
    from atomistic.models.io import ModelFileError
    from atomistic.predictions import predict_structures

    try:
        m = AtomisticModel.load(model)
        _use_device(m, resolve_device(device, report=_note))
        ds = load_files(files, require_energy=False)
        images = ds.to_atoms()
        out = _predict_in_chunks(m, images, predict_structures)
    except (DataError, ModelFileError, OSError) as exc:
        _fail(str(exc))
    except ValueError as exc:  # the structures do not fit the model (e.g. an unseen element)
        _fail(f"{', '.join(map(str, files))}: {exc}")
    if fmt == "csv":
        _write_csv(output, images, out)
    else:
        _write_extxyz(output, images, out)
    written = [k for k in ("energy", "forces", "stress", "energy_std", "forces_std") if k in out]
    typer.echo(f"{len(images)} structures -> {output} ({', '.join(written)})")


def _check_devices(cfg: Any) -> None:
    """A model asking for ``device: cuda`` on a machine without a GPU: one message now (the
    training then runs on the CPU without repeating it)."""
    if any(getattr(m, "device", "cpu") != "cpu" for m in cfg.models.values()):
        from atomistic.device import resolve_device

        for m in cfg.models.values():
            resolve_device(getattr(m, "device", "cpu"), report=_note)


def _predict_in_chunks(model: Any, images: list, predict_structures: Callable) -> dict:
    """``predict_structures`` over ``images`` a chunk at a time, with a progress bar (a line
    when stderr is not a terminal): a kernel model with forces takes seconds a structure."""
    from flows.progress import CampaignProgress

    chunk = 16
    label = f"predict {len(images)} structures"
    out: dict[str, list] = {}
    with CampaignProgress(enabled=len(images) > chunk) as progress:
        progress.stage_started(label)
        for start in range(0, len(images), chunk):
            part = predict_structures(model, images[start : start + chunk])
            for name, values in part.items():
                out.setdefault(name, []).extend(values)
            progress.chunk_callback(label)(min(start + chunk, len(images)), len(images))
        progress.stage_finished(label, "done")
    return out


def _note(message: str) -> None:
    typer.secho(message, fg=typer.colors.YELLOW, err=True)


def _use_device(model: Any, device: str) -> None:
    """Predict on ``device`` with a model that runs on torch devices (networks; the kernel
    models compute on the CPU)."""
    if hasattr(model, "device"):
        model.device = device


def _write_extxyz(output: Path, images: list, out: dict) -> None:
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    for s, a in enumerate(images):
        stress = out.get("stress", [None] * len(images))[s]
        a.calc = SinglePointCalculator(
            a,
            energy=out["energy"][s],
            forces=out["forces"][s] if "forces" in out else None,
            stress=stress,
        )
        if "energy_std" in out:
            a.info["energy_std"] = out["energy_std"][s]
        if "forces_std" in out:
            a.arrays["forces_std"] = out["forces_std"][s]
    ase.io.write(output, images, format="extxyz")


def _write_csv(output: Path, images: list, out: dict) -> None:
    """One row per structure: energy, its std, stress (eV/Å³, Voigt order)."""
    import csv

    with output.open("w", newline="") as fh:
        w = csv.writer(fh)
        stress_cols = [f"stress_{c}_eV/Å³" for c in _VOIGT] if "stress" in out else []
        w.writerow(["structure", "n_atoms", "energy_eV", "energy_std_eV", *stress_cols])
        for s, a in enumerate(images):
            std = out.get("energy_std")
            row = [s, len(a), out["energy"][s], "" if std is None else std[s]]
            if stress_cols:
                st = out["stress"][s]
                row += [""] * 6 if st is None else list(st)
            w.writerow(row)


@app.command()
def export(
    model: Annotated[Path, typer.Argument(help="a saved model directory")],
    output: Annotated[Path, typer.Option("--output", "-o", help="TorchScript file")] = Path(
        "potential.pt"
    ),
) -> None:
    """Export a model as TorchScript: forward(positions, numbers, cell, pbc) -> energy, forces,
    stress, loadable with torch.jit.load without atompipe (docs/python-api.md)."""
    from atomistic.export import export_model
    from atomistic.models.base import AtomisticModel
    from atomistic.models.io import ModelFileError

    try:
        export_model(AtomisticModel.load(model), output)
    except (ModelFileError, OSError, ValueError) as exc:
        _fail(f"{model}: {exc}")
    typer.echo(f"{model} -> {output} (torch.jit.load; forward(positions, numbers, cell, pbc))")


@app.command()
def serve(
    campaign: Annotated[Path, typer.Argument(help="campaign YAML file")],
    cron: Annotated[str | None, typer.Option(help="cron schedule, e.g. '0 3 * * *'")] = None,
    watch: Annotated[
        Path | None, typer.Option(help="start the campaign when new files arrive here")
    ] = None,
    watch_interval: Annotated[float, typer.Option(help="seconds between folder scans")] = 5.0,
    name: Annotated[str | None, typer.Option(help="deployment name")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="override a key, as for `atompipe run`")
    ] = None,
) -> None:
    """Serve the campaign as a Prefect deployment (schedule and/or file-arrival trigger)."""
    cfg = _load(campaign, set_)
    if watch is not None and not watch.is_dir():
        _fail(f"--watch {watch}: not a folder")
    from flows.deploy import serve_campaign

    serve_campaign(cfg, cron=cron, watch=watch, name=name, watch_interval=watch_interval)


def main() -> None:  # pragma: no cover - console entry point
    configure_environment()
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
