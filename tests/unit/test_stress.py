"""Stress by autograd with respect to a strain of the cell, for every model kind, against
finite differences of the energy under strain (``ase.calculators.fd.calculate_numerical_stress``,
which also fixes ASE's sign and Voigt conventions: checked on EMT's analytic stress)."""

import numpy as np
import pytest
from ase.calculators.emt import EMT
from ase.calculators.fd import calculate_numerical_stress
from atoms_factory import cu_images, make_data

from atomistic.calculator import AtompipeCalculator
from atomistic.models import (
    GaussianProcess,
    KernelRidge,
    NeuralNetwork,
    TrainingConfig,
)

pytestmark = pytest.mark.filterwarnings("ignore::atomistic.models.TrainingWarning")


@pytest.fixture(scope="module")
def cu_data():
    return make_data(cu_images(12, seed=1), cutoff=4.0)


def _models():
    return {
        "nn": NeuralNetwork(
            (8,), "silu", dtype="float64", training=TrainingConfig(epochs=3, seed=0)
        ),
        "nn_committee": NeuralNetwork(
            (6,), "tanh", dtype="float64", ensemble=2, training=TrainingConfig(epochs=2)
        ),
        "krr": KernelRidge(sigma=2.0, lamda=1e-6),
        "gp": GaussianProcess(sigma=2.0, noise=1e-4, optimize=False),
        "krr_sparse": KernelRidge(sigma=2.0, forces=True, n_sparse=8),
        "gp_sparse": GaussianProcess(sigma=2.0, forces=True, n_sparse=8, optimize=False),
    }


def _sheared_cu():
    atoms = cu_images(1, seed=7, rattle=0.05)[0]
    atoms.set_cell(
        atoms.cell.array @ (np.eye(3) + [[0.02, 0.01, 0], [0, -0.01, 0.015], [0, 0, 0]]),
        scale_atoms=True,
    )
    return atoms


def test_emt_convention_matches_numerical_stress():
    """The reference itself: ASE's numerical stress reproduces EMT's analytic stress, so it
    carries ASE's sign (sigma = (1/V) dE/d eps) and Voigt order."""
    atoms = _sheared_cu()
    atoms.calc = EMT()
    np.testing.assert_allclose(
        atoms.get_stress(), calculate_numerical_stress(atoms, eps=1e-5), atol=1e-7
    )


@pytest.mark.parametrize("kind", list(_models()))
def test_stress_matches_finite_differences(cu_data, kind):
    model = _models()[kind].fit(cu_data)
    atoms = _sheared_cu()
    calc = AtompipeCalculator(model)
    atoms.calc = calc
    stress = atoms.get_stress()
    assert stress.shape == (6,)
    numeric = calculate_numerical_stress(atoms, eps=1e-5)
    scale = max(1.0, float(np.abs(numeric).max()))
    np.testing.assert_allclose(stress, numeric, atol=1e-7 * scale)
    assert np.abs(numeric).max() > 1e-4  # not trivially zero
    # predict() gives the same, and forces are unchanged by asking for stress
    out = model.predict([atoms], forces=True, stress=True)
    np.testing.assert_allclose(out["stress"][0], stress, atol=1e-12)
    np.testing.assert_allclose(
        out["forces"], model.predict([atoms], forces=True)["forces"], atol=1e-12
    )


def test_stress_of_a_molecule_is_refused(cu_data):
    from ase.build import molecule
    from ase.calculators.calculator import PropertyNotImplementedError

    model = KernelRidge(sigma=2.0).fit(cu_data)
    out = model.predict([cu_images(1)[0]], stress=True)
    assert out["stress"].shape == (1, 6) and np.isfinite(out["stress"]).all()
    atoms = molecule("H2")
    atoms.numbers[:] = 29
    atoms.positions *= 2.0
    assert np.isnan(model.predict([atoms], stress=True)["stress"]).all()
    atoms.calc = AtompipeCalculator(model)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()
