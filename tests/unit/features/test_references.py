"""Values against independent implementations: DScribe 2.1 ACSF and TorchANI 2.9 AEVComputer.

Mappings are docs/features.md's: our G2(eta, Rs) = DScribe g2 [eta / Rc^2, Rs], our G3 = DScribe g4,
our G4 = DScribe g5 (normalized=True); DScribe per species [G1, g2...], then per species pair
a >= b (index a(a+1)/2 + b) [g4..., g5...].
"""

from __future__ import annotations

from itertools import product

import numpy as np
import pytest
import torch

from atomistic.features import AEV, Gaussian

dscribe = pytest.importorskip("dscribe.descriptors")
torchani = pytest.importorskip("torchani")

TOL = 1e-10


def dscribe_in_our_order(atoms, elements, rc, g2, ang, angular_type, periodic):
    """DScribe ACSF rearranged to our column order (G1 columns dropped)."""
    etas2 = [[e / rc**2, r] for e, r in product(g2["etas"], g2["Rs"])]
    etas_a = [[e / rc**2, z, g] for e, z, g in product(ang["etas"], ang["zetas"], ang["gammas"])]
    key = "g4_params" if angular_type == "G3" else "g5_params"
    acsf = dscribe.ACSF(
        r_cut=rc, species=list(elements), periodic=periodic, g2_params=etas2, **{key: etas_a}
    )
    y = acsf.create(atoms)
    n, n2, na = len(elements), len(etas2), len(etas_a)
    radial = [y[:, s * (1 + n2) + 1 : (s + 1) * (1 + n2)] for s in range(n)]
    start = n * (1 + n2)
    angular = []
    for a in range(n):
        for b in range(a, n):
            k = b * (b + 1) // 2 + a
            angular.append(y[:, start + k * na : start + (k + 1) * na])
    return np.concatenate(radial + angular, axis=1)


CASES = {
    "default": (
        {"etas": list(np.logspace(np.log10(0.05), np.log10(5.0), 4)), "Rs": [0.0]},
        {"etas": [0.005], "zetas": [1, 4], "gammas": [1.0, -1.0]},
    ),
    "custom": (
        {"etas": [0.3, 4.0], "Rs": [0.0, 1.2, 2.5]},
        {"etas": [0.05, 1.5], "zetas": [1, 2, 8], "gammas": [1.0, -1.0]},
    ),
}


@pytest.mark.parametrize("path", ["fused", "torch"])
@pytest.mark.parametrize("angular_type", ["G3", "G4"])
@pytest.mark.parametrize("case", ["default", "custom"])
@pytest.mark.parametrize("name", ["ethanol", "cu_bulk", "triclinic", "slab"])
def test_gaussian_equals_dscribe(structures, forward, name, case, angular_type, path):
    """Both code paths: the fused CPU kernels (featurize) and the torch forward (gradients)."""
    atoms = structures[name]
    elements = sorted(
        set(atoms.get_chemical_symbols()),
        key=lambda s: atoms.numbers[atoms.get_chemical_symbols().index(s)],
    )
    g2, ang = CASES[case]
    rc = 6.5 if case == "default" else 5.0
    f = Gaussian(
        cutoff=rc,
        angular_type=angular_type,
        elements=elements,
        custom={"G2": g2, angular_type: ang},
    )
    if path == "fused":
        ours = f.featurize(atoms)[0]
    else:
        with torch.no_grad():
            ours = forward(f, atoms).numpy()
    ref = dscribe_in_our_order(
        atoms, f.elements, rc, g2, ang, angular_type, periodic=bool(atoms.pbc.any())
    )
    assert ours.shape == ref.shape == (len(atoms), f.n_features)
    assert np.abs(ours - ref).max() <= TOL


def test_gaussian_dense_preset_equals_dscribe(ethanol):
    """The dense preset as DScribe sees it: 12 shifted radial Gaussians of width d on the grid
    0.8 + k d (d = (6.5 - 0.8) / 12; DScribe's eta = 1 / (2 d^2) in Å^-2) and G3 with
    zeta 1..16, lambda +-1, eta 0.005, 0.05, 0.2 Å^-2, written here from the documented formulas."""
    rc, d = 6.5, (6.5 - 0.8) / 12
    f = Gaussian.dense(elements=["H", "C", "O"])
    assert f.n_features == 3 * 12 + 6 * 30 == 216
    g2 = {"etas": [rc**2 / (2 * d * d)], "Rs": [0.8 + k * d for k in range(12)]}
    ang = {"etas": [e * rc**2 for e in (0.005, 0.05, 0.2)], "zetas": [1, 2, 4, 8, 16]}
    ang["gammas"] = [1.0, -1.0]
    ref = dscribe_in_our_order(ethanol, f.elements, rc, g2, ang, "G3", periodic=False)
    assert np.abs(f.featurize(ethanol)[0] - ref).max() <= TOL


def _torchani_aev(computer, atoms, elements):
    species = torch.tensor([[elements.index(s) for s in atoms.get_chemical_symbols()]])
    coords = torch.tensor(atoms.positions[None], dtype=torch.float64)
    if atoms.pbc.any():
        cell = torch.tensor(atoms.cell.array, dtype=torch.float64)
        pbc = torch.tensor(atoms.pbc)
        return computer(species, coords, cell=cell, pbc=pbc)[0].numpy()
    return computer(species, coords)[0].numpy()


def _constants(computer) -> dict:
    """TorchANI stores its constants in float32; these are the values it actually uses."""
    r, a = computer.radial, computer.angular
    return dict(
        Rcr=r.cutoff,
        EtaR=r.eta.item(),
        ShfR=r.shifts.tolist(),
        Rca=a.cutoff,
        EtaA=a.eta.item(),
        Zeta=a.zeta.item(),
        ShfA=a.shifts.tolist(),
        ShfZ=a.sections.tolist(),
    )


def test_aev_like_ani1x_equals_torchani(acetamide, ethanol):
    computer = torchani.aev.AEVComputer.like_1x(num_species=4).double()
    preset = AEV.like_ani1x()
    assert preset.elements == ("H", "C", "N", "O") and preset.n_features == 384
    for key, value in _constants(computer).items():  # the same constants, to float32 precision
        assert np.allclose(preset.get_params()[key], value, rtol=1e-6, atol=0)
    f = AEV(elements=preset.elements, **_constants(computer))
    for atoms in (acetamide, ethanol):
        ours = f.featurize(atoms)[0]
        ref = _torchani_aev(computer, atoms, list(f.elements))
        assert np.abs(ours - ref).max() <= TOL


def test_aev_like_ani2x_equals_torchani(acetamide, ethanol):
    """The ANI-2x preset: TorchANI's like_2x constants (to its float32 storage) and values."""
    computer = torchani.aev.AEVComputer.like_2x(num_species=7).double()
    preset = AEV.like_ani2x()
    assert preset.elements == ("H", "C", "N", "O", "F", "S", "Cl")
    assert preset.n_features == computer.out_dim == 1008
    for key, value in _constants(computer).items():
        assert np.allclose(preset.get_params()[key], value, rtol=1e-6, atol=0), key
    f = AEV(elements=preset.elements, **_constants(computer))
    for atoms in (acetamide, ethanol):
        ours = f.featurize(atoms)[0]
        ref = _torchani_aev(computer, atoms, list(f.elements))
        assert np.abs(ours - ref).max() <= TOL


CUSTOM = dict(
    Rcr=6.0,
    EtaR=4.0,
    ShfR=[0.8, 1.7, 2.6, 3.5, 4.4, 5.3],
    Rca=4.5,
    EtaA=3.0,
    Zeta=5.5,
    ShfA=[1.0, 2.0, 3.0],
    ShfZ=[0.3, 1.1, 1.9, 2.7],
)


@pytest.mark.parametrize("name", ["cu_bulk", "triclinic", "slab", "acetamide"])
def test_aev_custom_equals_torchani(structures, acetamide, name):
    atoms = acetamide if name == "acetamide" else structures[name]
    f = AEV(elements=sorted(set(atoms.numbers)), **CUSTOM)
    terms = torchani.aev
    computer = terms.AEVComputer(
        radial=terms.ANIRadial(CUSTOM["EtaR"], CUSTOM["ShfR"], CUSTOM["Rcr"]),
        angular=terms.ANIAngular(
            CUSTOM["EtaA"], CUSTOM["Zeta"], CUSTOM["ShfA"], CUSTOM["ShfZ"], CUSTOM["Rca"]
        ),
        num_species=len(f.elements),
    ).double()
    f = AEV(elements=f.elements, **_constants(computer))
    ours = f.featurize(atoms)[0]
    ref = _torchani_aev(computer, atoms, list(f.elements))
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOL
