"""The active-learning loop's stages as plain functions (docs/active-learning.md), over
:mod:`atomistic.active`; their keys (:func:`active_model_key`, :func:`explore_key`) and
existence checks (:func:`train_exists`, :func:`explore_exists`).

- :func:`train_stage`: the committee of an iteration, ``<workspace>/models/<key>/``, and its
  ``evaluation.json`` on the fixed test set.
- :func:`explore_stage`: the snapshots of an iteration, ``<workspace>/active/explore/<key>.extxyz``.
- :func:`select_stage`: indices into the snapshots.
- :func:`label_stage`: reference labels, one file per structure content
  (``<workspace>/active/labels/``), computed in parallel on Dask.
- :func:`grow_stage`: the labelled pool plus the new structures as a new dataset version, and its
  features (the parent's rows copied, the new structures' computed).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from atomistic.data import read_dataset, read_structures
from atomistic.storage import content_hash
from tasks.pipeline.common import (
    atomic_data,
    model_dir,
    model_featurizer,
    model_params,
    publish_model,
    write_atomic,
)
from tasks.pipeline.models import model_class
from tasks.refs import DatasetRef, FeatureRef, ModelRef, ScalerRef

__all__ = [
    "active_model_key",
    "explore_exists",
    "explore_key",
    "explore_stage",
    "select_stage",
    "train_exists",
    "train_stage",
]

_VERSION = 1
# 2: a trajectory that leaves the trust bound also keeps its last step within it
_EXPLORE_VERSION = 2


def _data(features: FeatureRef, scaler: ScalerRef, indices: Any) -> Any:
    return atomic_data(features, scaler, indices, model_featurizer(features))


# -- training --------------------------------------------------------------------------------------
def active_model_key(features, scaler, config, parts, previous) -> str:
    """The active-train stage's key (its model directory)."""
    return content_hash(
        "atompipe-active-model",
        _VERSION,
        FeatureRef.of(features).key,
        ScalerRef.of(scaler).key,
        config,
        {k: [int(i) for i in v] for k, v in parts.items()},
        None if previous is None else ModelRef.of(previous).key,
    )


def train_exists(features, scaler, config, parts, previous, workspace, *_: Any, **__: Any) -> bool:
    """The model of :func:`train_stage`'s arguments is saved and evaluated."""
    key = active_model_key(features, scaler, config, parts, previous)
    return (model_dir(workspace, key) / "evaluation.json").exists()


def _evaluate(directory: Path, test: dict[str, Any]) -> dict[str, Any]:
    """Errors of the saved model on the fixed test set, predicted from its structures, with the
    calibration of its force uncertainty where it has one."""
    import atomistic.models as models
    from atomistic.active import force_calibration
    from atomistic.metrics import evaluate

    trained = models.load_model(directory)
    ds = read_dataset(test["store"], test["dataset"]).subset(test["indices"])
    pred = trained.predict_atoms(ds.to_atoms(), forces=True)
    pred["forces"] = np.concatenate(pred["forces"])
    out = {k: v for k, v in evaluate(ds, pred).items() if not k.startswith("calibration")}
    if "forces_std" in pred and ds.forces is not None:
        cal = force_calibration(ds.forces, pred["forces"], pred["forces_std"])
        out.update({f"force_calibration_{k}": v for k, v in cal.items()})
    out["test_structures"] = ds.n_structures
    return out


def train_stage(
    features: FeatureRef,
    scaler: ScalerRef,
    config: dict[str, Any],
    parts: dict[str, list[int]],
    previous: ModelRef | None,
    workspace: str,
    test: dict[str, Any],
) -> ModelRef:
    """Train the committee (or the Gaussian process on forces) on ``parts["train"]``
    (``parts["validation"]`` for early stopping), a committee warm-started from ``previous``
    when given, and evaluate it; each step only when its output is not saved yet.

    Parameters
    ----------
    features, scaler : FeatureRef, ScalerRef
        The pool's features and their scaler.
    config : dict[str, Any]
        The campaign's network settings (``type``, ``features`` and the network's parameters).
    parts : dict[str, list[int]]
        ``train`` and ``validation`` structure indices into the features' dataset.
    previous : ModelRef or None
        The previous iteration's model, to warm-start from.
    workspace : str
        The model goes to ``<workspace>/models/<active_model_key>``.
    test : dict[str, Any]
        The fixed test set: ``{"store", "dataset", "indices"}``.

    Returns
    -------
    ModelRef
        With ``metrics``: the model's ``evaluation.json``.

    Raises
    ------
    atomistic.interrupt.Interrupted
        A stop was requested during the fit (nothing is published).
    """
    import atomistic.models as models
    from atomistic.active import warm_start

    key = active_model_key(features, scaler, config, parts, previous)
    target = model_dir(workspace, key)
    if not (target / "card.json").exists():
        model = model_class(config)(**model_params(config, workspace, key))
        if previous is not None and config["type"] == "neuralnetwork":  # a GP is refitted
            warm_start(model, models.load_model(previous.dir))
        train = _data(features, scaler, parts["train"])
        val = _data(features, scaler, parts["validation"]) if parts["validation"] else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", models.TrainingWarning)
            model.fit(train, val)
        publish_model(model, workspace, key, history=False)
    evaluation = target / "evaluation.json"
    if not evaluation.exists():
        out = _evaluate(target, test)
        write_atomic(evaluation, lambda p: Path(p).write_text(json.dumps(out, indent=1)))
    metrics = json.loads(evaluation.read_text())
    return ModelRef(key=key, dir=str(target), dataset=features.dataset, metrics=metrics)


# -- exploration -----------------------------------------------------------------------------------
def explore_key(
    model: ModelRef | dict[str, Any], starts: list[int], settings: dict[str, Any], seed: int
) -> str:
    """The active-explore stage's key (its snapshot file)."""
    key = ModelRef.of(model).key
    return content_hash("atompipe-active-explore", _EXPLORE_VERSION, key, starts, settings, seed)


def _explored_path(workspace: str | Path, key: str) -> Path:
    return Path(workspace) / "active" / "explore" / f"{key}.extxyz"


def explore_exists(model, dataset, starts, settings, seed, workspace, *_: Any, **__: Any) -> bool:
    """The snapshots of :func:`explore_stage`'s arguments are saved."""
    return _explored_path(workspace, explore_key(model, starts, settings, seed)).exists()


def explore_stage(
    model: ModelRef,
    dataset: DatasetRef,
    starts: list[int],
    settings: dict[str, Any],
    seed: int,
    workspace: str,
) -> dict[str, Any]:
    """Langevin MD with the model from structures ``starts`` of ``dataset``, unless its snapshots
    are saved already.

    Parameters
    ----------
    model : ModelRef
        The committee that drives the MD and gives each snapshot's uncertainty.
    dataset : DatasetRef
        The pool the starting structures come from.
    starts : list[int]
        Their indices.
    settings : dict[str, Any]
        The campaign's ``active.exploration`` (passed to :func:`atomistic.active.explore`).
    seed : int
        The MD's random seed.
    workspace : str
        The snapshots go to ``<workspace>/active/explore/<explore_key>.extxyz``, each with its
        uncertainty (and step and trajectory) in ``info``.

    Returns
    -------
    dict[str, Any]
        ``key``, ``path``, ``n`` (snapshots) and ``uncertainty`` (one float per snapshot).
    """
    import ase.io

    from atomistic.active import explore

    key = explore_key(model, starts, settings, seed)
    path = _explored_path(workspace, key)
    if not path.exists():
        ds = read_dataset(dataset.store, dataset.key)
        frames = explore(model.dir, [ds.atoms(s) for s in starts], seed=seed, **settings)
        for f in frames:
            f.calc = None
        write_atomic(path, lambda p: ase.io.write(p, frames, format="extxyz"))
    frames = read_structures(path)
    u = [float(f.info["uncertainty"]) for f in frames]
    return {"key": key, "path": str(path), "n": len(frames), "uncertainty": u}


# -- selection -------------------------------------------------------------------------------------
def select_stage(
    explored: dict[str, Any],
    model: ModelRef,
    features: FeatureRef,
    scaler: ScalerRef,
    validation: list[int],
    settings: dict[str, Any],
    max_labels: int,
    seed: int,
) -> dict[str, Any]:
    """The snapshots to label, and the threshold used.

    Parameters
    ----------
    explored : dict[str, Any]
        :func:`explore_stage`'s result.
    model : ModelRef
        The committee; with threshold "auto" its uncertainty on ``validation`` calibrates the
        threshold, and with diversity "fps" its featurizer describes the snapshots.
    features, scaler : FeatureRef, ScalerRef
        The pool's features and scaler (for ``validation``).
    validation : list[int]
        Validation structure indices into the features' dataset.
    settings : dict[str, Any]
        The campaign's ``active.selection``, plus ``upper``: ``active.exploration.
        max_uncertainty``, above which nothing is picked.
    max_labels : int
        At most this many picks (lower than the campaign's near the end of a budget).
    seed : int
        For random selection.

    Returns
    -------
    dict[str, Any]
        ``indices`` (into the snapshots), ``threshold`` (None for random selection) and
        ``uncertain`` (the snapshots above it).
    """
    from atomistic.active import (
        calibrate_threshold,
        select,
        structure_descriptors,
        structure_uncertainty,
    )
    from atomistic.models import load_model

    u = np.asarray(explored["uncertainty"], dtype=np.float64)
    if settings["method"] == "random":
        picks = select(u, 0.0, max_labels, method="random", upper=settings.get("upper"), seed=seed)
        return {"indices": picks.tolist(), "threshold": None, "uncertain": int(len(u))}
    threshold = settings["threshold"]
    net = None
    if threshold == "auto":
        net = load_model(model.dir)
        val = _data(features, scaler, validation)
        pred = net.predict(val, forces=True)
        vu = structure_uncertainty(pred["forces_std"], val.dataset.offsets)
        threshold = calibrate_threshold(vu, settings["quantile"], settings["factor"])
    frames = read_structures(explored["path"])
    descriptors = None
    if settings["diversity"] == "fps":
        net = net or load_model(model.dir)
        descriptors = structure_descriptors(frames, net.featurizer_, net.scaler_)
    picks = select(
        u,
        float(threshold),
        max_labels,
        diversity=settings["diversity"],
        descriptors=descriptors,
        times=np.array([f.info["step"] for f in frames]),
        groups=np.array([f.info["trajectory"] for f in frames]),
        min_separation=settings["min_separation"],
        upper=settings.get("upper"),
        upper_factor=settings.get("upper_factor"),
        pool=settings.get("pool"),
    )
    return {
        "indices": picks.tolist(),
        "threshold": float(threshold),
        "uncertain": int((u > threshold).sum()),
    }
