"""Physics of the features: invariances, smoothness at the cutoff, exact gradients, dtypes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from atomistic.features import AEV, Gaussian


def featurizers():
    return {
        "G3": Gaussian(
            cutoff=5.0,
            angular_type="G3",
            custom={"G3": {"etas": [0.005, 2.0], "zetas": [1, 4], "gammas": [1, -1]}},
        ),
        "G4": Gaussian(
            cutoff={"radial": 5.0, "angular": 4.0},
            angular_type="G4",
            custom={"G2": {"etas": [0.5, 3.0], "Rs": [0.0, 1.5]}},
        ),
        "AEV": AEV(Rcr=5.0, Rca=3.8),
    }


@pytest.fixture(params=["G3", "G4", "AEV"])
def featurizer(request):
    return featurizers()[request.param]


def _features(f, atoms):
    return f.featurize(atoms)[0]


@pytest.mark.parametrize("name", ["ethanol", "slab", "triclinic"])
def test_rotation_translation_invariance(featurizer, structures, name):
    atoms = structures[name]
    f = featurizer.fit_elements(atoms)
    x = _features(f, atoms)
    moved = atoms.copy()
    axis = (0, 0, 1) if name == "slab" else (1.0, 2.0, -0.5)  # a slab stays a slab about z
    moved.rotate(37.0, axis, rotate_cell=True)
    moved.translate((0.3, -1.1, 2.2))
    assert np.abs(_features(f, moved) - x).max() < 1e-10


@pytest.mark.parametrize("name", ["ethanol", "cu_bulk"])
def test_permutation_of_like_atoms(featurizer, structures, name):
    atoms = structures[name]
    f = featurizer.fit_elements(atoms)
    x = _features(f, atoms)
    rng = np.random.default_rng(0)
    perm = np.arange(len(atoms))
    for z in set(atoms.numbers):  # shuffle within each element
        idx = np.flatnonzero(atoms.numbers == z)
        perm[idx] = rng.permutation(idx)
    assert np.abs(_features(f, atoms[perm]) - x[perm]).max() < 1e-10


@pytest.mark.parametrize("name", ["cu_bulk", "slab", "triclinic"])
def test_lattice_translation(featurizer, structures, name):
    atoms = structures[name].copy()
    f = featurizer.fit_elements(atoms)
    x = _features(f, atoms)
    atoms.positions[0] += atoms.cell[0] - 2 * atoms.cell[1]  # wrap atom 0 by lattice vectors
    assert np.abs(_features(f, atoms) - x).max() < 1e-10


@pytest.mark.parametrize("kind", ["radial", "angular"])
def test_continuous_at_cutoff(featurizer, kind):
    from ase import Atoms

    f = featurizer.fit_elements(["C"])
    rc = f.radial.cutoff if kind == "radial" else f.angular.cutoff
    values = []
    for d in (rc - 1e-3, rc - 1e-4, rc + 1e-4):
        if kind == "radial":
            atoms = Atoms("CC", positions=[[0, 0, 0], [d, 0, 0]])
            values.append(_features(f, atoms)[0])
        else:  # pair 0-2 crosses the angular cutoff, 0-1 stays inside
            t = np.radians(20.0)  # keeps R_jk inside the cutoff (G3's f_c(R_jk))
            atoms = Atoms(
                "CCC", positions=[[0, 0, 0], [1.3, 0, 0], [d * np.cos(t), d * np.sin(t), 0]]
            )
            values.append(_features(f, atoms)[0][f.radial.n_features :])
    near, nearer, beyond = (np.abs(v).max() for v in values)
    assert beyond == 0.0 if kind == "radial" else beyond < 1e-15
    # f_c ~ (pi delta / 2 R_c)^2 near R_c: quadratic approach, no jump
    assert nearer < 1e-6 and near < 1e-4 and nearer < near / 50


def _energy(forward, f, atoms, weights, positions, cell):
    return (forward(f, atoms, positions=positions, cell=cell) * weights).sum()


@pytest.mark.parametrize("name", ["ethanol", "slab", "triclinic"])
def test_forces_match_finite_differences(featurizer, structures, name, forward):
    atoms = structures[name]
    f = featurizer.fit_elements(atoms)
    weights = torch.tensor(np.random.default_rng(1).normal(size=f.n_features))
    cell = torch.tensor(atoms.cell.array)
    pos = torch.tensor(atoms.positions, requires_grad=True)
    (grad,) = torch.autograd.grad(_energy(forward, f, atoms, weights, pos, cell), pos)
    h = 1e-5
    rng = np.random.default_rng(2)
    for a in rng.choice(len(atoms), size=min(3, len(atoms)), replace=False):
        for c in range(3):
            plus, minus = pos.detach().clone(), pos.detach().clone()
            plus[a, c] += h
            minus[a, c] -= h
            up = _energy(forward, f, atoms, weights, plus, cell)
            down = _energy(forward, f, atoms, weights, minus, cell)
            fd = float(up - down) / (2 * h)
            assert abs(float(grad[a, c]) - fd) <= 1e-6 * max(1.0, abs(fd))


@pytest.mark.parametrize("name", ["slab", "triclinic"])
def test_strain_derivative_matches_finite_differences(featurizer, structures, name, forward):
    """dE/d(strain) with positions and cell strained together (the virial / stress)."""
    atoms = structures[name]
    f = featurizer.fit_elements(atoms)
    weights = torch.tensor(np.random.default_rng(3).normal(size=f.n_features))
    pos0, cell0 = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)

    def energy(eps):
        deform = torch.eye(3, dtype=torch.float64) + eps
        return _energy(forward, f, atoms, weights, pos0 @ deform, cell0 @ deform)

    eps = torch.zeros(3, 3, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(energy(eps), eps)
    h = 1e-6
    for a, b in [(0, 0), (1, 1), (0, 1), (2, 0), (1, 2)]:
        d = torch.zeros(3, 3, dtype=torch.float64)
        d[a, b] = h
        fd = float(energy(d) - energy(-d)) / (2 * h)
        assert abs(float(grad[a, b]) - fd) <= 1e-6 * max(1.0, abs(fd))


def test_cell_gradient_is_nonzero_for_periodic(structures, forward):
    atoms = structures["triclinic"]
    f = Gaussian(elements=["Cu"])
    cell = torch.tensor(atoms.cell.array, requires_grad=True)
    forward(f, atoms, cell=cell).sum().backward()
    assert cell.grad.abs().max() > 1e-3


@pytest.mark.parametrize("name", ["ethanol", "cu_bulk"])
def test_float32_agrees_with_float64(featurizer, structures, name, forward):
    atoms = structures[name]
    f = featurizer.fit_elements(atoms)
    x64 = forward(f, atoms, dtype=torch.float64).detach()
    x32 = forward(f, atoms, dtype=torch.float32).detach()
    assert x32.dtype == torch.float32
    scale = x64.abs().amax(dim=0).clamp_min(1.0)
    assert ((x32.double() - x64).abs() / scale).max() < 1e-4
