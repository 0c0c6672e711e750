"""Active learning's labelled pool as plain functions: reference labels for the picked
snapshots (:func:`label_stage`), and the dataset grown by them with its features
(:func:`grow_stage`)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms

from atomistic import interrupt
from atomistic.data import Dataset, read_dataset, read_structures, write_dataset
from atomistic.features.store import (
    feature_key,
    repair_feature_group,
    write_feature_array,
)
from atomistic.storage import Store
from tasks.pipeline.common import model_featurizer
from tasks.refs import DatasetRef, FeatureRef

__all__ = ["grow_stage", "label_stage"]


# -- labelling -------------------------------------------------------------------------------------
def _label_one(
    path: str, index: int, labelling: dict[str, Any], labels_dir: str
) -> tuple[int, str | None]:
    """Label snapshot ``index`` of ``path`` into the label store: (1 if computed, 0 if present
    or failed; the failed reference calculation's message, or None)."""
    import ase.io

    from atomistic.active import LabelStore, label_structures, reference_calculator

    atoms = ase.io.read(path, index)
    assert isinstance(atoms, Atoms)  # one index, one structure
    failed: list[tuple[int, str]] = []
    _, computed = label_structures(
        [atoms],
        lambda: reference_calculator(
            labelling["calculator"], labelling["params"], labelling["allow"]
        ),
        LabelStore(labels_dir),
        failed=failed,
    )
    return computed, failed[0][1] if failed else None


def label_stage(
    explored: dict[str, Any],
    indices: list[int],
    labelling: dict[str, Any],
    workspace: str,
    scheduler: str | None = None,
    n_workers: int | None = None,
) -> dict[str, Any]:
    """Label the picked snapshots on Dask (one task per structure), or in this process for one
    structure or one worker. Not cached by Prefect: the label store itself is the cache, so a
    rerun after a kill computes only the missing labels.

    Parameters
    ----------
    explored : dict[str, Any]
        :func:`tasks.pipeline.active.explore_stage`'s result.
    indices : list[int]
        The picked snapshots.
    labelling : dict[str, Any]
        The campaign's ``active.labelling``: ``calculator``, ``params``, ``allow``.
    workspace : str
        Labels go to ``<workspace>/active/labels``.
    scheduler : str or None
        A Dask scheduler's address; None for a LocalCluster.
    n_workers : int or None
        The LocalCluster's workers.

    Returns
    -------
    dict[str, Any]
        ``keys`` (structure keys, in the order of ``indices``), ``computed`` (labels computed
        now), ``failed`` (``index``, ``key``, ``error`` of each structure whose reference
        calculation raised: left out of the label store, tried again by a rerun) and
        ``labels_dir``.
    """
    from atomistic.active import LabelStore, reference_calculator, structure_key
    from tasks.cluster import dask_client

    labels_dir = str(Path(workspace) / "active" / "labels")
    store = LabelStore(labels_dir)
    frames = read_structures(explored["path"])
    keys = [structure_key(frames[i]) for i in indices]
    todo = [i for i, k in zip(indices, keys, strict=True) if k not in store]
    todo = list(dict.fromkeys(todo))
    done: list[tuple[int, str | None]] = []
    if todo:
        # fail here, in the flow, on a calculator the campaign does not allow or cannot import
        reference_calculator(labelling["calculator"], labelling["params"], labelling["allow"])
        if len(todo) == 1 or n_workers == 1 and scheduler is None:
            for i in todo:
                interrupt.check()
                done.append(_label_one(explored["path"], i, labelling, labels_dir))
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
                done = [(int(c), e) for c, e in client.gather(futures)]
    failed = [
        {"index": i, "key": keys[indices.index(i)], "error": error}
        for i, (_, error) in zip(todo, done, strict=True)
        if error is not None
    ]
    return {
        "keys": keys,
        "computed": sum(c for c, _ in done),
        "failed": failed,
        "labels_dir": labels_dir,
    }


def _no_calculator():
    raise RuntimeError("a picked structure has no label in the label store (label it first)")


# -- the grown dataset -----------------------------------------------------------------------------
def _grown(old: Dataset, added: Dataset) -> Dataset:
    """``old``'s structures followed by ``added``'s (with their energies and forces)."""
    return Dataset(
        numbers=np.concatenate([old.numbers, added.numbers]),
        positions=np.concatenate([old.positions, added.positions]),
        cell=np.concatenate([old.cell, added.cell]),
        pbc=np.concatenate([old.pbc, added.pbc]),
        offsets=np.concatenate([old.offsets, old.offsets[-1] + added.offsets[1:]]),
        energy=np.concatenate([old.energy, added.energy]),
        forces=np.concatenate([old.forces, added.forces]),
        sources=old.sources,
    )


def _grow_features(
    store: Store, features: FeatureRef, key: str, grown: Dataset, added: Dataset
) -> tuple[str, int]:
    """Features of dataset ``key`` (``grown``): ``added``'s computed and stored in a group that
    names the parent's as its first rows (attribute ``appends``), unless the group is complete
    already. Returns its key and the atoms featurized now."""
    fkey = feature_key(key, features.featurizer, features.params)
    if store.has("features", fkey) and repair_feature_group(store, fkey, "features"):
        return fkey, 0
    X_new = model_featurizer(features).featurize_arrays(
        added.numbers, added.positions, added.cell, added.pbc, added.offsets
    )
    parent_group = store.open("features", features.key)
    write_feature_array(
        store,
        fkey,
        np.asarray(X_new, dtype=np.float64),
        added.offsets,
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
        parent=features.key,
    )
    return fkey, added.n_atoms


def grow_stage(
    parent: DatasetRef,
    features: FeatureRef,
    explored: dict[str, Any],
    indices: list[int],
    labels: dict[str, Any],
) -> tuple[DatasetRef, FeatureRef]:
    """The parent dataset followed by the newly labelled structures, stored as a new version
    that stores only the new structures (attrs ``appends``: the parent), and its features.

    Parameters
    ----------
    parent : DatasetRef
        The pool so far.
    features : FeatureRef
        Its features.
    explored : dict[str, Any]
        :func:`tasks.pipeline.active.explore_stage`'s result.
    indices : list[int]
        The picked snapshots, labelled by :func:`label_stage`.
    labels : dict[str, Any]
        :func:`label_stage`'s result (its ``labels_dir``).

    Returns
    -------
    tuple[DatasetRef, FeatureRef]
        The grown dataset (with ``parent``) and its features (with ``featurized_atoms``: the
        atoms featurized now).

    Raises
    ------
    RuntimeError
        A picked structure has no label in the label store.
    """
    from atomistic.active import LabelStore, label_structures

    store = Store(parent.store)
    frames = read_structures(explored["path"])
    new, _ = label_structures(
        [frames[i] for i in indices], _no_calculator, LabelStore(labels["labels_dir"])
    )
    old = read_dataset(store, parent.key)
    added = Dataset.from_atoms(new, require_energy=True)
    grown = _grown(old, added)
    # stores only the new structures, naming the parent
    key, _ = write_dataset(grown, store, parent=parent.key, parent_data=old)
    fkey, computed_atoms = _grow_features(store, features, key, grown, added)
    grown_ref = DatasetRef(store=parent.store, key=key, summary=grown.summary(), parent=parent.key)
    grown_features = replace(
        features,
        key=fkey,
        dataset=key,
        computed_chunks=None,
        n_chunks=None,
        featurized_atoms=computed_atoms,
    )
    return grown_ref, grown_features
