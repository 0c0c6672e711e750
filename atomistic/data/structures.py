"""Structures as flat arrays (:class:`Dataset`), and reading them from ASE-readable files with
every structure validated; errors name the file and the structure (:class:`DataError`).
The store side (splits, writing and reading ``datasets/<key>``) is :mod:`atomistic.data.store`;
the conventions are in :mod:`atomistic.data`'s docstring.
"""

from __future__ import annotations

import glob
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ase.io
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.data import chemical_symbols
from ase.neighborlist import neighbor_list

from atomistic.storage import content_hash, file_sha256

__all__ = [
    "FORMAT_VERSION",
    "MIN_DISTANCE",
    "STORED_ARRAYS",
    "DataError",
    "Dataset",
    "expand_paths",
    "file_format",
    "load_files",
    "read_structures",
]

FORMAT_VERSION = 1
MIN_DISTANCE = 0.1  # Å; closer atoms are an input error
STORED_ARRAYS = ("numbers", "positions", "cell", "pbc", "offsets", "energy", "forces")


class DataError(ValueError):
    """Bad input; the message names the file and, where there is one, the structure index."""


@dataclass(frozen=True, eq=False)
class Dataset:
    """Structures as flat arrays.

    numbers (n_atoms,) int64; positions (n_atoms, 3) float64, Å; cell (n_structures, 3, 3)
    float64, Å; pbc (n_structures, 3) bool; offsets (n_structures + 1,) int64;
    energy (n_structures,) float64 eV or None; forces (n_atoms, 3) float64 eV/Å or None.
    ``sources`` lists the files read, each {"path", "sha256", "structures"} (not part of the key).
    """

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    offsets: np.ndarray
    energy: np.ndarray | None = None
    forces: np.ndarray | None = None
    sources: tuple[dict[str, Any], ...] = field(default=())

    @property
    def n_structures(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)

    @property
    def elements(self) -> tuple[str, ...]:
        """Chemical symbols present, ordered by atomic number."""
        return tuple(chemical_symbols[z] for z in np.unique(self.numbers))

    @property
    def atoms_per_structure(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def batch(self) -> np.ndarray:
        """Structure index of every atom, (n_atoms,) int64."""
        return np.repeat(np.arange(self.n_structures), self.atoms_per_structure)

    @property
    def key(self) -> str:
        cached = self.__dict__.get("_key")
        if cached is None:
            cached = content_hash(
                "atompipe-dataset",
                FORMAT_VERSION,
                *(getattr(self, name) for name in STORED_ARRAYS),
            )
            object.__setattr__(self, "_key", cached)
        return cached

    def __len__(self) -> int:
        return self.n_structures

    # -- conversions ---------------------------------------------------------------------
    @classmethod
    def from_atoms(
        cls, images: Sequence[Atoms], *, source: str = "<atoms>", require_energy: bool = False
    ) -> Dataset:
        """Validate and pack ASE structures (labels from their calculators, if any)."""
        return _pack([(source, i, a) for i, a in enumerate(images)], require_energy)

    def atoms(self, s: int) -> Atoms:
        """Structure ``s`` as ase.Atoms with its labels in a SinglePointCalculator."""
        lo, hi = self.offsets[s], self.offsets[s + 1]
        atoms = Atoms(
            numbers=self.numbers[lo:hi],
            positions=self.positions[lo:hi],
            cell=self.cell[s],
            pbc=self.pbc[s],
        )
        results: dict[str, Any] = {}
        if self.energy is not None:
            results["energy"] = float(self.energy[s])
        if self.forces is not None:
            results["forces"] = self.forces[lo:hi].copy()
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms

    def to_atoms(self) -> list[Atoms]:
        return [self.atoms(s) for s in range(self.n_structures)]

    def subset(self, indices: Iterable[int]) -> Dataset:
        """The structures ``indices``, in that order."""
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_structures):
            raise IndexError(f"structure index out of range 0..{self.n_structures - 1}")
        counts = self.atoms_per_structure[idx]
        rows = (
            np.concatenate([np.arange(self.offsets[s], self.offsets[s + 1]) for s in idx])
            if idx.size
            else np.zeros(0, dtype=np.int64)
        )
        return Dataset(
            numbers=self.numbers[rows],
            positions=self.positions[rows],
            cell=self.cell[idx],
            pbc=self.pbc[idx],
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            energy=None if self.energy is None else self.energy[idx],
            forces=None if self.forces is None else self.forces[rows],
            sources=self.sources,
        )

    def structure_groups(self) -> np.ndarray:
        """(n_structures,) int64: the index of the first structure with the same atoms (numbers,
        positions, cell, periodicity, bit for bit); a structure's own index when it is unique.
        Copies share a group, and :func:`make_split` keeps a group within one split."""
        first: dict[str, int] = {}
        groups = np.empty(self.n_structures, dtype=np.int64)
        for s in range(self.n_structures):
            lo, hi = self.offsets[s], self.offsets[s + 1]
            h = content_hash(self.numbers[lo:hi], self.positions[lo:hi], self.cell[s], self.pbc[s])
            groups[s] = first.setdefault(h, s)
        return groups

    def summary(self) -> dict[str, Any]:
        """Counts and label statistics, JSON-able."""
        n = self.atoms_per_structure
        out: dict[str, Any] = {
            "key": self.key,
            "structures": self.n_structures,
            "duplicates": int(self.n_structures - len(np.unique(self.structure_groups()))),
            "atoms": self.n_atoms,
            "atoms_per_structure": [int(n.min()), int(n.max())] if n.size else [0, 0],
            "elements": list(self.elements),
            "periodic": int(self.pbc.any(axis=1).sum()),
        }
        if self.energy is not None:
            e = self.energy / n
            out["energy_per_atom_eV"] = {
                "min": float(e.min()),
                "max": float(e.max()),
                "mean": float(e.mean()),
                "std": float(e.std()),
            }
        if self.forces is not None:
            f = np.abs(self.forces)
            out["force_component_eV_per_A"] = {
                "mean_abs": float(f.mean()),
                "max_abs": float(f.max()),
            }
        return out


# -- reading files ---------------------------------------------------------------------------
def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
            if not found:
                raise DataError(f"{p}: folder holds no files")
            files.extend(found)
        elif p.exists():
            files.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            matches = [m for m in matches if m.is_file()]
            if not matches:
                raise DataError(f"{p}: no such file, folder or matching glob")
            files.extend(matches)
    return files


def file_format(path: str | Path, format: str | None = None) -> str:
    """The ASE format a file is read as: ``format`` when given, else what ASE infers from the
    name and the first bytes (the same inference :func:`read_structures` relies on). Part of
    the ingest cache key: the same bytes named ``.traj`` and ``.extxyz`` read differently."""
    if format:
        return format
    from ase.io.formats import filetype

    try:
        return str(filetype(str(path), read=True))
    except Exception:  # unknown or unreadable: the read itself will name the problem
        return "unknown:" + Path(path).suffix.lower()


def read_structures(path: str | Path, format: str | None = None) -> list[Atoms]:
    """All structures of one ASE-readable file; errors name the file."""
    path = Path(path)
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    try:
        images = ase.io.read(path, index=":", format=format)
    except (KeyError, ValueError) as exc:
        msg = str(exc).strip("'\"")
        if isinstance(exc, KeyError) and msg and msg[0].isalpha() and len(msg) <= 3:
            raise DataError(f"{path}: unknown chemical symbol {msg!r}") from exc
        raise DataError(f"{path}: cannot read as a structure file ({exc})") from exc
    except Exception as exc:  # ase raises many types for unknown formats
        raise DataError(
            f"{path}: cannot read as a structure file ({type(exc).__name__}: {exc})"
        ) from exc
    if isinstance(images, Atoms):
        images = [images]
    if not images:
        raise DataError(f"{path}: no structures in file")
    return list(images)


def load_files(
    paths: Iterable[str | Path],
    *,
    require_energy: bool = True,
    format: str | None = None,
    energy_key: str = "energy",
    forces_key: str = "forces",
) -> Dataset:
    """Read and validate files, globs or folders into one Dataset (structures in file order).

    ``require_energy=False`` accepts unlabelled structures (prediction-only sets).
    ``energy_key`` and ``forces_key`` name the labels: a calculator result or an ``info`` entry
    (energy), a calculator result or a per-atom array (forces), e.g. ``forces_key="force"``.
    """
    records: list[tuple[str, int, Atoms]] = []
    sources = []
    for path in expand_paths(paths):
        images = read_structures(path, format=format)
        records.extend((str(path), i, a) for i, a in enumerate(images))
        sources.append({"path": str(path), "sha256": file_sha256(path), "structures": len(images)})
    if not records:
        raise DataError("no structures given")
    ds = _pack(records, require_energy, energy_key, forces_key)
    return Dataset(**{**ds.__dict__, "sources": tuple(sources)})


def _labels(
    atoms: Atoms, energy_key: str = "energy", forces_key: str = "forces"
) -> tuple[Any, Any]:
    results = atoms.calc.results if atoms.calc is not None else {}
    energy = results.get(energy_key, atoms.info.get(energy_key))
    forces = results.get(forces_key, atoms.arrays.get(forces_key))
    return energy, forces


def _number(where: str, label: str, value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DataError(f"{where}: {label} {value!r} is not a number") from None
    if not math.isfinite(number):
        raise DataError(f"{where}: {label} is NaN or inf")
    return number


def _validate(where: str, atoms: Atoms, energy: Any, forces: Any) -> None:
    numbers = atoms.numbers
    if len(numbers) == 0:
        raise DataError(f"{where}: structure has no atoms")
    bad = [int(z) for z in numbers if z <= 0 or z >= len(chemical_symbols)]
    if bad:
        raise DataError(f"{where}: unknown chemical element (atomic number {bad[0]})")
    if not np.isfinite(atoms.positions).all():
        raise DataError(f"{where}: positions contain NaN or inf")
    cell = atoms.cell.array
    if not np.isfinite(cell).all():
        raise DataError(f"{where}: cell contains NaN or inf")
    for axis in range(3):
        if atoms.pbc[axis] and np.linalg.norm(cell[axis]) == 0.0:
            raise DataError(
                f"{where}: pbc is True along axis {axis} but cell vector {axis} is zero"
            )
    periodic = cell[atoms.pbc]
    if len(periodic) and np.linalg.matrix_rank(periodic, tol=1e-6) < len(periodic):
        raise DataError(
            f"{where}: the periodic cell has zero volume (cell vectors "
            f"{np.flatnonzero(atoms.pbc).tolist()} are linearly dependent)"
        )
    if energy is not None:
        _number(where, "energy", energy)
    if forces is not None:
        try:
            forces = np.asarray(forces, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{where}: forces are not numbers") from None
        if forces.shape != (len(atoms), 3):
            raise DataError(
                f"{where}: forces have shape {forces.shape}, expected ({len(atoms)}, 3)"
            )
        if not np.isfinite(forces).all():
            raise DataError(f"{where}: forces contain NaN or inf")
    if len(atoms) > 1 or atoms.pbc.any():
        i, j, d = neighbor_list("ijd", atoms, MIN_DISTANCE, self_interaction=False)
        if len(d):
            k = int(np.argmin(d))
            raise DataError(
                f"{where}: atoms {i[k]} and {j[k]} are {d[k]:.3g} Å apart "
                f"(closer than {MIN_DISTANCE} Å)"
            )


def _pack(
    records: Sequence[tuple[str, int, Atoms]],
    require_energy: bool,
    energy_key: str = "energy",
    forces_key: str = "forces",
) -> Dataset:
    if not records:
        raise DataError("no structures given")
    energies, forces_list = [], []
    for source, index, atoms in records:
        where = f"{source}, structure {index}"
        e, f = _labels(atoms, energy_key, forces_key)
        _validate(where, atoms, e, f)
        if e is None and require_energy:
            raise DataError(f"{where}: no energy label (training needs energies)")
        energies.append(e)
        forces_list.append(f)
    have_e = [e is not None for e in energies]
    if any(have_e) and not all(have_e):
        s, i, _ = records[have_e.index(False)]
        raise DataError(f"{s}, structure {i}: no energy label while other structures have one")
    have_f = [f is not None for f in forces_list]
    if any(have_f) and not all(have_f):
        s, i, _ = records[have_f.index(False)]
        raise DataError(f"{s}, structure {i}: no forces while other structures have them")
    counts = [len(a) for _, _, a in records]
    return Dataset(
        numbers=np.concatenate([a.numbers for _, _, a in records]).astype(np.int64),
        positions=np.concatenate([a.positions for _, _, a in records]).astype(np.float64),
        cell=np.stack([a.cell.array for _, _, a in records]).astype(np.float64),
        pbc=np.stack([a.pbc for _, _, a in records]).astype(bool),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        energy=np.asarray(energies, dtype=np.float64) if all(have_e) else None,
        forces=np.concatenate(forces_list).astype(np.float64) if all(have_f) else None,
    )
