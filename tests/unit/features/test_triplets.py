"""Both three-body layouts (sparse triplets, padded blocks) against DScribe and TorchANI.

``Featurizer.forward`` picks the layout (sparse with gradients or ragged neighbour counts, blocks
otherwise); here each is forced in turn, with and without gradients, and compared with the
independent references, so neither layout is covered only through the other.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

import atomistic.features.base as base
from atomistic.features import AEV, Gaussian
from atomistic.features.triplets import padding_ratio

dscribe = pytest.importorskip("dscribe.descriptors")
torchani = pytest.importorskip("torchani")

RC = 5.0
G2 = {"etas": [0.3, 4.0], "Rs": [0.0, 1.2]}
G3 = {"etas": [0.05, 1.5], "zetas": [1, 2, 8], "gammas": [1.0, -1.0]}
# DScribe: [per species: G1, g2 ...], then [per pair b >= a: g4 ...]
N2, N3 = len(G2["etas"]) * len(G2["Rs"]), len(G3["etas"]) * len(G3["zetas"]) * 2


def _dscribe_g3(atoms, elements):
    acsf = dscribe.ACSF(
        r_cut=RC,
        species=list(elements),
        periodic=bool(atoms.pbc.any()),
        g2_params=[[e / RC**2, r] for e in G2["etas"] for r in G2["Rs"]],
        g4_params=[
            [e / RC**2, z, g] for e in G3["etas"] for z in G3["zetas"] for g in G3["gammas"]
        ],
    )
    y, n = acsf.create(atoms), len(elements)
    cols = [y[:, s * (1 + N2) + 1 : (s + 1) * (1 + N2)] for s in range(n)]
    start = n * (1 + N2)
    for a in range(n):
        for b in range(a, n):
            k = b * (b + 1) // 2 + a
            cols.append(y[:, start + k * N3 : start + (k + 1) * N3])
    return np.concatenate(cols, axis=1)


def _neighbors(f, atoms):
    """The featurizer's neighbour list of one structure."""
    return f.neighbors(
        atoms.numbers,
        atoms.positions,
        atoms.cell.array[None],
        atoms.pbc[None],
        np.array([0, len(atoms)]),
    )


def _features(f, atoms, grad: bool) -> np.ndarray:
    if not grad:
        return f.featurize(atoms)[0]
    positions = torch.tensor(atoms.positions, requires_grad=True)
    nl = _neighbors(f, atoms)
    x = f(
        torch.tensor(atoms.numbers),
        positions,
        torch.tensor(atoms.cell.array)[None],
        torch.zeros(len(atoms), dtype=torch.long),
        nl,
    )
    return x.detach().numpy()


@pytest.fixture(params=["sparse", "blocks"])
def layout(request, monkeypatch):
    """Force a layout for calls without gradients (with gradients it is always sparse)."""
    monkeypatch.setattr(base, "_MAX_PADDING", 0.0 if request.param == "sparse" else np.inf)
    return request.param


@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("name", ["ethanol", "cu_bulk", "slab"])
def test_g3_equals_dscribe(structures, layout, name, grad):
    atoms = structures[name]
    f = Gaussian(cutoff=RC, custom={"G2": G2, "G3": G3}).fit_elements(atoms)
    ref = _dscribe_g3(atoms, f.elements)
    assert np.abs(_features(f, atoms, grad) - ref).max() <= 1e-10


@pytest.mark.parametrize("grad", [False, True])
def test_aev_equals_torchani(acetamide, layout, grad):
    computer = torchani.aev.AEVComputer.like_1x(num_species=4).double()
    r, a = computer.radial, computer.angular  # TorchANI's float32 constants
    f = AEV(
        elements=("H", "C", "N", "O"),
        Rcr=r.cutoff,
        EtaR=r.eta.item(),
        ShfR=r.shifts.tolist(),
        Rca=a.cutoff,
        EtaA=a.eta.item(),
        Zeta=a.zeta.item(),
        ShfA=a.shifts.tolist(),
        ShfZ=a.sections.tolist(),
    )
    species = torch.tensor([[f.elements.index(s) for s in acetamide.get_chemical_symbols()]])
    ref = computer(species, torch.tensor(acetamide.positions[None]))[0].numpy()
    assert np.abs(_features(f, acetamide, grad) - ref).max() <= 1e-10


def test_layouts_agree_in_float32(cu_bulk, monkeypatch):
    f = Gaussian(cutoff=RC, custom={"G2": G2, "G3": G3}).fit_elements(cu_bulk)
    nl = _neighbors(f, cu_bulk)
    args = (
        torch.tensor(cu_bulk.numbers),
        torch.tensor(cu_bulk.positions, dtype=torch.float32),
        torch.tensor(cu_bulk.cell.array, dtype=torch.float32)[None],
        torch.zeros(len(cu_bulk), dtype=torch.long),
        nl,
    )
    out = {}
    for name, limit in (("sparse", 0.0), ("blocks", np.inf)):
        monkeypatch.setattr(base, "_MAX_PADDING", limit)
        with torch.no_grad():
            out[name] = f(*args)
        assert out[name].dtype == torch.float32
    ref = torch.from_numpy(_dscribe_g3(cu_bulk, f.elements)).float()  # independent, float64
    scale = ref.abs().max()
    for x in out.values():
        assert (x - ref).abs().max() <= 1e-5 * scale


def test_padding_ratio_closed_form():
    """fcc at a cutoff between the 1st (a/sqrt2) and 2nd (a) shells: 12 neighbours each, so the
    blocks hold 13 slots x 6 partners per centre against 12 * 11 / 2 triplets."""
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    f = Gaussian(cutoff=3.0, elements=["Cu"])
    nl = _neighbors(f, atoms)
    assert np.all(np.bincount(nl.i) == 12)
    assert padding_ratio(torch.from_numpy(nl.i), len(atoms)) == pytest.approx(13 * 6 / 66)
