"""MLflow tracking of a campaign: one experiment per campaign, a parent run per campaign run,
a child run per model with its parameters, per-epoch metrics (batched), test metrics,
artifacts (model, scaler, configuration, plots) and tags; the best model is registered with the
alias "champion"."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect.context import get_run_context

from tasks.caching import stage_task
from tasks.refs import DatasetRef, FeatureRef, ModelRef
from tasks.tracking import (
    TrackingError,
    check_tracking,
    flatten,
    follow_moved_workspace,
    tracking_lock,
)

__all__ = ["record_campaign", "check_tracking", "TrackingError", "follow_moved_workspace"]

_MODEL_CODE = str(Path(__file__).resolve().parents[1] / "flows" / "mlflow_model.py")


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(__file__).parent,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _flow_run_id() -> str:
    try:
        ctx = get_run_context()
        run = getattr(ctx, "flow_run", None) or getattr(
            getattr(ctx, "task_run", None), "flow_run_id", None
        )
        return str(getattr(run, "id", run))
    except Exception:  # outside a run
        return "none"


def _history_metrics(path: Path) -> list[Any]:
    from mlflow.entities import Metric

    if not path.exists():
        return []
    hist = json.loads(path.read_text())
    now = int(time.time() * 1000)
    return [
        Metric(key=name.replace("/", "_"), value=float(v), timestamp=now, step=step)
        for name, values in hist.get("metrics", {}).items()
        for step, v in enumerate(values)
    ]


def _record_encoder(client, exp_id, pid, name, ref: FeatureRef, config, tags) -> None:
    """A child run for the autoencoder behind a latent feature set: its settings, per-epoch
    losses, held-out reconstruction error against the scaled features' variance, latent map."""
    from mlflow.entities import Metric, Param

    assert ref.encoder_dir is not None
    directory = Path(ref.encoder_dir)
    run = client.create_run(
        exp_id,
        run_name=f"encoder:{name}",
        tags={
            "mlflow.parentRunId": pid,
            "atompipe.role": "encoder",
            "atompipe.feature_key": ref.params["source"],
            "atompipe.latent_key": ref.key,
            **{k: v for k, v in tags.items() if not k.startswith("atompipe.dataset.")},
        },
    )
    rid = run.info.run_id
    params = flatten(config["features"][name])
    client.log_batch(rid, params=[Param(k[:250], v[:6000]) for k, v in params.items()])
    now = int(time.time() * 1000)
    figures = {
        "reconstruction_mse_test": ref.reconstruction_mse_test,
        "scaled_variance_test": ref.scaled_variance_test,
        "kl_test": ref.kl_test,
    }
    final = [Metric(k, float(v), now, 0) for k, v in figures.items() if v is not None]
    batch = _history_metrics(directory / "history.json") + final
    for i in range(0, len(batch), 900):
        client.log_batch(rid, metrics=batch[i : i + 900])
    for art in ref.artifacts or []:
        client.log_artifact(rid, art, artifact_path="plots")
    client.log_artifact(rid, str(directory / "card.json"), artifact_path="atompipe_encoder")
    client.set_terminated(rid)


def _requirement() -> str:
    """The pyfunc's pip requirement: this very version of atompipe."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"atompipe=={version('atompipe')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "atompipe"


# the pyfunc's output columns (flows/mlflow_model.py): MLflow type and array depth
_OUTPUT_COLUMNS: dict[str, tuple[str, int]] = {
    "energy": ("double", 0),
    "energy_std": ("double", 0),
    "forces": ("double", 2),
    "forces_std": ("double", 2),
    "stress": ("double", 1),
}


def _signature(directory: Path, store_url: str | None, dataset_key: str):
    """The pyfunc's signature: an ``extxyz`` string column in; out, the columns that the model
    gives, found by predicting one stored structure (energy; forces and stress where the model
    has its featurizer; energy_std, forces_std where it has uncertainty)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, Schema, TensorSpec

    from atomistic.data import read_dataset
    from atomistic.models.base import AtomisticModel
    from atomistic.predictions import predict_structures
    from atomistic.storage import Store

    names = ["energy"]
    if store_url is not None:
        sample = read_dataset(Store(store_url), dataset_key).subset([0]).to_atoms()
        try:
            names = list(predict_structures(AtomisticModel.load(directory), sample))
        except ValueError:  # a model that predicts from precomputed features only
            pass
    outputs: list[ColSpec | TensorSpec] = []
    for name in _OUTPUT_COLUMNS:
        if name not in names:
            continue
        dtype, depth = _OUTPUT_COLUMNS[name]
        kind: Any = dtype
        for _ in range(depth):
            kind = Array(kind)
        outputs.append(ColSpec(kind, name))
    return ModelSignature(inputs=Schema([ColSpec("string", "extxyz")]), outputs=Schema(outputs))


def _champion(
    client, name: str, metric: str, dataset_key: str, split: str
) -> dict[str, Any] | None:
    """The model holding the "champion" alias, or None when there is none. Its ``score`` is
    None when it was not scored by ``metric`` on the same dataset and the same split (scores on
    other data are not comparable). A champion recorded before splits were tagged is compared
    on its dataset alone."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, "champion")
        run = client.get_run(mv.run_id)
    except MlflowException:
        return None
    tags = run.data.tags
    same = (
        tags.get("atompipe.dataset_key") == dataset_key
        and tags.get("atompipe.split", split) == split
    )
    score = run.data.metrics.get(metric) if same else None
    return {"name": name, "version": str(mv.version), "model": run.info.run_name, "score": score}


def _split_tag(config: dict[str, Any], which: str) -> str:
    """Which structures a score was measured on: the split's fractions and seed and the part."""
    from atomistic.data import split_id

    split = config.get("split") or {}
    sid = split_id(split.get("fractions", (0.8, 0.1, 0.1)), split.get("seed", 0))
    return f"{sid}/{which}"


@stage_task("record")
def record_campaign(
    config: dict[str, Any],
    datasets: dict[str, Any],
    features: dict[str, Any],
    results: dict[str, Any],
) -> dict[str, Any]:
    """Log the campaign to MLflow; returns the run ids and the champion model version.

    ``datasets``, ``features`` and ``results`` map the campaign's names to references
    (:class:`~tasks.refs.DatasetRef`, :class:`~tasks.refs.FeatureRef`, evaluated
    :class:`~tasks.refs.ModelRef`), typed or in their JSON form."""
    from atomistic import interrupt

    interrupt.check()  # a stopped campaign registers nothing
    ws = Path(config["workspace"])
    uri = (config.get("tracking") or {}).get("uri") or f"sqlite:///{(ws / 'mlflow.db').resolve()}"
    check_tracking(uri)
    with tracking_lock(uri):
        return _record(
            config,
            {n: DatasetRef.of(r) for n, r in datasets.items()},
            {n: FeatureRef.of(r) for n, r in features.items()},
            {n: ModelRef.of(r) for n, r in results.items()},
            uri,
        )


def _record(
    config: dict[str, Any],
    datasets: dict[str, DatasetRef],
    features: dict[str, FeatureRef],
    results: dict[str, ModelRef],
    uri: str,
) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    ws = Path(config["workspace"])
    name = (config.get("tracking") or {}).get("experiment") or config["name"]
    follow_moved_workspace(uri, name, ws)  # a moved or copied campaign writes in its own folder
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    exp_id = (
        exp.experiment_id
        if exp
        else client.create_experiment(
            name,
            artifact_location=(ws / "mlartifacts").resolve().as_uri()
            if "://" not in uri or uri.startswith("sqlite")
            else None,
        )
    )
    tags = {"atompipe.git_commit": _git_commit(), "atompipe.prefect_flow_run": _flow_run_id()}
    tags.update({f"atompipe.dataset.{n}": r.key for n, r in datasets.items()})
    parent = client.create_run(exp_id, run_name=f"{config['name']}", tags=tags)
    pid = parent.info.run_id
    params = flatten(config)
    from mlflow.entities import Param

    items = [Param(k[:250], v[:6000]) for k, v in params.items()]
    for i in range(0, len(items), 100):
        client.log_batch(pid, params=items[i : i + 100])
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "campaign.json"
        cfg_path.write_text(json.dumps(config, indent=1))
        client.log_artifact(pid, str(cfg_path))

    metric = config.get("evaluation", {}).get("metric", "energy_mae_per_atom")
    store_url = next(iter(features.values())).store if features else None
    children: dict[str, Any] = {}
    for mname, res in results.items():
        directory = Path(res.dir)
        metrics = res.metrics or {}
        ctags = {
            "mlflow.parentRunId": pid,
            "atompipe.model_key": res.key,
            "atompipe.feature_key": res.features,
            "atompipe.dataset_key": res.dataset,
            "atompipe.split": _split_tag(config, metrics["split"]),
            **{k: v for k, v in tags.items() if not k.startswith("atompipe.dataset.")},
        }
        run = client.create_run(exp_id, run_name=mname, tags=ctags)
        rid = run.info.run_id
        mcfg = config["models"][mname]
        cparams = [Param(k[:250], v[:6000]) for k, v in flatten(mcfg).items()]
        client.log_batch(rid, params=cparams)
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        hist = _history_metrics(directory / "history.json")
        final = [
            Metric(k if k == "fit_time_s" else f"{metrics['split']}_{k}", float(v), now, 0)
            for k, v in metrics.items()
            if isinstance(v, int | float)
        ]
        batch = hist + final
        for i in range(0, len(batch), 900):
            client.log_batch(rid, metrics=batch[i : i + 900])
        for art in res.artifacts or []:
            client.log_artifact(rid, art, artifact_path="plots")
        client.log_artifact(rid, str(directory / "card.json"), artifact_path="atompipe_model")
        with mlflow.start_run(run_id=rid):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=_MODEL_CODE,
                artifacts={"model": str(directory)},
                pip_requirements=[_requirement()],
                signature=_signature(directory, store_url, res.dataset),
            )
        client.set_terminated(rid)
        # a model that learned nothing useful (atomistic's TrainingWarning) never becomes champion
        useless = bool(json.loads((directory / "card.json").read_text())["metrics"].get("useless"))
        if useless:
            client.set_tag(rid, "atompipe.useless", "true")
        children[mname] = {
            "run_id": rid,
            "model_uri": info.model_uri,
            "score": None if useless else metrics.get(metric),
        }
    for fname, ref in features.items():
        if ref.kind == "latent" and ref.encoder_dir is not None:
            _record_encoder(client, exp_id, pid, fname, ref, config, tags)
    client.set_terminated(pid)

    champion = None
    scored = {k: v for k, v in children.items() if v["score"] is not None}
    if scored and config.get("evaluation", {}).get("register_best", True):
        best = min(scored, key=lambda k: scored[k]["score"])
        reg_name = f"{config['name']}-champion"
        split = (results[best].metrics or {})["split"]
        held = _champion(
            client,
            reg_name,
            f"{split}_{metric}",
            results[best].dataset,
            _split_tag(config, split),
        )
        if held is not None and held["score"] is None:
            # scored on another dataset or split: not comparable, so the champion stays
            champion = {**held, "compared": False}
        elif held is not None and held["score"] <= scored[best]["score"]:
            champion = held  # a run of some models only, or worse ones: the champion stays
        else:
            with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Created version"
                mv = mlflow.register_model(children[best]["model_uri"], reg_name)
            client.set_registered_model_alias(reg_name, "champion", mv.version)
            champion = {"name": reg_name, "version": str(mv.version), "model": best}
    return {
        "tracking_uri": uri,
        "experiment_id": exp_id,
        "parent_run_id": pid,
        "children": children,
        "champion": champion,
    }
