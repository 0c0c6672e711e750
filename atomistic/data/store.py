"""Datasets in the Zarr store: seeded splits by structure (copies of one structure kept in one
split), writing ``datasets/<key>`` with checksums, reading it back verified, and the neighbour
estimate that sizes featurization. Layout: docs/architecture.md (storage layout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from atomistic.data.structures import FORMAT_VERSION, STORED_ARRAYS, Dataset
from atomistic.storage import CorruptionError, Store, read_array, read_verified

__all__ = [
    "SPLIT_NAMES",
    "make_split",
    "neighbour_estimate",
    "read_dataset",
    "read_atom_range",
    "read_split",
    "read_structure_range",
    "split_id",
    "write_dataset",
]

SPLIT_NAMES = ("train", "validation", "test")


# -- splits ----------------------------------------------------------------------------------
#: the default train / validation / test fractions of a dataset's split (ML4Chem's 80/10/10)
DEFAULT_SPLIT: tuple[float, float, float] = (0.8, 0.1, 0.1)


def make_split(
    n_structures: int,
    fractions: Sequence[float] = DEFAULT_SPLIT,
    seed: int = 0,
    groups: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """A seeded random split by structure: {"train", "validation", "test"} -> sorted indices.

    ``groups`` (n_structures,), e.g. :meth:`Dataset.structure_groups`, keeps the structures of
    one group (copies of one structure) within one split, so that no copy of a training
    structure is tested on; whole groups are dealt in a seeded random order until each split
    holds its share. Without repeated groups the split is the plain one.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1):
        raise ValueError(
            f"split fractions {tuple(fractions)} must be three non-negative numbers summing to 1"
        )
    n_train = int(round(fractions[0] * n_structures))
    n_val = int(round(fractions[1] * n_structures))
    if groups is None or len(np.unique(groups)) == n_structures:
        perm = np.random.default_rng(seed).permutation(n_structures)
        parts = np.split(perm, [n_train, n_train + n_val])
    else:
        labels, inverse = np.unique(groups, return_inverse=True)
        order = np.random.default_rng(seed).permutation(len(labels))
        members = [np.flatnonzero(inverse == g) for g in order]
        sizes = np.cumsum([len(m) for m in members])
        # a group goes to the split its first structure would fall in
        starts = sizes - np.array([len(m) for m in members])
        which = np.searchsorted([n_train, n_train + n_val], starts, side="right")
        parts = [
            np.concatenate(
                [m for m, w in zip(members, which, strict=True) if w == k]
                or [np.empty(0, dtype=np.int64)]
            )
            for k in range(3)
        ]
    return {name: np.sort(p).astype(np.int64) for name, p in zip(SPLIT_NAMES, parts, strict=True)}


def split_id(fractions: Sequence[float], seed: int) -> str:
    return "seed{}-{}".format(seed, "-".join(f"{f:g}" for f in fractions))


# -- storage ---------------------------------------------------------------------------------
#: arrays with one row per atom, and with one row per structure (``offsets`` is neither)
PER_ATOM = ("numbers", "positions", "forces")
PER_STRUCTURE = ("cell", "pbc", "energy")


def write_dataset(
    ds: Dataset,
    store: Store | str,
    *,
    split: Sequence[float] = DEFAULT_SPLIT,
    seed: int = 0,
    parent: str | None = None,
    parent_data: Dataset | None = None,
) -> tuple[str, bool]:
    """Store ``ds`` under ``datasets/<key>`` with its default split; returns (key, written).

    Content already present is found by its key and nothing is written; a stored copy that no
    longer matches its checksums is an error naming the key.

    ``parent``: the key of a stored dataset that ``ds`` extends (its first structures are the
    parent's, in order, with the same labels), e.g. a version grown by active learning. Only the
    appended structures are written; the group names its parent in the attribute ``appends``
    and reading it follows the chain. A ``ds`` that does not start with the parent is stored
    whole. ``parent_data``: the parent as the caller read it (verified), not read again.
    """
    store = store if isinstance(store, Store) else Store(store)
    key = ds.key
    if store.has("datasets", key):
        read_dataset(store, key)  # the stored copy still matches its checksums (else: error)
        return key, False
    base = _prefix_of(store, parent, ds, parent_data) if parent is not None else None
    with store.writing("datasets", key) as group:
        n0, a0 = (base.n_structures, base.n_atoms) if base is not None else (0, 0)
        for name in STORED_ARRAYS:
            arr = getattr(ds, name)
            if arr is None:
                continue
            if name in PER_ATOM:
                arr = arr[a0:]
            elif name in PER_STRUCTURE:
                arr = arr[n0:]
            else:  # offsets, from 0 in every group
                arr = arr[n0:] - a0
            group.create_array(name, data=arr, chunks=arr.shape or (1,))
        parts = make_split(ds.n_structures, split, seed, ds.structure_groups())
        sid = split_id(split, seed)
        for name, idx in parts.items():
            group.create_array(f"splits/{sid}/{name}", data=idx, chunks=(max(len(idx), 1),))
        group.attrs.update(
            {
                "format_version": FORMAT_VERSION,
                "units": {"positions": "Å", "energy": "eV", "forces": "eV/Å"},
                "elements": list(ds.elements),
                "sources": list(ds.sources),
                "summary": ds.summary(),
                "default_split": sid,
            }
        )
        if base is not None:
            group.attrs["appends"] = {"parent": parent, "structures": n0, "atoms": a0}
    return key, True


def _prefix_of(
    store: Store, parent: str, ds: Dataset, base: Dataset | None = None
) -> Dataset | None:
    """The stored dataset ``parent`` (``base``, read if not given) when ``ds`` starts with it
    (same arrays, same labels)."""
    base = read_dataset(store, parent) if base is None else base
    n, a = base.n_structures, base.n_atoms
    if n == 0 or ds.n_structures <= n:
        return None
    for name in STORED_ARRAYS:
        mine, theirs = getattr(ds, name), getattr(base, name)
        if (mine is None) != (theirs is None):
            return None
        if mine is None:
            continue
        head = mine[:a] if name in PER_ATOM else mine[: n + 1] if name == "offsets" else mine[:n]
        if not np.array_equal(head, theirs):
            return None
    return base


def _segments(store: Store, key: str, verified: bool) -> list[tuple[Any, np.ndarray]]:
    """(group, its offsets from 0) along ``datasets/<key>``'s chain, the oldest first."""
    read = (lambda g: read_verified(g, "offsets", store.url)) if verified else _offsets
    return [(group, read(group)) for _, group in store.chain("datasets", key)]


def _offsets(group: Any) -> np.ndarray:
    return read_array(group, "offsets")


def _gather(
    store: Store,
    segments: list[tuple[Any, np.ndarray]],
    names: Sequence[str],
    s0: int = 0,
    s1: int | None = None,
    verified: bool = True,
) -> dict[str, np.ndarray]:
    """Arrays ``names`` of structures ``s0:s1`` across a chain's ``segments`` (offsets from 0).
    ``verified``: every array read whole and checked against its checksum; else only the rows
    needed are read (a worker's chunk)."""

    def read(group: Any, name: str, lo: int, hi: int) -> np.ndarray:
        if verified:
            return read_verified(group, name, store.url)[lo:hi]
        return read_array(group, name, lo, hi)

    pieces: dict[str, list[np.ndarray]] = {n: [] for n in names if n != "offsets"}
    offsets = [np.zeros(1, dtype=np.int64)]
    start = 0  # the first structure of the group, in the whole dataset
    for group, local in segments:
        n = len(local) - 1
        lo, hi = max(s0 - start, 0), min((n if s1 is None else s1 - start), n)
        start += n
        if hi <= lo:
            continue
        a_lo, a_hi = int(local[lo]), int(local[hi])
        offsets.append(local[lo + 1 : hi + 1] - a_lo + offsets[-1][-1])
        for name in pieces:
            rows = (a_lo, a_hi) if name in PER_ATOM else (lo, hi)
            pieces[name].append(read(group, name, *rows))
    out = {n: np.concatenate(p) for n, p in pieces.items()}
    if "offsets" in names:
        out["offsets"] = np.concatenate(offsets).astype(np.int64)
    return out


_GEOMETRY = ("numbers", "positions", "cell", "pbc", "offsets")


def read_structure_range(store: Store | str, key: str, s0: int, s1: int) -> dict[str, np.ndarray]:
    """numbers, positions, cell, pbc and offsets (from 0) of structures ``s0:s1`` of
    ``datasets/<key>``, reading only their rows (unverified: a worker's chunk)."""
    store = store if isinstance(store, Store) else Store(store)
    return _gather(store, _segments(store, key, False), _GEOMETRY, s0, s1, verified=False)


def read_atom_range(
    store: Store | str, key: str, lo: int, hi: int
) -> tuple[dict[str, np.ndarray], int]:
    """The structures of ``datasets/<key>`` that hold atoms ``lo:hi`` (as
    :func:`read_structure_range` gives them) and the index of their first atom: a featurization
    chunk's input, read in one pass over the store."""
    store = store if isinstance(store, Store) else Store(store)
    segments = _segments(store, key, False)
    first = np.cumsum([0] + [int(local[-1]) for _, local in segments])  # each group's first atom
    offsets = np.concatenate(
        [[0]] + [local[1:] + a for (_, local), a in zip(segments, first, strict=False)]
    )
    s0 = int(np.searchsorted(offsets, lo, side="right")) - 1
    s1 = int(np.searchsorted(offsets, hi, side="left"))
    return _gather(store, segments, _GEOMETRY, s0, s1, verified=False), int(offsets[s0])


def read_dataset(store: Store | str, key: str) -> Dataset:
    """The Dataset stored under ``datasets/<key>``, every array checked against its checksum.

    A dataset is source data (it cannot be recomputed): a missing or damaged chunk raises
    :class:`~atomistic.storage.CorruptionError` naming the store and the key. A group written
    before checksums existed, and a version stored as its parent plus appended structures, is
    checked against its content key too.
    """
    store = store if isinstance(store, Store) else Store(store)
    segments = _segments(store, key, True)
    group = segments[-1][0]
    stored = group.attrs.get("checksums")
    if stored is not None and not isinstance(stored, dict):
        raise CorruptionError(f"{store.url}: datasets/{key}: its checksums are not a mapping")
    names = [n for n in STORED_ARRAYS if (n in stored if stored is not None else n in group)]
    sources = group.attrs.get("sources", [])
    listed = sources if isinstance(sources, list) else []
    arrays = _gather(store, segments, names)
    ds = Dataset(**arrays, sources=tuple(s for s in listed if isinstance(s, dict)))
    if (stored is None or len(segments) > 1) and ds.key != key:
        raise CorruptionError(
            f"{store.url}: datasets/{key}: its arrays no longer hash to its key (a chunk file "
            "was deleted, truncated or changed, or a parent version replaced)"
        )
    return ds


def neighbour_estimate(store: Store | str, key: str, cutoff: float) -> tuple[float, int, float]:
    """The largest expected number of neighbours per atom within ``cutoff`` (Å) over the
    structures of ``datasets/<key>``, the structure that has it, and that structure's cell
    width (Å, the smallest distance between opposite faces; inf for a molecule).

    A periodic structure of n atoms in a cell of volume V has about n / V * 4/3 pi rc^3
    neighbours per atom (its images included); a molecule has at most n - 1. Reads only the
    cells, periodicity and offsets.
    """
    store = store if isinstance(store, Store) else Store(store)
    arrays = _gather(store, _segments(store, key, True), ("cell", "pbc", "offsets"))
    cell, pbc, counts = arrays["cell"], arrays["pbc"], np.diff(arrays["offsets"])
    volume = np.abs(np.linalg.det(cell))
    periodic = pbc.any(axis=1) & (volume > 0)
    sphere = 4.0 / 3.0 * math.pi * float(cutoff) ** 3
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = np.where(periodic, counts / np.where(periodic, volume, 1.0) * sphere, counts - 1)
    s = int(np.argmax(estimate))
    width = math.inf
    if periodic[s]:
        normals = np.cross(cell[s][[1, 2, 0]], cell[s][[2, 0, 1]])
        width = float(volume[s] / np.linalg.norm(normals, axis=1).max())
    return float(estimate[s]), s, width


def read_split(
    store: Store | str,
    key: str,
    fractions: Sequence[float] | None = None,
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """The stored split (the default one when no fractions/seed are given); made if absent."""
    store = store if isinstance(store, Store) else Store(store)
    group = store.open("datasets", key)
    if fractions is None and seed is None:
        sid = group.attrs["default_split"]
    else:
        sid = split_id(fractions or DEFAULT_SPLIT, 0 if seed is None else seed)
    path = f"splits/{sid}"
    if path in group:
        return {name: read_verified(group, f"{path}/{name}", store.url) for name in SPLIT_NAMES}
    ds = read_dataset(store, key)
    fractions = fractions or DEFAULT_SPLIT
    return make_split(ds.n_structures, fractions, seed or 0, ds.structure_groups())
