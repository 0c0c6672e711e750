"""Datasets: ingestion of ASE-readable files, validation, content keys and Zarr storage.

A :class:`Dataset` holds structures as flat per-atom arrays plus offsets
(docs/architecture.md): the atoms of structure ``s`` are rows ``offsets[s]:offsets[s + 1]``.
Units are Å and eV (forces eV/Å).

Its key is the sha256 of the canonical arrays (numbers, positions, cell, pbc, offsets, energy,
forces) and a format version: it depends on content only, never on file names or times.

Modules: :mod:`.structures` (the :class:`Dataset` and reading files), :mod:`.store` (splits and
the Zarr store); every name is importable from here.
"""

from atomistic.data.store import (
    DEFAULT_SPLIT,
    SPLIT_NAMES,
    make_split,
    neighbour_estimate,
    read_dataset,
    read_split,
    split_id,
    write_dataset,
)
from atomistic.data.structures import (
    FORMAT_VERSION,
    MIN_DISTANCE,
    DataError,
    Dataset,
    expand_paths,
    file_format,
    load_files,
    read_structures,
)

__all__ = [
    "FORMAT_VERSION",
    "MIN_DISTANCE",
    "DEFAULT_SPLIT",
    "SPLIT_NAMES",
    "DataError",
    "Dataset",
    "expand_paths",
    "file_format",
    "load_files",
    "make_split",
    "neighbour_estimate",
    "read_dataset",
    "read_split",
    "read_structures",
    "split_id",
    "write_dataset",
]
