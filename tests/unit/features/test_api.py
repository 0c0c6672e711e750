"""The public contract: defaults, labels, parameters round trip, elements, batching, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule

from atomistic.features import AEV, Featurizer, Gaussian, featurizer_from_params


def test_ml4chem_defaults_closed_form():
    """8 columns for one element, checked against the formulas evaluated by hand."""
    pos = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.3, 0.9, 0.0]])
    f = Gaussian(elements=["H"])
    assert f.cutoff == 6.5 and f.n_features == 8
    x = f.featurize(Atoms("H3", positions=pos))[0]

    rc = 6.5

    def fc(r):
        return 0.5 * (1 + math.cos(math.pi * r / rc))

    etas = [0.05, 0.2320794416806389, 1.0772173450159415, 5.0]
    for i in range(3):
        j, k = [a for a in range(3) if a != i]
        rij = np.linalg.norm(pos[j] - pos[i])
        rik = np.linalg.norm(pos[k] - pos[i])
        rjk = np.linalg.norm(pos[k] - pos[j])
        g2 = [sum(math.exp(-e * r * r / rc**2) * fc(r) for r in (rij, rik)) for e in etas]
        cos = np.dot(pos[j] - pos[i], pos[k] - pos[i]) / (rij * rik)
        radial = math.exp(-0.005 * (rij**2 + rik**2 + rjk**2) / rc**2)
        radial *= fc(rij) * fc(rik) * fc(rjk)
        g3 = [2 ** (1 - z) * (1 + lam * cos) ** z * radial for z in (1, 4) for lam in (1, -1)]
        assert np.abs(x[i] - np.array(g2 + g3)).max() < 1e-12
    assert [lab["term"] for lab in f.labels] == ["G2"] * 4 + ["G3"] * 4
    assert f.labels[5] == {
        "term": "G3",
        "elements": ("H", "H"),
        "eta": 0.005,
        "zeta": 1,
        "lambda": -1.0,
    }


def test_weighted_closed_form():
    pos = np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.2, 1.3, 0.4]])
    atoms = Atoms("OHC", positions=pos)
    f = Gaussian(
        cutoff=5.0,
        angular_type="G4",
        weighted=True,
        custom={"G2": {"etas": [1.0]}, "G4": {"etas": [0.5], "zetas": [2], "gammas": [1]}},
    )
    x = f.featurize(atoms)[0]
    assert f.elements == ("H", "C", "O") and f.n_features == 2
    assert f.labels[0]["elements"] == () and f.labels[0]["weighted"]
    z = atoms.numbers

    def fc(r):
        return 0.5 * (1 + math.cos(math.pi * r / 5.0))

    for i in range(3):
        j, k = [a for a in range(3) if a != i]
        rij, rik = (np.linalg.norm(pos[a] - pos[i]) for a in (j, k))
        g2 = sum(z[a] * math.exp(-r * r / 25.0) * fc(r) for a, r in ((j, rij), (k, rik)))
        cos = np.dot(pos[j] - pos[i], pos[k] - pos[i]) / (rij * rik)
        g4 = z[j] * z[k] * 0.5 * (1 + cos) ** 2 * math.exp(-0.5 * (rij**2 + rik**2) / 25.0)
        g4 *= fc(rij) * fc(rik)
        assert np.allclose(x[i], [g2, g4], rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    "f",
    [
        Gaussian(
            cutoff={"radial": 6.0, "angular": 4.0},
            angular_type="G4",
            elements=["O", "H", "C"],
            custom={"G4": {"etas": [0.1], "zetas": [1.5], "lambdas": [1]}},
        ),
        Gaussian(normalized=False, weighted=True, elements=[8, 1, 6]),
        AEV.like_ani1x(),
        AEV(elements=["Cu"], Rcr=6.0, ShfR=[1.0, 2.0], Zeta=4.0),
    ],
)
def test_params_round_trip(f, ethanol):
    params = json.loads(json.dumps(f.get_params()))
    g = featurizer_from_params(f.name, params)
    h = type(f)(**f.get_params())
    assert isinstance(g, Featurizer) and g.get_params() == f.get_params() == h.get_params()
    assert g.labels == f.labels and len(f.labels) == f.n_features
    assert f.cutoff == max(f.radial.cutoff, f.angular.cutoff)
    atoms = ethanol if f.elements != ("Cu",) else Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])
    assert np.array_equal(g.featurize(atoms)[0], f.featurize(atoms)[0])


def test_names_and_sizes():
    assert Gaussian().name == "gaussian" and AEV().name == "aev"
    assert AEV.like_ani1x().n_features == 384
    f = Gaussian(elements=["H", "C", "O"])
    assert f.elements == ("H", "C", "O") and f.n_features == 3 * 4 + 6 * 4
    assert Gaussian(elements=["O", "H", "C", "H"]).elements == ("H", "C", "O")
    with pytest.raises(ValueError, match="unknown featurizer"):
        featurizer_from_params("nope", {})


def test_elements_fixed_by_first_featurize(ethanol):
    f = Gaussian()
    assert f.elements is None
    with pytest.raises(RuntimeError, match="no elements"):
        _ = f.n_features
    x = f.featurize([ethanol])
    assert f.elements == ("H", "C", "O") and x[0].shape == (9, f.n_features)
    assert Gaussian().fit_elements([ethanol, molecule("NH3")]).elements == ("H", "C", "N", "O")
    assert AEV().fit_elements(np.array([8, 1, 1])).elements == ("H", "O")


def test_unknown_element_names_it(ethanol):
    f = Gaussian(elements=["H", "C", "O"])
    images = [ethanol, molecule("NH3")]
    with pytest.raises(ValueError, match=r"element N \(Z=7\) in structure 1"):
        f.featurize(images)
    nh3 = molecule("NH3")
    nl = f.neighbors(
        nh3.numbers, nh3.positions, np.zeros((1, 3, 3)), np.zeros((1, 3), bool), np.array([0, 4])
    )
    with pytest.raises(ValueError, match="element N"):
        f(
            torch.tensor(nh3.numbers),
            torch.tensor(nh3.positions),
            torch.zeros(1, 3, 3),
            torch.zeros(4, dtype=torch.long),
            nl,
        )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"angular_type": "G5"}, "angular_type"),
        ({"custom": {"G5": {}}}, "unknown custom key"),
        ({"custom": {"G4": {"etas": [1.0]}}}, "angular_type is 'G3'"),
        ({"custom": {"G2": {"eta": [1.0]}}}, "custom\\['G2'\\]"),
        ({"custom": {"G3": {"zeta": [1]}}}, "custom\\['G3'\\]"),
        ({"cutoff": {"radial": 5.0}}, "cutoff dict"),
        ({"elements": ["Xx"]}, "unknown element"),
    ],
)
def test_invalid_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Gaussian(**kwargs)


def test_batch_equals_one_by_one(structures, acetamide):
    images = [structures["ethanol"], structures["slab"], acetamide, structures["triclinic"]]
    for f in (Gaussian(cutoff=5.0), Gaussian(angular_type="G4"), AEV()):
        together = f.featurize(images)
        for atoms, x in zip(images, together, strict=True):
            assert np.array_equal(x.shape, (len(atoms), f.n_features))
            assert np.abs(f.featurize(atoms)[0] - x).max() < 1e-12
        offsets = np.cumsum([0] + [len(a) for a in images])
        flat = f.featurize_arrays(
            np.concatenate([a.numbers for a in images]),
            np.concatenate([a.positions for a in images]),
            np.stack([a.cell.array for a in images]),
            np.stack([a.pbc for a in images]),
            offsets,
        )
        assert flat.dtype == np.float64 and np.array_equal(flat, np.concatenate(together))
