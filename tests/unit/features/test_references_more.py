"""Gaussian features on the paths the first DScribe comparison left without a reference
(issue 15): non-integer zeta, separate radial and angular cutoffs, normalized=False, and the
weighted (wACSF) sums, each against DScribe 2.1 ACSF (mapping: docs/features.md)."""

from __future__ import annotations

import numpy as np
import pytest
from test_references import TOL, dscribe_in_our_order

from atomistic.features import Gaussian

pytest.importorskip("dscribe.descriptors")

G2 = {"etas": [0.3, 4.0], "Rs": [0.0, 1.2]}
ANG = {"etas": [0.05, 1.5], "zetas": [1.5, 3.7], "gammas": [1.0, -1.0]}  # non-integer zeta


def _elements(atoms) -> list[str]:
    symbols = atoms.get_chemical_symbols()
    return sorted(set(symbols), key=lambda s: atoms.numbers[symbols.index(s)])


def _reference(atoms, elements, rc, g2, ang, angular_type):
    return dscribe_in_our_order(
        atoms, elements, rc, g2, ang, angular_type, periodic=bool(atoms.pbc.any())
    )


@pytest.mark.parametrize("angular_type", ["G3", "G4"])
@pytest.mark.parametrize("name", ["ethanol", "cu_bulk", "slab"])
def test_non_integer_zeta_and_separate_cutoffs(structures, name, angular_type):
    atoms = structures[name]
    rc_radial, rc_angular = 5.0, 3.6
    f = Gaussian(
        cutoff={"radial": rc_radial, "angular": rc_angular},
        angular_type=angular_type,
        elements=_elements(atoms),
        custom={"G2": G2, angular_type: ANG},
    )
    ours = f.featurize(atoms)[0]
    n_radial = sum(1 for lab in f.labels if lab["term"] == "G2")
    radial = _reference(atoms, f.elements, rc_radial, G2, ANG, angular_type)[:, :n_radial]
    angular = _reference(atoms, f.elements, rc_angular, G2, ANG, angular_type)[:, n_radial:]
    ref = np.concatenate([radial, angular], axis=1)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize("name", ["ethanol", "triclinic"])
def test_not_normalized(structures, name):
    """normalized=False: exponents not divided by Rc^2; DScribe is given eta as it is."""
    atoms = structures[name]
    rc = 5.0
    f = Gaussian(
        cutoff=rc, normalized=False, elements=_elements(atoms), custom={"G2": G2, "G3": ANG}
    )
    scaled = lambda p: {**p, "etas": [e * rc**2 for e in p["etas"]]}  # noqa: E731
    ref = _reference(atoms, f.elements, rc, scaled(G2), scaled(ANG), "G3")
    assert np.abs(f.featurize(atoms)[0] - ref).max() <= TOL


def test_weighted_g3_is_the_element_sums_weighted_by_atomic_numbers(structures):
    """wACSF: radial columns sum Z_j g(R_ij) over every neighbour, angular ones Z_j Z_k g over
    every pair: DScribe's element-resolved columns summed with those weights."""
    atoms = structures["ethanol"]
    rc = 5.0
    f = Gaussian(cutoff=rc, weighted=True, elements=_elements(atoms), custom={"G2": G2, "G3": ANG})
    ours = f.featurize(atoms)[0]
    resolved = _reference(atoms, f.elements, rc, G2, ANG, "G3")
    z = [
        int(np.unique(atoms.numbers[np.array(atoms.get_chemical_symbols()) == s])[0])
        for s in f.elements
    ]
    n2 = len(G2["etas"]) * len(G2["Rs"])
    na = len(ANG["etas"]) * len(ANG["zetas"]) * len(ANG["gammas"])
    n = len(z)
    radial = sum(z[s] * resolved[:, s * n2 : (s + 1) * n2] for s in range(n))
    pairs = [(a, b) for a in range(n) for b in range(a, n)]
    start = n * n2
    angular = sum(
        z[a] * z[b] * resolved[:, start + p * na : start + (p + 1) * na]
        for p, (a, b) in enumerate(pairs)
    )
    ref = np.concatenate([radial, angular], axis=1)
    assert ours.shape == ref.shape
    assert np.abs(ours - ref).max() <= TOL * max(1.0, np.abs(ref).max())
