"""Ragged per-atom feature arrays in Zarr, written chunk by chunk and resumable.

``features/<key>/`` holds ``values`` (n_atoms, n_features) float64 and ``offsets``
(n_structures + 1,) (atoms of structure ``s`` are rows ``offsets[s]:offsets[s+1]``), plus
``done`` (n_chunks,) bool and ``sums`` (n_chunks,) uint64, one Zarr chunk per element, so that
concurrent workers each mark their own work chunk without touching another's bytes.

Every work chunk's rows carry a checksum (``sums``, :func:`atomistic.storage.chunk_digest`)
written after the rows and before the chunk is marked done, and checked on every read: a chunk
file that was deleted (Zarr reads it back as zeros), truncated or changed never passes for
features. :func:`verify_feature_group` finds such chunks and :func:`plan_feature_group` computes
them again (features are derived data); :func:`read_features` refuses them, naming the key.

Work chunks are row ranges aligned to the Zarr chunks of ``values`` — two workers never write
the same stored chunk. Rows are chosen as a multiple of the typical structure size so that a
chunk holds whole structures; a structure that straddles a boundary anyway (mixed sizes) is
featurized by both chunks, each writing only its own rows.

Nothing here knows about Dask: :func:`compute_chunk` is a plain function that any executor can
run; the key of the group is :func:`feature_key`, a content hash of the dataset key, the
featurizer's name and parameters, and this module's format version.

Why one module of just over 400 lines: planning, computing, verifying, repairing and reading a
group share one layout (rows per chunk, ``done``, ``sums``) and must change together.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from atomistic.data import Dataset
from atomistic.data.store import read_atom_range
from atomistic.storage import (
    CorruptionError,
    Store,
    array,
    chunk_digest,
    content_hash,
    read_array,
    read_verified,
)

__all__ = [
    "FORMAT_VERSION",
    "FeaturePlan",
    "feature_key",
    "plan_feature_group",
    "compute_chunk",
    "finish_feature_group",
    "read_features",
    "write_feature_array",
    "verify_feature_group",
    "repair_feature_group",
]

# 2: features computed by the fused CPU kernels (atomistic/features/fused.py), which sum in
# another order than the torch path of version 1 (the values agree to ~1e-15, not bit for bit):
# a new key, so that one key always names the same bytes and no group mixes the two
FORMAT_VERSION = 2
TARGET_CHUNK_BYTES = 4 * 2**20
# with several workers, this many chunks each, of at least MIN_ROWS rows: a chunk's fixed cost
# (opening the store, reading its structures, writing and marking its rows: ~20 round trips
# into zarr, ~30 ms) is paid once per chunk; 16000 Cu atoms with G2+G3 on 2 workers, three
# alternating runs: 1 chunk each 1.77-1.79x one worker, 2 chunks each 1.64-1.70x (8 chunks
# each 1.58x, measured before). More chunks balance uneven work at that cost.
CHUNKS_PER_WORKER = 1
MIN_ROWS = 512


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


def _rows_per_chunk(
    offsets: np.ndarray, n_features: int, rows: int | None, workers: int = 1
) -> int:
    """Rows per work chunk: ``rows`` if given; else ~TARGET_CHUNK_BYTES of values, and with
    several ``workers`` no more than gives each CHUNKS_PER_WORKER chunks (16000 atoms with 8
    columns are one 4 MiB chunk, which one worker would compute alone); rounded to whole
    structures of the most common size."""
    sizes = np.diff(offsets)
    typical = int(np.bincount(sizes).argmax()) if sizes.size else 1
    typical = max(typical, 1)
    if rows is None:
        rows = max(1, TARGET_CHUNK_BYTES // (8 * max(n_features, 1)))
        if workers > 1:
            share = -(-int(offsets[-1]) // (CHUNKS_PER_WORKER * workers))
            rows = min(rows, max(MIN_ROWS, -(-share // typical) * typical))
    return max(typical, (rows // typical) * typical)


def plan_feature_group(
    store: Store,
    dataset: Dataset,
    featurizer: Any,
    *,
    rows_per_chunk: int | None = None,
    kind: str = "features",
    key: str | None = None,
    workers: int = 1,
    exclusive: bool = False,
) -> FeaturePlan:
    """Create (or reopen, to resume) the group for ``featurizer`` over ``dataset``.

    ``featurizer`` must have its elements fixed; ``workers`` will compute its chunks (the
    default size leaves each a few). ``exclusive``: the caller holds the store's planning lock,
    so a group laid out by this call holds no chunk another planner finished (its check is
    skipped). Returns the plan; ``todo`` is empty when the group is already complete.
    """
    params = featurizer.get_params()
    key = key or feature_key(dataset.key, featurizer.name, params)
    n_features = featurizer.n_features
    if n_features == 0:
        raise ValueError(f"featurizer {featurizer.name} {params} gives zero feature columns")
    if store.has(kind, key) and repair_feature_group(store, key, kind):
        group = store.open(kind, key)
        return FeaturePlan(key, _rows_attr(group), dataset.n_atoms, ())
    group = store.require(kind, key)
    same = group.attrs.get("dataset") == dataset.key
    bad = verify_feature_group(store, key, kind) if same else None
    if bad is not None:  # resume; a done chunk whose rows were lost is done again
        rows = _rows_attr(group)
        for c in bad:
            array(group, "done")[c] = False
        done = read_array(group, "done")
    else:
        rows = _lay_out(group, dataset, featurizer, rows_per_chunk, workers=workers)
        fresh = exclusive and not same  # laid out now, under the caller's lock
        if fresh:  # no planner finished a chunk of it
            kept: list[int] | None = []
        else:
            kept = verify_feature_group(store, key, kind)  # chunks another planner finished
        if kept is None:  # what was kept does not read back: start the group afresh
            rows = _lay_out(group, dataset, featurizer, rows_per_chunk, True, workers)
        if fresh:
            done = np.zeros(-(-dataset.n_atoms // rows), dtype=bool)
        else:
            done = read_array(group, "done")
        for c in kept or []:
            done[c] = False
            array(group, "done")[c] = False
    todo = tuple(int(c) for c in np.flatnonzero(~done))
    if not todo and not group.attrs.get("complete", False):
        # every chunk done but the group never marked complete (a process that died between
        # its last chunk and the mark, or a planner that reset the mark after another process
        # finished): mark it now, or no later run would
        finish_feature_group(store, key, kind)
    return FeaturePlan(key, rows, dataset.n_atoms, todo)


def _require_array(group: Any, name: str, fresh: bool, **spec: Any) -> zarr.Array:
    """``group[name]`` as ``spec`` (shape, dtype, chunks; or data) describes it: an existing
    array that matches is kept with its bytes (another planner of the same key, on a store
    without a lock, may be filling it), one that does not is replaced."""
    data = spec.get("data")
    shape = tuple(data.shape) if data is not None else tuple(spec["shape"])
    node = None if fresh else group.get(name)
    if isinstance(node, zarr.Array) and tuple(node.shape) == shape:
        same_chunks = tuple(node.chunks) == tuple(spec["chunks"])
        if same_chunks and (data is None or np.array_equal(node[...], data)):
            return node
    try:
        return group.create_array(name, **spec, overwrite=True)
    except Exception as exc:  # noqa: BLE001 - zarr's errors name no store; this one does
        raise OSError(f"{group.path}/{name}: cannot create the array ({exc})") from exc


def _lay_out(
    group: Any,
    dataset: Dataset,
    featurizer: Any,
    rows_per_chunk: int | None,
    fresh: bool = False,
    workers: int = 1,
) -> int:
    """Create the arrays and attributes of a feature group, keeping any that another planner
    already made (no lock is needed on object stores: nothing it wrote is overwritten, and the
    chunks both compute are byte-identical). Returns the rows per work chunk."""
    n_features = featurizer.n_features
    rows = _rows_per_chunk(dataset.offsets, n_features, rows_per_chunk, workers)
    existing = None if fresh else group.get("values")
    if isinstance(existing, zarr.Array) and tuple(existing.shape) == (
        dataset.n_atoms,
        n_features,
    ):
        rows = int(existing.chunks[0])  # the layout another planner chose
    n_chunks = max(1, -(-dataset.n_atoms // rows))
    _require_array(
        group,
        "values",
        fresh,
        shape=(dataset.n_atoms, n_features),
        dtype="float64",
        chunks=(rows, n_features),
    )
    _require_array(group, "offsets", fresh, data=dataset.offsets, chunks=dataset.offsets.shape)
    _require_array(
        group, "done", fresh, shape=(n_chunks,), dtype="bool", chunks=(1,), fill_value=False
    )
    _require_array(
        group, "sums", fresh, shape=(n_chunks,), dtype="uint64", chunks=(1,), fill_value=0
    )
    attrs: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "featurizer": featurizer.name,
        "params": featurizer.get_params(),
        "dataset": dataset.key,
        "elements": list(featurizer.elements),
        "labels": [_jsonable(lab) for lab in featurizer.labels],
        "rows_per_chunk": rows,
        "checksums": {"offsets": f"{chunk_digest(dataset.offsets):016x}"},
    }
    if "complete" not in group.attrs:  # a concurrent planner's mark is left as it is
        attrs["complete"] = False
    group.update_attributes(attrs)  # one metadata write (attrs.update writes once per key)
    return rows


def _rows_attr(group: Any) -> int:
    """The ``rows_per_chunk`` attribute of a feature group."""
    rows = group.attrs["rows_per_chunk"]
    if not isinstance(rows, int | float | str):
        raise CorruptionError(f"{group.path}: rows_per_chunk {rows!r} is not a number")
    return int(rows)


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
    rows = _rows_attr(group)
    n_atoms = array(group, "values").shape[0]
    lo, hi = chunk * rows, min((chunk + 1) * rows, n_atoms)
    part, a0 = read_atom_range(store, dataset_key, lo, hi)
    values = featurizer.featurize_arrays(
        part["numbers"], part["positions"], part["cell"], part["pbc"], part["offsets"]
    )
    rows_out = np.asarray(values, dtype=np.float64)[lo - a0 : hi - a0]
    array(group, "values")[lo:hi] = rows_out
    # rows first, then their checksum, then done
    array(group, "sums")[chunk] = chunk_digest(rows_out)
    array(group, "done")[chunk] = True
    return hi - lo


def finish_feature_group(store: Store, key: str, kind: str = "features") -> None:
    """Publish the group once every chunk is done; an error names the missing chunks."""
    group = store.require(kind, key)
    done = read_array(group, "done")
    if not done.all():
        missing = np.flatnonzero(~done)[:10].tolist()
        raise RuntimeError(f"{store.url}: {kind}/{key} is missing chunks {missing}")
    store.mark_complete(kind, key)


def read_features(
    store: Store | str, key: str, structures: np.ndarray | None = None, kind: str = "features"
) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows and offsets, for all structures or the given structure indices.

    A group that extends a parent (attribute ``appends``, written by
    :func:`write_feature_array` with ``parent``) holds only the appended structures' rows;
    the rows are read along the chain, each group checked against its checksums.

    Returns ``values`` (n_atoms_selected, n_features) float64 and ``offsets``
    (n_selected + 1,) int64.
    """
    store = store if isinstance(store, Store) else Store(store)
    chain = store.chain(kind, key)
    segments = [(k, g, _verified_offsets(store, g, k, kind)) for k, g in chain]
    if len(segments) == 1:
        return _read_group(store, *segments[0], kind, structures)
    starts = np.cumsum([0] + [len(off) - 1 for _, _, off in segments])  # first structure of each
    if structures is None:
        blocks = [_read_group(store, k, g, off, kind, None)[0] for k, g, off in segments]
        sizes = np.concatenate([np.diff(off) for _, _, off in segments])
        return np.concatenate(blocks), np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    idx = np.asarray(structures, dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= starts[-1]):
        raise IndexError(f"{kind}/{key}: structure indices outside 0..{starts[-1] - 1}")
    seg = np.searchsorted(starts, idx, side="right") - 1
    counts = np.zeros(len(idx), dtype=np.int64)
    parts = {}
    for j in np.unique(seg):
        k, g, off = segments[j]
        parts[j] = _read_group(store, k, g, off, kind, idx[seg == j] - starts[j])
        counts[seg == j] = np.diff(parts[j][1])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n_features = array(segments[-1][1], "values").shape[1]
    values = np.zeros((int(offsets[-1]), n_features))
    for j, (vals, _) in parts.items():
        mine = np.flatnonzero(seg == j)
        values[_rows(offsets[mine], counts[mine])] = vals
    return values, offsets


def _rows(starts: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """The row indices of consecutive runs: ``starts[k] .. starts[k] + counts[k]``, in order."""
    return np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())


def _read_group(
    store: Store,
    key: str,
    group: Any,
    offsets: np.ndarray,
    kind: str,
    structures: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`read_features` of one group (its own rows), ``offsets`` its verified offsets."""
    if structures is None:
        return _verified_rows(store, group, key, kind, 0, int(offsets[-1])), offsets
    idx = np.asarray(structures, dtype=np.int64)
    counts = np.diff(offsets)[idx]
    new_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    if idx.size == 0:
        return np.zeros((0, array(group, "values").shape[1])), new_offsets
    lo, hi = int(offsets[idx.min()]), int(offsets[idx.max() + 1])
    block = _verified_rows(store, group, key, kind, lo, hi)  # one read, then a gather
    return block[_rows(offsets[idx] - lo, counts)], new_offsets


def _layout_ok(group: Any) -> bool:
    return all(name in group for name in ("values", "offsets", "done", "sums"))


def _verified_offsets(store: Store, group: Any, key: str, kind: str) -> np.ndarray:
    if "checksums" in group.attrs:
        return read_verified(group, "offsets", store.url)
    try:
        return read_array(group, "offsets")
    except (KeyError, ValueError, OSError, RuntimeError) as exc:
        raise CorruptionError(f"{store.url}: {kind}/{key}: offsets unreadable ({exc})") from exc


def _bad_chunks(group: Any, lo: int, hi: int) -> tuple[np.ndarray, list[int]]:
    """Rows lo:hi read as whole work chunks, and the chunks whose checksum does not match."""
    rows = _rows_attr(group)
    n_atoms = array(group, "values").shape[0]
    c0, c1 = lo // rows, -(-hi // rows) if hi > lo else lo // rows
    block = read_array(group, "values", c0 * rows, min(c1 * rows, n_atoms))
    sums = read_array(group, "sums", c0, c1)
    bad = [
        c
        for c in range(c0, c1)
        if chunk_digest(block[(c - c0) * rows : (c - c0 + 1) * rows]) != int(sums[c - c0])
    ]
    return block[lo - c0 * rows : hi - c0 * rows], bad


def _verified_rows(store: Store, group: Any, key: str, kind: str, lo: int, hi: int) -> np.ndarray:
    try:
        if not _layout_ok(group):
            raise KeyError("values, offsets, done or sums missing")
        block, bad = _bad_chunks(group, lo, hi)
    except Exception as exc:  # an array gone, a chunk that no longer decodes (any codec's error)
        raise CorruptionError(f"{store.url}: {kind}/{key}: unreadable ({exc})") from exc
    if bad:
        raise CorruptionError(
            f"{store.url}: {kind}/{key}: chunk(s) {bad[:10]} of values do not match their "
            "checksums (a chunk file was deleted, truncated or changed); run the campaign "
            "again to recompute them"
        )
    return block


def verify_feature_group(store: Store, key: str, kind: str = "features") -> list[int] | None:
    """Work chunks marked done whose rows no longer match their checksum; None when the group's
    layout itself is damaged (an array or its metadata gone)."""
    try:
        group = store.require(kind, key)
        if not _layout_ok(group) or "rows_per_chunk" not in group.attrs:
            return None
        done = read_array(group, "done")
        n_atoms = array(group, "values").shape[0]
        _, bad = _bad_chunks(group, 0, n_atoms)
        if "checksums" in group.attrs:
            read_verified(group, "offsets", store.url)
    except Exception:  # an array gone, a chunk that no longer decodes (any codec's error)
        return None
    return [c for c in bad if done[c]]


def repair_feature_group(store: Store, key: str, kind: str = "features") -> bool:
    """Check a feature group's stored rows; True when sound. Damaged work chunks of a feature
    group are marked to do again (and the group incomplete), so the next featurization
    recomputes just those; a latent group, or a group whose layout is damaged, is deleted
    (its stage makes it again)."""
    bad = verify_feature_group(store, key, kind)
    if bad == []:
        return True
    if bad is None or kind != "features":
        store.delete(kind, key)
        return False
    group = store.require(kind, key)
    group.attrs["complete"] = False
    for c in bad:
        array(group, "done")[c] = False
    return False


def write_feature_array(
    store: Store,
    key: str,
    values: np.ndarray,
    offsets: np.ndarray,
    attrs: dict[str, Any],
    kind: str = "latent",
    parent: str | None = None,
) -> bool:
    """Write a whole per-atom array in one go (latent features); returns False if present.

    ``parent``: the key of a complete group of the same kind whose structures come first;
    ``values`` and ``offsets`` are then those of the appended structures only, and the group
    names its parent in the attribute ``appends`` (read back whole by :func:`read_features`)."""
    if store.has(kind, key) and repair_feature_group(store, key, kind):
        return False
    values = np.asarray(values, dtype=np.float64)
    if parent is not None:
        chain = store.chain(kind, parent)
        n_parent = sum(len(_verified_offsets(store, g, k, kind)) - 1 for k, g in chain)
        attrs = {**attrs, "appends": {"parent": parent, "structures": n_parent}}
    with store.writing(kind, key) as group:
        rows = _rows_per_chunk(offsets, values.shape[1], None)
        n_chunks = max(1, -(-len(values) // rows))
        group.create_array("values", data=values, chunks=(rows, values.shape[1]))
        group.create_array("offsets", data=offsets, chunks=offsets.shape)
        sums = [chunk_digest(values[c * rows : (c + 1) * rows]) for c in range(n_chunks)]
        group.create_array("sums", data=np.asarray(sums, dtype=np.uint64), chunks=(1,))
        group.create_array("done", data=np.ones(n_chunks, dtype=bool), chunks=(1,))
        group.update_attributes({"format_version": FORMAT_VERSION, "rows_per_chunk": rows, **attrs})
    return True
