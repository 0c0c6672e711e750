"""Neighbour lists against ase.neighborlist.primitive_neighbor_list."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import primitive_neighbor_list as ase_nl

from atomistic.neighbors import batch_neighbor_list, neighbor_list, primitive_neighbor_list


def _structures():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    cu.rattle(0.05, seed=0)
    tri = Atoms(
        "Cu2",
        scaled_positions=[[0, 0, 0], [0.4, 0.5, 0.6]],
        pbc=True,
        cell=[[2.6, 0, 0], [0.9, 2.4, 0], [0.4, 0.7, 2.7]],
    )
    mol = molecule("CH3CH2OH")  # zero cell, no pbc
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    return {"cu": cu, "triclinic": tri, "molecule": mol, "slab": slab}


def _as_set(i, j, s):
    return {(int(a), int(b), *map(int, c)) for a, b, c in zip(i, j, s, strict=True)}


@pytest.mark.parametrize("name", ["cu", "triclinic", "molecule", "slab"])
@pytest.mark.parametrize("cutoff", [3.0, 6.5])
def test_same_pairs_as_ase(name, cutoff):
    atoms = _structures()[name]
    i, j, s = neighbor_list(atoms, cutoff)
    ref = ase_nl("ijS", atoms.pbc, atoms.cell.array, atoms.positions, cutoff)
    assert _as_set(i, j, s) == _as_set(*ref)
    assert i.dtype == np.int64 and s.shape == (len(i), 3)
    assert np.all(np.diff(i) >= 0)
    d = np.linalg.norm(atoms.positions[j] - atoms.positions[i] + s @ atoms.cell.array, axis=1)
    assert d.max() <= cutoff and d.min() > 0


def test_images_of_self_in_small_cell():
    atoms = Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * 2.5, pbc=True)
    i, j, s = neighbor_list(atoms, 3.6)
    assert len(i) == 6 + 12 and set(j) == {0}  # 6 faces at 2.5, 12 edges at 3.54


def test_batch_offsets():
    s = _structures()
    images = [s["cu"], s["molecule"], s["triclinic"]]
    offsets = np.cumsum([0] + [len(a) for a in images])
    nl = batch_neighbor_list(
        np.concatenate([a.positions for a in images]),
        np.stack([a.cell.array for a in images]),
        np.stack([a.pbc for a in images]),
        offsets,
        4.0,
    )
    for k, atoms in enumerate(images):
        sel = (nl.i >= offsets[k]) & (nl.i < offsets[k + 1])
        assert np.all((nl.j[sel] >= offsets[k]) & (nl.j[sel] < offsets[k + 1]))
        ref = primitive_neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)
        got = (nl.i[sel] - offsets[k], nl.j[sel] - offsets[k], nl.shifts[sel])
        assert _as_set(*got) == _as_set(*ref)
    t = nl.to_torch()
    assert t.i.dtype.is_floating_point is False and len(t) == len(nl)


def test_periodic_zero_cell_is_an_error():
    with pytest.raises(ValueError, match="non-zero cell"):
        primitive_neighbor_list(np.zeros((2, 3)), np.zeros((3, 3)), True, 3.0)


@pytest.mark.parametrize("name", ["cu", "triclinic", "cu108 shifted"])
@pytest.mark.parametrize("cutoff", [3.0, 6.5])
def test_small_cell_search_same_pairs_as_ase(name, cutoff):
    """The image-by-image search of small periodic cells (atomistic.cell_search), which
    batch_neighbor_list uses for cells narrower than two cutoffs, against ASE; positions outside
    the cell (the search wraps them and corrects the shifts)."""
    from atomistic.cell_search import periodic_pairs
    from atomistic.neighbors import _one_box

    if name == "cu108 shifted":
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
        atoms.rattle(0.05, seed=5)
        atoms.positions += [7.3, -12.1, 25.0]
    else:
        atoms = _structures()[name].copy()
        atoms.positions -= [3.1, 0.4, -5.2]
    i, j, s = periodic_pairs(atoms.positions, atoms.cell.array, cutoff)
    ref = ase_nl("ijS", atoms.pbc, atoms.cell.array, atoms.positions, cutoff)
    assert len(i) == len(ref[0]) > 0
    assert _as_set(i, j, s) == _as_set(*ref)
    assert np.all(np.diff(i) >= 0) and s.dtype == i.dtype == np.int64
    # cubic cells of 7.2 and 10.8 Å are narrower than 2 x 6.5 Å, not than 2 x 3 Å
    assert _one_box(atoms.cell.array, atoms.pbc, cutoff) == (name == "triclinic" or cutoff > 5)
