"""MLflow tracking of a campaign as a plain function (:func:`record_campaign`): one experiment
per campaign, a parent run per campaign run, a child run per model with its parameters,
per-epoch metrics (batched), test metrics, artifacts (model, scaler, configuration, plots) and
tags, a child run per autoencoder; the best model is registered with the alias "champion"."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.refs import DatasetRef, FeatureRef, ModelRef
from tasks.tracking import (
    check_tracking,
    experiment_id,
    flatten,
    follow_moved_workspace,
    tracking_lock,
)

__all__ = ["record_campaign"]

_MODEL_CODE = str(Path(__file__).resolve().parents[1] / "mlflow_model.py")
_BATCH = 900  # metrics per log_batch call


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


def _params(client: Any, run_id: str, settings: Any) -> None:
    """``settings`` flattened into the run's parameters (names and values cut to MLflow's
    limits), 100 per call."""
    from mlflow.entities import Param

    items = [Param(k[:250], v[:6000]) for k, v in flatten(settings).items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])


def _metrics(client: Any, run_id: str, history: Path, final: dict[str, Any]) -> None:
    """The per-epoch metrics of ``history`` (``history.json``, when there is one), then the
    numbers of ``final`` at step 0, in batches."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = []
    if history.exists():
        hist = json.loads(history.read_text())
        batch = [
            Metric(key=name.replace("/", "_"), value=float(v), timestamp=now, step=step)
            for name, values in hist.get("metrics", {}).items()
            for step, v in enumerate(values)
        ]
    batch += [Metric(k, float(v), now, 0) for k, v in final.items()]
    for i in range(0, len(batch), _BATCH):
        client.log_batch(run_id, metrics=batch[i : i + _BATCH])


def _record_encoder(client, exp_id, pid, name, ref: FeatureRef, config, tags) -> None:
    """A child run for the autoencoder behind a latent feature set: its settings, per-epoch
    losses, held-out reconstruction error against the scaled features' variance, latent map."""
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
    _params(client, rid, config["features"][name])
    figures = {
        "reconstruction_mse_test": ref.reconstruction_mse_test,
        "scaled_variance_test": ref.scaled_variance_test,
        "kl_test": ref.kl_test,
    }
    final = {k: v for k, v in figures.items() if v is not None}
    _metrics(client, rid, directory / "history.json", final)
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


# the pyfunc's output columns (tasks/mlflow_model.py): MLflow type and array depth
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
    from atomistic.data import DEFAULT_SPLIT, split_id

    split = config.get("split") or {}
    sid = split_id(split.get("fractions", DEFAULT_SPLIT), split.get("seed", 0))
    return f"{sid}/{which}"


def _record_model(
    client: Any,
    exp_id: str,
    name: str,
    res: ModelRef,
    config: dict[str, Any],
    tags: dict[str, str],
    store_url: str | None,
) -> dict[str, Any]:
    """A child run for model ``name``: its settings, per-epoch and held-out metrics, plots, card
    and the MLflow pyfunc. Returns its ``run_id``, ``model_uri`` and ``score`` (None for a model
    that learned nothing useful, which never becomes champion)."""
    import mlflow

    directory = Path(res.dir)
    metrics = res.metrics or {}
    split = metrics["split"]
    run = client.create_run(
        exp_id,
        run_name=name,
        tags={
            **tags,
            "atompipe.model_key": res.key,
            "atompipe.feature_key": res.features,
            "atompipe.dataset_key": res.dataset,
            "atompipe.split": _split_tag(config, split),
        },
    )
    rid = run.info.run_id
    _params(client, rid, config["models"][name])
    final = {
        k if k == "fit_time_s" else f"{split}_{k}": v
        for k, v in metrics.items()
        if isinstance(v, int | float)
    }
    _metrics(client, rid, directory / "history.json", final)
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
    useless = bool(json.loads((directory / "card.json").read_text())["metrics"].get("useless"))
    if useless:
        client.set_tag(rid, "atompipe.useless", "true")
    metric = config.get("evaluation", {}).get("metric", "energy_mae_per_atom")
    score = None if useless else metrics.get(metric)
    return {"run_id": rid, "model_uri": info.model_uri, "score": score}


def _register_champion(
    client: Any, config: dict[str, Any], results: dict[str, ModelRef], children: dict[str, Any]
) -> dict[str, Any] | None:
    """Give the best scored model the alias "champion", unless the champion held scores better
    on the same dataset and split, or was scored on others (not comparable: it stays)."""
    import mlflow

    scored = {k: v for k, v in children.items() if v["score"] is not None}
    if not scored or not config.get("evaluation", {}).get("register_best", True):
        return None
    metric = config.get("evaluation", {}).get("metric", "energy_mae_per_atom")
    best = min(scored, key=lambda k: scored[k]["score"])
    reg_name = f"{config['name']}-champion"
    split = (results[best].metrics or {})["split"]
    held = _champion(
        client, reg_name, f"{split}_{metric}", results[best].dataset, _split_tag(config, split)
    )
    if held is not None and held["score"] is None:
        return {**held, "compared": False}
    if held is not None and held["score"] <= scored[best]["score"]:
        return held  # a run of some models only, or worse ones: the champion stays
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Created version"
        mv = mlflow.register_model(children[best]["model_uri"], reg_name)
    client.set_registered_model_alias(reg_name, "champion", mv.version)
    return {"name": reg_name, "version": str(mv.version), "model": best}


@contextlib.contextmanager
def recording(config: dict[str, Any]) -> Iterator[str]:
    """The campaign's tracking URI, checked and held under the tracking lock while it records.

    A stop request is honoured first (a stopped campaign records nothing); the URI is the
    campaign's ``tracking.uri`` or the workspace's sqlite store.

    Raises
    ------
    atomistic.interrupt.Interrupted
        A stop was requested.
    tasks.tracking.TrackingError
        The tracking server cannot be reached, or its sqlite database is damaged.
    """
    from atomistic import interrupt

    interrupt.check()
    ws = Path(config["workspace"])
    uri = (config.get("tracking") or {}).get("uri") or f"sqlite:///{(ws / 'mlflow.db').resolve()}"
    check_tracking(uri)
    with tracking_lock(uri):
        yield uri


def record_campaign(
    config: dict[str, Any],
    datasets: dict[str, DatasetRef],
    features: dict[str, FeatureRef],
    results: dict[str, ModelRef],
    flow_run: str = "none",
) -> dict[str, Any]:
    """Log the campaign to MLflow, under the tracking database's writers' lock.

    Parameters
    ----------
    config : dict[str, Any]
        The campaign (``CampaignConfig.model_dump(mode="json")``).
    datasets, features, results : dict[str, DatasetRef], dict[str, FeatureRef], \
dict[str, ModelRef]
        The campaign's names mapped to its datasets, feature sets and evaluated models.
    flow_run : str
        The Prefect flow run's id (a tag of every run), "none" outside a flow.

    Returns
    -------
    dict[str, Any]
        ``tracking_uri``, ``experiment_id``, ``parent_run_id``, ``children`` (per model:
        ``run_id``, ``model_uri``, ``score``) and ``champion`` (the registered model version
        holding the alias, or None).

    Raises
    ------
    atomistic.interrupt.Interrupted
        A stop was requested: a stopped campaign registers nothing.
    tasks.tracking.TrackingError
        The tracking server cannot be reached, or its sqlite database is damaged.
    """
    with recording(config) as uri:
        return _record(config, datasets, features, results, uri, flow_run)


def _record(
    config: dict[str, Any],
    datasets: dict[str, DatasetRef],
    features: dict[str, FeatureRef],
    results: dict[str, ModelRef],
    uri: str,
    flow_run: str,
) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient

    ws = Path(config["workspace"])
    name = (config.get("tracking") or {}).get("experiment") or config["name"]
    follow_moved_workspace(uri, name, ws)  # a moved or copied campaign writes in its own folder
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp_id = experiment_id(client, name, ws, "://" not in uri or uri.startswith("sqlite"))
    tags = {"atompipe.git_commit": _git_commit(), "atompipe.prefect_flow_run": flow_run}
    parent = client.create_run(
        exp_id,
        run_name=f"{config['name']}",
        tags={**tags, **{f"atompipe.dataset.{n}": r.key for n, r in datasets.items()}},
    )
    pid = parent.info.run_id
    _params(client, pid, config)
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "campaign.json"
        cfg_path.write_text(json.dumps(config, indent=1))
        client.log_artifact(pid, str(cfg_path))
    store_url = next(iter(features.values())).store if features else None
    child_tags = {"mlflow.parentRunId": pid, **tags}
    children = {
        mname: _record_model(client, exp_id, mname, res, config, child_tags, store_url)
        for mname, res in results.items()
    }
    for fname, ref in features.items():
        if ref.kind == "latent" and ref.encoder_dir is not None:
            _record_encoder(client, exp_id, pid, fname, ref, config, tags)
    client.set_terminated(pid)
    return {
        "tracking_uri": uri,
        "experiment_id": exp_id,
        "parent_run_id": pid,
        "children": children,
        "champion": _register_champion(client, config, results, children),
    }
