"""The fused CPU kernels (atomistic.features.fused) against the torch forward pass.

The DScribe and TorchANI comparisons (test_references*.py) check both paths against the
references; here every branch of the kernels (radial; Behler triplets with and without the R_jk
factor; per-atom moments; ANI triplets; several elements; wACSF) is checked against
``Featurizer.forward`` on batches of several structures, and a featurizer the kernels do not cover
must take the torch path.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from atomistic.features import AEV, Gaussian, fused
from atomistic.features.aev import ANI1X
from atomistic.features.cutoff import CosineCutoff
from atomistic.features.terms import BehlerRadial


def _frames():
    """Two molecules of different sizes and two periodic cells (one dense)."""
    ethanol, acetamide = molecule("CH3CH2OH"), molecule("CH3CONH2")
    cu = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    small = bulk("Cu", "fcc", a=3.61).repeat((2, 1, 1))
    for k, atoms in enumerate((ethanol, acetamide, cu, small)):
        atoms.rattle(0.05, seed=10 + k)
    return {"molecules": [ethanol, acetamide], "cu": [cu, small]}


def _arrays(frames):
    sizes = np.array([len(a) for a in frames])
    return (
        np.concatenate([a.numbers for a in frames]),
        np.concatenate([a.positions for a in frames]),
        np.stack([a.cell.array for a in frames]),
        np.stack([a.pbc for a in frames]),
        np.concatenate([[0], np.cumsum(sizes)]),
    )


def _torch_forward(f, args):
    numbers, positions, cells, pbcs, offsets = args
    nl = f.neighbors(*args)
    batch = torch.from_numpy(np.repeat(np.arange(len(cells)), np.diff(offsets)))
    with torch.no_grad():
        x = f(
            torch.from_numpy(numbers),
            torch.from_numpy(positions),
            torch.from_numpy(cells),
            batch,
            nl,
        )
    return x.numpy()


ANG = {"etas": [0.05, 1.5], "zetas": [1, 2, 8], "gammas": [1.0, -1.0]}
G2 = {"etas": [0.3, 4.0], "Rs": [0.0, 1.2]}
FEATURIZERS = {
    "G3": lambda: Gaussian(cutoff=5.0, angular_type="G3", custom={"G2": G2, "G3": ANG}),
    "G4": lambda: Gaussian(cutoff=5.0, angular_type="G4", custom={"G2": G2, "G4": ANG}),
    "G3 wACSF": lambda: Gaussian(cutoff=5.0, custom={"G2": G2, "G3": ANG}, weighted=True),
    "G4 wACSF": lambda: Gaussian(cutoff=5.0, angular_type="G4", weighted=True),
    "G4 unnormalized": lambda: Gaussian(cutoff=6.0, angular_type="G4", normalized=False),
    "cutoffs": lambda: Gaussian(cutoff={"radial": 6.0, "angular": 4.0}),
    "dense": lambda: Gaussian.dense(cutoff=5.0),
    "AEV": lambda: AEV(**ANI1X),
    "AEV zeta 14.1": lambda: AEV(Rca=4.0, Zeta=14.1),
}


@pytest.mark.parametrize("data", ["molecules", "cu"])
@pytest.mark.parametrize("name", list(FEATURIZERS))
def test_fused_equals_torch_forward(name, data):
    frames = _frames()[data]
    f = FEATURIZERS[name]()
    args = _arrays(frames)
    f.fit_elements(args[0])
    assert fused.supports(f)
    ours = f.featurize_arrays(*args)
    ref = _torch_forward(f, args)
    assert ours.shape == ref.shape == (len(args[0]), f.n_features)
    assert np.abs(ref).max() > 1.0  # the comparison is not between zeros
    assert np.abs(ours - ref).max() <= 1e-12 * np.abs(ref).max()


def test_moments_and_triplets_agree():
    """G4 by per-atom moments (dense Cu) and by explicit triplets give the same columns."""
    frames = _frames()["cu"][:1]
    args = _arrays(frames)
    f = Gaussian(cutoff=6.5, angular_type="G4", custom={"G4": ANG}, elements=["Cu"])
    by_moments = f.featurize_arrays(*args)  # ~90 neighbours: moments
    f.angular.separable = False  # the kernels' explicit triplets instead
    by_triplets = f.featurize_arrays(*args)
    assert np.abs(by_moments - by_triplets).max() <= 1e-12 * np.abs(by_triplets).max()


def test_unsupported_terms_take_the_torch_path(monkeypatch):
    """A subclassed term, another cutoff, or a non-integer zeta: not fused, same columns."""

    class Shifted(BehlerRadial):
        pass

    class Hard(CosineCutoff):
        pass

    frames = _frames()["molecules"]
    args = _arrays(frames)
    a = Gaussian(cutoff=5.0, custom={"G3": {"zetas": [1.5]}}, elements=["H", "C", "N", "O"])
    b = Gaussian(cutoff=5.0, elements=["H", "C", "N", "O"])
    b.radial = Shifted(5.0, [0.3], [0.0])
    c = Gaussian(cutoff=5.0, elements=["H", "C", "N", "O"])
    c.angular.cutoff_fn = Hard(5.0)
    called = []
    monkeypatch.setattr(fused, "features", lambda *x: called.append(x))
    for f in (a, b, c):
        assert not fused.supports(f)
        assert np.abs(f.featurize_arrays(*args) - _torch_forward(f, args)).max() == 0.0
    assert not called
