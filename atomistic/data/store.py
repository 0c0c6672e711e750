"""Datasets in the Zarr store: seeded splits by structure (copies of one structure kept in one
split), writing ``datasets/<key>`` with checksums, reading it back verified, and the neighbour
estimate that sizes featurization. Layout: docs/architecture.md (storage layout).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from atomistic.data.structures import FORMAT_VERSION, STORED_ARRAYS, Dataset
from atomistic.storage import CorruptionError, Store, read_verified

__all__ = [
    "SPLIT_NAMES",
    "make_split",
    "neighbour_estimate",
    "read_dataset",
    "read_split",
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
def write_dataset(
    ds: Dataset,
    store: Store | str,
    *,
    split: Sequence[float] = DEFAULT_SPLIT,
    seed: int = 0,
) -> tuple[str, bool]:
    """Store ``ds`` under ``datasets/<key>`` with its default split; returns (key, written).

    Content already present is found by its key and nothing is written; a stored copy that no
    longer matches its checksums is an error naming the key.
    """
    store = store if isinstance(store, Store) else Store(store)
    key = ds.key
    if store.has("datasets", key):
        read_dataset(store, key)  # the stored copy still matches its checksums (else: error)
        return key, False
    with store.writing("datasets", key) as group:
        for name in STORED_ARRAYS:
            arr = getattr(ds, name)
            if arr is not None:
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
    return key, True


def read_dataset(store: Store | str, key: str) -> Dataset:
    """The Dataset stored under ``datasets/<key>``, every array checked against its checksum.

    A dataset is source data (it cannot be recomputed): a missing or damaged chunk raises
    :class:`~atomistic.storage.CorruptionError` naming the store and the key. A group written
    before checksums existed is checked against its content key instead.
    """
    store = store if isinstance(store, Store) else Store(store)
    group = store.open("datasets", key)
    stored = group.attrs.get("checksums")
    if stored is not None and not isinstance(stored, dict):
        raise CorruptionError(f"{store.url}: datasets/{key}: its checksums are not a mapping")
    names = [n for n in STORED_ARRAYS if (n in stored if stored is not None else n in group)]
    arrays = {name: read_verified(group, name, store.url) for name in names}
    sources = group.attrs.get("sources", [])
    listed = sources if isinstance(sources, list) else []
    ds = Dataset(**arrays, sources=tuple(s for s in listed if isinstance(s, dict)))
    if stored is None and ds.key != key:
        raise CorruptionError(
            f"{store.url}: datasets/{key}: its arrays no longer hash to its key (a chunk file "
            "was deleted, truncated or changed)"
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
    group = store.open("datasets", key)
    cell, pbc = read_verified(group, "cell", store.url), read_verified(group, "pbc", store.url)
    counts = np.diff(read_verified(group, "offsets", store.url))
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
