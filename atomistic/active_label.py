"""Active learning, labelling (:mod:`atomistic.active`, step 3; docs/active-learning.md).

:func:`reference_calculator` makes a reference calculator (EMT, GFN2-xTB through tblite, or an
allow-listed ASE calculator); :func:`label_structures` labels structures with it, and a
:class:`LabelStore` keyed by :func:`structure_key` makes sure no structure is ever labelled
twice.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator

from atomistic.storage import content_hash

__all__ = [
    "BUILTIN_CALCULATORS",
    "LabelStore",
    "label_structures",
    "reference_calculator",
    "structure_key",
]


# -- identity ------------------------------------------------------------------------------------
def structure_key(atoms: Atoms) -> str:
    """Content key of a structure: numbers, positions, cell and periodicity, bit for bit (the same
    identity as :meth:`atomistic.data.Dataset.structure_groups`)."""
    return content_hash(
        np.asarray(atoms.numbers, dtype=np.int64),
        np.asarray(atoms.positions, dtype=np.float64),
        np.asarray(atoms.cell.array, dtype=np.float64),
        np.asarray(atoms.pbc, dtype=bool),
    )


# -- labelling -------------------------------------------------------------------------------------
BUILTIN_CALCULATORS = ("emt", "tblite")


def reference_calculator(
    name: str, params: Mapping[str, Any] | None = None, allowed: Iterable[str] = ()
) -> Calculator:
    """A new reference calculator.

    ``name``: "emt" (ASE's EMT), "tblite" (GFN2-xTB by default, ``tblite.ase.TBLite``; the
    optional extra ``pip install tblite``), or an import path "package.module:Class" (or
    "package.module.Class") that must appear in ``allowed``: a campaign file names the
    calculators it trusts, and nothing else is imported. ``params`` are the constructor's
    keyword arguments.
    """
    params = dict(params or {})
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT(**params)
    if name == "tblite":
        try:
            from tblite.ase import TBLite
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise ImportError(
                "the reference calculator 'tblite' needs the tblite package (pip install tblite)"
            ) from exc
        return TBLite(**{"method": "GFN2-xTB", "verbosity": 0, **params})
    if name not in set(allowed):
        raise ValueError(
            f"reference calculator {name!r} is neither built in {BUILTIN_CALCULATORS} nor in "
            f"the campaign's allow-list {sorted(allowed)}"
        )
    module, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not module or not attr:
        raise ValueError(f"reference calculator {name!r} is not an import path module:Class")
    klass = getattr(importlib.import_module(module), attr)
    if not (isinstance(klass, type) and issubclass(klass, Calculator)):
        raise ValueError(f"{name!r} is not an ASE Calculator class")
    return klass(**params)


class LabelStore:
    """Reference labels on disk, one file per structure, named by :func:`structure_key`:
    ``<directory>/<key>.npz`` holding energy () eV and forces (n_atoms, 3) eV/Å. A label is
    written to a temporary file and renamed into place, so a killed labelling leaves complete
    labels only, and a rerun computes just the missing ones."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def get(self, key: str) -> tuple[float, np.ndarray]:
        with np.load(self._path(key)) as f:
            return float(f["energy"]), np.array(f["forces"], dtype=np.float64)

    def put(self, key: str, energy: float, forces: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, energy=np.float64(energy), forces=np.asarray(forces, np.float64))
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.npz") if not p.name.startswith("."))


def _compute_label(atoms: Atoms, calculator: Calculator) -> tuple[float, np.ndarray]:
    a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    a.calc = calculator
    return float(a.get_potential_energy()), np.array(a.get_forces(), dtype=np.float64)


def label_structures(
    images: Sequence[Atoms],
    make_calculator: Callable[[], Calculator],
    store: LabelStore | None = None,
    failed: list[tuple[int, str]] | None = None,
) -> tuple[list[Atoms], int]:
    """Label ``images`` with a calculator from ``make_calculator()`` (made only if needed).

    Returns (copies of the images with a SinglePointCalculator holding energy and forces, the
    number of structures actually computed). With a ``store``, a structure already in it is read,
    never recomputed, and each new label is stored as soon as it is computed; a structure repeated
    within ``images`` is computed once. A reference calculation that fails raises, unless a
    ``failed`` list is given: then (index, message) is appended to it and the structure is left
    out of the result (an SCF that does not converge on a configuration far from equilibrium).
    """
    calc: Calculator | None = None
    memo: dict[str, tuple[float, np.ndarray]] = {}
    out: list[Atoms] = []
    computed = 0
    for index, atoms in enumerate(images):
        key = structure_key(atoms)
        if key in memo:
            energy, forces = memo[key]
        elif store is not None and key in store:
            energy, forces = store.get(key)
        else:
            calc = calc or make_calculator()
            try:
                energy, forces = _compute_label(atoms, calc)
            except Exception as exc:
                if failed is None:
                    raise
                failed.append((index, f"{type(exc).__name__}: {exc}"))
                calc = None  # a fresh calculator for the next structure
                continue
            computed += 1
            if store is not None:
                store.put(key, energy, forces)
        memo[key] = (energy, forces)
        a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        a.info.update(atoms.info)
        a.calc = SinglePointCalculator(a, energy=energy, forces=forces.copy())
        out.append(a)
    return out, computed
