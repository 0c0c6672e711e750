"""Structures for featurizer tests, built with ase.build."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule


@pytest.fixture(scope="session")
def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    return atoms


@pytest.fixture(scope="session")
def acetamide() -> Atoms:
    """H, C, N, O in one molecule (for the ANI-1x AEV)."""
    atoms = molecule("CH3CONH2")
    atoms.rattle(0.05, seed=2)
    return atoms


@pytest.fixture(scope="session")
def cu_bulk() -> Atoms:
    """Rattled periodic fcc Cu, 108 atoms."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.08, seed=3)
    return atoms


@pytest.fixture(scope="session")
def triclinic() -> Atoms:
    """A two-atom triclinic cell much smaller than the cutoff (images of i itself count)."""
    cell = np.array([[2.6, 0.0, 0.0], [0.9, 2.4, 0.0], [0.4, 0.7, 2.7]])
    return Atoms(
        "CuCu", scaled_positions=[[0.0, 0.0, 0.0], [0.47, 0.52, 0.55]], cell=cell, pbc=True
    )


@pytest.fixture(scope="session")
def slab() -> Atoms:
    """fcc(111) Cu slab, periodic in x, y only."""
    atoms = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
    atoms.rattle(0.05, seed=4)
    assert tuple(atoms.pbc) == (True, True, False)
    return atoms


@pytest.fixture(scope="session")
def structures(ethanol, cu_bulk, triclinic, slab) -> dict[str, Atoms]:
    return {"ethanol": ethanol, "cu_bulk": cu_bulk, "triclinic": triclinic, "slab": slab}


def run_forward(f, atoms, dtype=torch.float64, positions=None, cell=None):
    """Features of one structure via ``f.forward``; positions/cell tensors may require grad."""
    if positions is None:
        positions = torch.tensor(atoms.positions, dtype=dtype)
    if cell is None:
        cell = torch.tensor(atoms.cell.array, dtype=dtype)
    offsets = np.array([0, len(atoms)])
    nl = f.neighbors(
        atoms.numbers, atoms.positions, atoms.cell.array[None], atoms.pbc[None], offsets
    )
    return f(
        torch.tensor(atoms.numbers),
        positions,
        cell[None],
        torch.zeros(len(atoms), dtype=torch.long),
        nl,
    )


@pytest.fixture(scope="session")
def forward():
    return run_forward
