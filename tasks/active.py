"""Prefect tasks of the active-learning loop (docs/active-learning.md): thin adapters from
references in to references out over :mod:`atomistic.active`.

Every stage is keyed by content, so a loop that is killed resumes where it stopped:

- ``train``: the model of an iteration, keyed by its features, scaler, settings, training indices
  and (warm start) the previous model's key; written to ``<workspace>/models/<key>/``.
- ``explore``: the snapshots of an iteration, keyed by the model's key, the exploration settings
  and the seed; ``<workspace>/active/explore/<key>.extxyz``.
- ``select``: indices into the snapshots (a small list travels through Prefect).
- ``label``: reference labels, one file per structure content (``<workspace>/active/labels/``),
  computed in parallel on Dask; a structure already labelled is never computed again, and a kill
  loses at most the labels being computed.
- ``grow``: the labelled pool plus the new structures as a new dataset version
  (``datasets/<key>``, attrs ``parent``, ``parent_structures``) and its features, computed only
  for the new structures and copied for the parent's (``features/<key>``, as the featurize stage
  would write them).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from atomistic import interrupt
from atomistic.data import Dataset, read_dataset, read_structures, write_dataset
from atomistic.features.scaling import Scaler
from atomistic.features.store import (
    feature_key,
    read_features,
    repair_feature_group,
    write_feature_array,
)
from atomistic.storage import Store, content_hash
from tasks.caching import stage_task
from tasks.refs import DatasetRef, FeatureRef, ModelRef, ScalerRef
from tasks.work.common import publish_dir as _publish_dir
from tasks.work.common import staging as _staging

__all__ = [
    "active_model_key",
    "explore_key",
    "explore_stage",
    "grow_stage",
    "label_stage",
    "select_stage",
    "train_stage",
]

_VERSION = 1


def _featurizer(ref: FeatureRef):
    from atomistic.features import featurizer_from_params

    return featurizer_from_params(ref.featurizer, ref.params)


def _atomic_data(features: FeatureRef, scaler: ScalerRef, indices) -> Any:
    from atomistic.models.base import AtomicData

    store = Store(features.store)
    dataset = read_dataset(store, features.dataset).subset(indices)
    X, _ = read_features(store, features.key, indices)
    sc = Scaler.from_dict(scaler.scaler)
    return AtomicData(dataset, sc.transform(X, dataset.numbers), _featurizer(features), sc)


def _write_atomic(path: Path, text_writer) -> None:
    """Write a file through a temporary name and a rename: it is complete or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=path.suffix)
    os.close(fd)
    try:
        text_writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    key = active_model_key(features, scaler, config, parts, previous)
    return (Path(workspace) / "models" / key / "evaluation.json").exists()


@stage_task("active-train")
def train_stage(
    features: FeatureRef | dict[str, Any],
    scaler: ScalerRef | dict[str, Any],
    config: dict[str, Any],
    parts: dict[str, list[int]],
    previous: ModelRef | dict[str, Any] | None,
    workspace: str,
    test: dict[str, Any],
) -> dict[str, Any]:
    """Train the committee on ``parts["train"]`` (``parts["validation"]`` for early stopping),
    warm-started from ``previous`` when given; evaluate it on the fixed test set ``test``
    ({"store", "dataset", "indices"}); save model and ``evaluation.json``."""
    import atomistic.models as models
    from atomistic.active import force_calibration, warm_start
    from atomistic.metrics import evaluate

    f, sc = FeatureRef.of(features), ScalerRef.of(scaler)
    key = active_model_key(f, sc, config, parts, previous)
    target = Path(workspace) / "models" / key
    ref = ModelRef(key=key, dir=str(target), dataset=f.dataset)
    if not (target / "card.json").exists():
        params = {k: v for k, v in config.items() if k not in ("type", "features")}
        params["training"] = {
            **params["training"],
            "checkpoint_dir": str(Path(workspace) / "checkpoints" / key),
        }
        model = models.NeuralNetwork(**params)
        if previous is not None:
            warm_start(model, models.load_model(ModelRef.of(previous).dir))
        train = _atomic_data(f, sc, parts["train"])
        val = _atomic_data(f, sc, parts["validation"]) if parts["validation"] else None
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", models.TrainingWarning)
            model.fit(train, val)
        interrupt.check()  # a fit cut short by a stop request is never published
        build = _staging(workspace, key)
        model.save(build)
        _publish_dir(build, target)
        shutil.rmtree(Path(workspace) / "checkpoints" / key, ignore_errors=True)
    evaluation = target / "evaluation.json"
    if not evaluation.exists():
        trained = models.load_model(target)
        ds = read_dataset(test["store"], test["dataset"]).subset(test["indices"])
        pred = trained.predict_atoms(ds.to_atoms(), forces=True)
        pred["forces"] = np.concatenate(pred["forces"])
        out = {k: v for k, v in evaluate(ds, pred).items() if not k.startswith("calibration")}
        if "forces_std" in pred and ds.forces is not None:
            cal = force_calibration(ds.forces, pred["forces"], pred["forces_std"])
            out.update({f"force_calibration_{k}": v for k, v in cal.items()})
        out["test_structures"] = ds.n_structures
        _write_atomic(evaluation, lambda p: Path(p).write_text(json.dumps(out, indent=1)))
    return replace(ref, metrics=json.loads(evaluation.read_text())).to_dict()


# -- exploration -----------------------------------------------------------------------------------
def explore_key(
    model: ModelRef | dict[str, Any], starts: list[int], settings: dict[str, Any], seed: int
) -> str:
    """The active-explore stage's key (its snapshot file)."""
    key = ModelRef.of(model).key
    return content_hash("atompipe-active-explore", _VERSION, key, starts, settings, seed)


def explore_exists(model, dataset, starts, settings, seed, workspace, *_: Any, **__: Any) -> bool:
    key = explore_key(model, starts, settings, seed)
    return (Path(workspace) / "active" / "explore" / f"{key}.extxyz").exists()


@stage_task("active-explore")
def explore_stage(
    model: ModelRef | dict[str, Any],
    dataset: DatasetRef | dict[str, Any],
    starts: list[int],
    settings: dict[str, Any],
    seed: int,
    workspace: str,
) -> dict[str, Any]:
    """Langevin MD with the model from structures ``starts`` of ``dataset``; the snapshots (with
    their uncertainty in ``info``) go to an extxyz file named by the stage's key."""
    import ase.io

    from atomistic.active import explore

    key = explore_key(model, starts, settings, seed)
    path = Path(workspace) / "active" / "explore" / f"{key}.extxyz"
    if not path.exists():
        d = DatasetRef.of(dataset)
        ds = read_dataset(d.store, d.key)
        frames = explore(
            ModelRef.of(model).dir, [ds.atoms(s) for s in starts], seed=seed, **settings
        )
        for f in frames:
            f.calc = None
        _write_atomic(path, lambda p: ase.io.write(p, frames, format="extxyz"))
    frames = read_structures(path)
    u = [float(f.info["uncertainty"]) for f in frames]
    return {"key": key, "path": str(path), "n": len(frames), "uncertainty": u}


# -- selection -------------------------------------------------------------------------------------
@stage_task("active-select")
def select_stage(
    explored: dict[str, Any],
    model: ModelRef | dict[str, Any],
    features: FeatureRef | dict[str, Any],
    scaler: ScalerRef | dict[str, Any],
    validation: list[int],
    settings: dict[str, Any],
    max_labels: int,
    seed: int,
) -> dict[str, Any]:
    """Indices of the snapshots to label and the threshold used (``settings``: the campaign's
    ``active.selection``, plus ``upper``: ``active.exploration.max_uncertainty``, above which
    nothing is picked; ``max_labels`` may be lower than its own, near the end of a budget)."""

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
        net = load_model(ModelRef.of(model).dir)
        val = _atomic_data(FeatureRef.of(features), ScalerRef.of(scaler), validation)
        pred = net.predict(val, forces=True)
        vu = structure_uncertainty(pred["forces_std"], val.dataset.offsets)
        threshold = calibrate_threshold(vu, settings["quantile"], settings["factor"])
    frames = read_structures(explored["path"])
    descriptors = None
    if settings["diversity"] == "fps":
        net = net or load_model(ModelRef.of(model).dir)
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
    )
    return {
        "indices": picks.tolist(),
        "threshold": float(threshold),
        "uncertain": int((u > threshold).sum()),
    }


# -- labelling -------------------------------------------------------------------------------------
def _label_one(path: str, index: int, labelling: dict[str, Any], labels_dir: str) -> int:
    """Label snapshot ``index`` of ``path`` into the label store; 1 if computed, 0 if present."""
    import ase.io

    from atomistic.active import LabelStore, label_structures, reference_calculator

    atoms = ase.io.read(path, index)
    assert isinstance(atoms, Atoms)  # one index, one structure
    _, computed = label_structures(
        [atoms],
        lambda: reference_calculator(
            labelling["calculator"], labelling["params"], labelling["allow"]
        ),
        LabelStore(labels_dir),
    )
    return computed


def label_stage(
    explored: dict[str, Any],
    indices: list[int],
    labelling: dict[str, Any],
    workspace: str,
    scheduler: str | None = None,
    n_workers: int | None = None,
) -> dict[str, Any]:
    """Label the picked snapshots on Dask (one task per structure). Not cached by Prefect: the
    label store itself is the cache, so a rerun after a kill computes only the missing labels.
    Returns {"keys": structure keys in order, "computed": labels computed now}."""

    from atomistic.active import LabelStore, reference_calculator, structure_key
    from tasks.cluster import dask_client

    labels_dir = str(Path(workspace) / "active" / "labels")
    store = LabelStore(labels_dir)
    frames = read_structures(explored["path"])
    keys = [structure_key(frames[i]) for i in indices]
    todo = [i for i, k in zip(indices, keys, strict=True) if k not in store]
    todo = list(dict.fromkeys(todo))
    computed = 0
    if todo:
        # fail here, in the flow, on a calculator the campaign does not allow or cannot import
        reference_calculator(labelling["calculator"], labelling["params"], labelling["allow"])
        if len(todo) == 1 or n_workers == 1 and scheduler is None:
            for i in todo:
                interrupt.check()
                computed += _label_one(explored["path"], i, labelling, labels_dir)
        else:
            with dask_client(scheduler, n_workers) as client:
                futures = client.map(
                    _label_one,
                    [explored["path"]] * len(todo),
                    todo,
                    [labelling] * len(todo),
                    [labels_dir] * len(todo),
                    pure=False,
                )
                computed = int(sum(client.gather(futures)))
    return {"keys": keys, "computed": computed, "labels_dir": labels_dir}


def _no_calculator():
    raise RuntimeError("a picked structure has no label in the label store (label it first)")


# -- the grown dataset -----------------------------------------------------------------------------
@stage_task("active-grow")
def grow_stage(
    parent: DatasetRef | dict[str, Any],
    features: FeatureRef | dict[str, Any],
    explored: dict[str, Any],
    indices: list[int],
    labels: dict[str, Any],
) -> dict[str, Any]:
    """The parent dataset followed by the newly labelled structures, stored as a new version, and
    its features: the parent's rows copied, the new structures' rows computed. Returns
    {"dataset": DatasetRef, "features": FeatureRef} (JSON forms)."""

    from atomistic.active import LabelStore, label_structures

    parent, features = DatasetRef.of(parent), FeatureRef.of(features)
    store = Store(parent.store)
    frames = read_structures(explored["path"])
    new, _ = label_structures(
        [frames[i] for i in indices], _no_calculator, LabelStore(labels["labels_dir"])
    )
    old = read_dataset(store, parent.key)
    added = Dataset.from_atoms(new, require_energy=True)
    grown = Dataset(
        numbers=np.concatenate([old.numbers, added.numbers]),
        positions=np.concatenate([old.positions, added.positions]),
        cell=np.concatenate([old.cell, added.cell]),
        pbc=np.concatenate([old.pbc, added.pbc]),
        offsets=np.concatenate([old.offsets, old.offsets[-1] + added.offsets[1:]]),
        energy=np.concatenate([old.energy, added.energy]),
        forces=np.concatenate([old.forces, added.forces]),
        sources=old.sources,
    )
    key, _ = write_dataset(grown, store)
    if "parent" not in store.open("datasets", key).attrs:  # the version's lineage
        store.root[f"datasets/{key}"].attrs.update(
            {"parent": parent.key, "parent_structures": old.n_structures}
        )
    # features: copy the parent's rows, compute the new structures' only
    fkey = feature_key(key, features.featurizer, features.params)
    computed_atoms = 0
    if not (store.has("features", fkey) and repair_feature_group(store, fkey, "features")):
        featurizer = _featurizer(features)
        X_old, _ = read_features(store, features.key)
        X_new = featurizer.featurize_arrays(
            added.numbers, added.positions, added.cell, added.pbc, added.offsets
        )
        computed_atoms = added.n_atoms
        parent_group = store.open("features", features.key)
        write_feature_array(
            store,
            fkey,
            np.concatenate([X_old, np.asarray(X_new, dtype=np.float64)]),
            grown.offsets,
            {
                "featurizer": features.featurizer,
                "params": features.params,
                "dataset": key,
                "elements": parent_group.attrs.get("elements"),
                "labels": parent_group.attrs.get("labels"),
                "parent": features.key,
                "complete": True,
            },
            kind="features",
        )
    grown_ref = DatasetRef(store=parent.store, key=key, summary=grown.summary(), parent=parent.key)
    grown_features = replace(
        features,
        key=fkey,
        dataset=key,
        computed_chunks=None,
        n_chunks=None,
        featurized_atoms=computed_atoms,
    )
    return {"dataset": grown_ref.to_dict(), "features": grown_features.to_dict()}
