"""Every evaluation path of the Gaussian featurizer against DScribe: G4 from per-atom moments
and from explicit triplets (the featurizer picks one by cost), structures of several kinds in one
batch (per-structure cell offsets), and gradients of the moment path by finite differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from test_references import CASES, TOL, dscribe_in_our_order

from atomistic.features import Gaussian, base

pytest.importorskip("dscribe.descriptors")


def _gaussian(atoms, angular_type, case="default", rc=6.5):
    g2, ang = CASES[case]
    elements = sorted(set(atoms.get_chemical_symbols()))
    return Gaussian(
        cutoff=rc,
        angular_type=angular_type,
        elements=elements,
        custom={"G2": g2, angular_type: ang},
    )


@pytest.mark.parametrize("moments", [True, False])
@pytest.mark.parametrize("case", ["default", "custom"])
@pytest.mark.parametrize("name", ["ethanol", "cu_bulk", "triclinic", "slab"])
def test_g4_moments_and_triplets_equal_dscribe(structures, name, case, moments, monkeypatch):
    monkeypatch.setattr(base, "_moments_pay", lambda *args: moments)
    atoms = structures[name]
    rc = 6.5 if case == "default" else 5.0
    f = _gaussian(atoms, "G4", case, rc)
    g2, ang = CASES[case]
    ref = dscribe_in_our_order(atoms, f.elements, rc, g2, ang, "G4", bool(atoms.pbc.any()))
    assert np.abs(f.featurize(atoms)[0] - ref).max() <= TOL


@pytest.mark.parametrize("angular_type", ["G3", "G4"])
def test_mixed_batch_equals_dscribe_structure_by_structure(structures, angular_type):
    cluster = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    cluster.pbc = False
    cluster.rattle(0.05, seed=5)
    frames = [structures["cu_bulk"], cluster, structures["slab"], structures["triclinic"]]
    f = _gaussian(frames[0], angular_type)
    g2, ang = CASES["default"]
    for atoms, ours in zip(frames, f.featurize(frames), strict=True):
        ref = dscribe_in_our_order(
            atoms, f.elements, 6.5, g2, ang, angular_type, bool(atoms.pbc.any())
        )
        assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize("name", ["slab", "triclinic"])
def test_g4_moment_gradients_match_finite_differences(structures, name, forward, monkeypatch):
    monkeypatch.setattr(base, "_moments_pay", lambda *args: True)
    atoms = structures[name]
    f = _gaussian(atoms, "G4", "custom", 5.0)
    weights = torch.tensor(np.random.default_rng(4).normal(size=f.n_features))
    cell = torch.tensor(atoms.cell.array)
    pos = torch.tensor(atoms.positions, requires_grad=True)

    def energy(p):
        return (forward(f, atoms, positions=p, cell=cell) * weights).sum()

    (grad,) = torch.autograd.grad(energy(pos), pos)
    with torch.no_grad():  # the segment-sum path (no gradients) gives the same values
        assert abs(float(energy(pos.detach())) - float(energy(pos))) <= 1e-10
    h = 1e-5
    for a in range(min(3, len(atoms))):
        for c in range(3):
            plus, minus = pos.detach().clone(), pos.detach().clone()
            plus[a, c] += h
            minus[a, c] -= h
            fd = float(energy(plus) - energy(minus)) / (2 * h)
            assert abs(float(grad[a, c]) - fd) <= 1e-6 * max(1.0, abs(fd))
