"""Ragged per-atom feature arrays in Zarr, written chunk by chunk and resumable.

``features/<key>/`` holds ``values`` (n_atoms, n_features) float64 and ``offsets``
(n_structures + 1,) (atoms of structure ``s`` are rows ``offsets[s]:offsets[s+1]``), plus
``done`` (n_chunks,) bool, one Zarr chunk per element, so that concurrent workers each mark their
own work chunk without touching another's bytes.

Work chunks are row ranges aligned to the Zarr chunks of ``values`` — two workers never write
the same stored chunk. Rows are chosen as a multiple of the typical structure size so that a
chunk holds whole structures; a structure that straddles a boundary anyway (mixed sizes) is
featurized by both chunks, each writing only its own rows.

Nothing here knows about Dask: :func:`compute_chunk` is a plain function that any executor can
run; the key of the group is :func:`feature_key`, a content hash of the dataset key, the
featurizer's name and parameters, and this module's format version.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from atomistic.data import Dataset
from atomistic.storage import Store, content_hash

__all__ = [
    "FORMAT_VERSION",
    "FeaturePlan",
    "feature_key",
    "plan_feature_group",
    "compute_chunk",
    "finish_feature_group",
    "read_features",
    "write_feature_array",
]

FORMAT_VERSION = 1
TARGET_CHUNK_BYTES = 4 * 2**20


def feature_key(dataset_key: str, name: str, params: dict[str, Any]) -> str:
    """Content key of a featurization: dataset key + featurizer name + parameters + version."""
    return content_hash("atompipe-features", FORMAT_VERSION, dataset_key, name, params)


@dataclass(frozen=True)
class FeaturePlan:
    """What a featurization will write: its key, chunk row ranges, and which remain to do."""

    key: str
    rows_per_chunk: int
    n_atoms: int
    todo: tuple[int, ...]

    @property
    def n_chunks(self) -> int:
        return -(-self.n_atoms // self.rows_per_chunk)

    def rows(self, chunk: int) -> tuple[int, int]:
        lo = chunk * self.rows_per_chunk
        return lo, min(lo + self.rows_per_chunk, self.n_atoms)


def _rows_per_chunk(offsets: np.ndarray, n_features: int, rows: int | None) -> int:
    if rows is None:
        rows = max(1, TARGET_CHUNK_BYTES // (8 * max(n_features, 1)))
    sizes = np.diff(offsets)
    typical = int(np.bincount(sizes).argmax()) if sizes.size else 1
    typical = max(typical, 1)
    return max(typical, (rows // typical) * typical)


def plan_feature_group(
    store: Store,
    dataset: Dataset,
    featurizer: Any,
    *,
    rows_per_chunk: int | None = None,
    kind: str = "features",
    key: str | None = None,
) -> FeaturePlan:
    """Create (or reopen, to resume) the group for ``featurizer`` over ``dataset``.

    ``featurizer`` must have its elements fixed. Returns the plan; ``todo`` is empty when the
    group is already complete.
    """
    params = featurizer.get_params()
    key = key or feature_key(dataset.key, featurizer.name, params)
    n_features = featurizer.n_features
    if n_features == 0:
        raise ValueError(f"featurizer {featurizer.name} {params} gives zero feature columns")
    if store.has(kind, key):
        group = store.open(kind, key)
        return FeaturePlan(key, int(group.attrs["rows_per_chunk"]), dataset.n_atoms, ())
    group = store.require(kind, key)
    if "values" in group and group.attrs.get("dataset") == dataset.key:
        rows = int(group.attrs["rows_per_chunk"])
        done = group["done"][...]
    else:
        rows = _rows_per_chunk(dataset.offsets, n_features, rows_per_chunk)
        n_chunks = max(1, -(-dataset.n_atoms // rows))
        group.create_array(
            "values",
            shape=(dataset.n_atoms, n_features),
            dtype="float64",
            chunks=(rows, n_features),
            overwrite=True,
        )
        group.create_array(
            "offsets", data=dataset.offsets, chunks=dataset.offsets.shape, overwrite=True
        )
        group.create_array(
            "done", shape=(n_chunks,), dtype="bool", chunks=(1,), fill_value=False, overwrite=True
        )
        group.attrs.update(
            {
                "format_version": FORMAT_VERSION,
                "featurizer": featurizer.name,
                "params": params,
                "dataset": dataset.key,
                "elements": list(featurizer.elements),
                "labels": [_jsonable(lab) for lab in featurizer.labels],
                "rows_per_chunk": rows,
                "complete": False,
            }
        )
        done = np.zeros(n_chunks, dtype=bool)
    todo = tuple(int(c) for c in np.flatnonzero(~done))
    return FeaturePlan(key, rows, dataset.n_atoms, todo)


def _jsonable(label: dict[str, Any]) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in label.items()}


def compute_chunk(
    store_url: str,
    dataset_key: str,
    key: str,
    chunk: int,
    featurizer: Any,
    kind: str = "features",
) -> int:
    """Featurize the structures covering work chunk ``chunk`` and write its rows.

    Reads only those structures from the store, so memory is bounded by one chunk.
    Returns the number of rows written.
    """
    store = Store(store_url)
    group = store.require(kind, key)
    rows = int(group.attrs["rows_per_chunk"])
    dsg = store.open("datasets", dataset_key)
    offsets = dsg["offsets"][...]
    n_atoms = int(offsets[-1])
    lo, hi = chunk * rows, min((chunk + 1) * rows, n_atoms)
    s0 = int(np.searchsorted(offsets, lo, side="right")) - 1
    s1 = int(np.searchsorted(offsets, hi, side="left"))
    a0, a1 = int(offsets[s0]), int(offsets[s1])
    sub_offsets = offsets[s0 : s1 + 1] - a0
    values = featurizer.featurize_arrays(
        dsg["numbers"][a0:a1],
        dsg["positions"][a0:a1],
        dsg["cell"][s0:s1],
        dsg["pbc"][s0:s1],
        sub_offsets,
    )
    group["values"][lo:hi] = np.asarray(values, dtype=np.float64)[lo - a0 : hi - a0]
    group["done"][chunk] = True
    return hi - lo


def finish_feature_group(store: Store, key: str, kind: str = "features") -> None:
    """Publish the group once every chunk is done; an error names the missing chunks."""
    group = store.require(kind, key)
    done = group["done"][...]
    if not done.all():
        missing = np.flatnonzero(~done)[:10].tolist()
        raise RuntimeError(f"{store.url}: {kind}/{key} is missing chunks {missing}")
    store.mark_complete(kind, key)


def featurize_to_store(
    store: Store, dataset: Dataset, featurizer: Any, *, rows_per_chunk: int | None = None
) -> tuple[str, int]:
    """Serial featurization into the store (no executor); returns (key, chunks computed)."""
    plan = plan_feature_group(store, dataset, featurizer, rows_per_chunk=rows_per_chunk)
    for chunk in plan.todo:
        compute_chunk(store.url, dataset.key, plan.key, chunk, featurizer)
    if plan.todo:
        finish_feature_group(store, plan.key)
    return plan.key, len(plan.todo)


def read_features(
    store: Store | str, key: str, structures: np.ndarray | None = None, kind: str = "features"
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and offsets, for all structures or the given structure indices.

    Returns ``values`` (n_atoms_selected, n_features) float64 and ``offsets``
    (n_selected + 1,) int64.
    """
    store = store if isinstance(store, Store) else Store(store)
    group = store.open(kind, key)
    offsets = group["offsets"][...]
    if structures is None:
        return group["values"][...], offsets
    idx = np.asarray(structures, dtype=np.int64)
    counts = np.diff(offsets)[idx]
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if idx.size == 0:
        return np.zeros((0, group["values"].shape[1])), new_offsets
    lo, hi = int(offsets[idx.min()]), int(offsets[idx.max() + 1])
    block = group["values"][lo:hi]  # one read of the covering range, then a gather
    rows = np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in idx]) - lo
    return block[rows], new_offsets


def write_feature_array(
    store: Store,
    key: str,
    values: np.ndarray,
    offsets: np.ndarray,
    attrs: dict[str, Any],
    kind: str = "latent",
) -> bool:
    """Write a whole per-atom array in one go (latent features); returns False if present."""
    if store.has(kind, key):
        return False
    with store.writing(kind, key) as group:
        rows = _rows_per_chunk(offsets, values.shape[1], None)
        group.create_array(
            "values", data=np.asarray(values, dtype=np.float64), chunks=(rows, values.shape[1])
        )
        group.create_array("offsets", data=offsets, chunks=offsets.shape)
        group.attrs.update({"format_version": FORMAT_VERSION, **attrs})
    return True
