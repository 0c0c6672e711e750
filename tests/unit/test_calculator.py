"""The ASE calculator: same numbers as the model, uncertainty where the model has one, and
energy conservation in NVE molecular dynamics with a small trained Cu potential."""

import numpy as np
import pytest
from ase import units
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
from ase.md.verlet import VelocityVerlet
from atoms_factory import cu_images, finite_difference_forces, make_data

from atomistic.calculator import AtompipeCalculator
from atomistic.models import GaussianProcess, NeuralNetwork, TrainingConfig


@pytest.fixture(scope="module")
def cu_potential(tmp_path_factory):
    data = make_data(cu_images(40, size=(2, 2, 2), rattle=0.1), cutoff=4.5, angular_type="G4")
    model = NeuralNetwork(
        (10, 10),
        "silu",
        force_weight=0.1,
        training=TrainingConfig(epochs=20, lr=1e-2, batch_size=10, seed=0),
    )
    path = model.fit(data).save(tmp_path_factory.mktemp("cu") / "nn")
    return data, model, path


def test_calculator_matches_model(cu_potential):
    data, model, path = cu_potential
    atoms = cu_images(1, seed=3, size=(2, 2, 2))[0]
    calc = AtompipeCalculator(path)
    assert set(calc.implemented_properties) == {"energy", "free_energy", "forces", "stress"}
    atoms.calc = calc
    ref = model.predict_atoms([atoms])
    assert atoms.get_potential_energy() == pytest.approx(ref["energy"][0], abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), ref["forces"][0], atol=1e-10)


def test_gp_calculator_reports_std():
    data = make_data(cu_images(10))
    gp = GaussianProcess(sigma=2.0, noise=1e-3, optimize=False).fit(data)
    atoms = cu_images(1, seed=4)[0]
    atoms.calc = AtompipeCalculator(gp)
    atoms.get_potential_energy()
    assert "energy_std" in atoms.calc.implemented_properties
    assert atoms.calc.results["energy_std"] > 0


def test_gp_means_only_skip_the_force_stds():
    """A sparse GP on forces: with ``uncertainty`` off the calculator asks for means only
    (one reverse-mode pass) and reports the same energy and forces as the full prediction
    (forward-mode design rows), and minus the energy's central differences; no stds."""
    data = make_data(cu_images(6, rattle=0.1), cutoff=4.0, angular_type="G4")
    gp = GaussianProcess(sigma=2.0, forces=True, n_sparse=20, optimize=False).fit(data)
    atoms = cu_images(1, seed=5, rattle=0.1)[0]
    full = AtompipeCalculator(gp)
    atoms.calc = full
    F_full = atoms.get_forces().copy()
    assert full.results["forces_std"].shape == (len(atoms), 3)
    means = AtompipeCalculator(gp)
    means.uncertainty = False
    atoms.calc = means
    np.testing.assert_allclose(atoms.get_forces(), F_full, atol=1e-10)
    assert "forces_std" not in means.results
    np.testing.assert_allclose(F_full, finite_difference_forces(gp, atoms), atol=1e-6)


class _ScaledForces(AtompipeCalculator):
    """The same potential with forces scaled by a factor: no longer -dE/dR (a control)."""

    def __init__(self, model, factor):
        super().__init__(model)
        self.factor = factor

    def calculate(self, *args, **kwargs):
        super().calculate(*args, **kwargs)
        self.results["forces"] = self.results["forces"] * self.factor


def _nve(calc, steps=150):
    """Total energy per atom (eV) along velocity-Verlet NVE: drift (eV/atom/ps) and spread."""
    atoms = cu_images(1, seed=8, size=(2, 2, 2), rattle=0.0)[0]
    atoms.calc = calc
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dyn = VelocityVerlet(atoms, timestep=2.0 * units.fs)
    energies = []
    dyn.attach(lambda: energies.append(atoms.get_total_energy()), interval=1)
    dyn.run(steps)
    e = np.array(energies) / len(atoms)
    t_ps = np.arange(len(e)) * 2.0e-3
    assert atoms.get_kinetic_energy() > 0
    return np.polyfit(t_ps, e, 1)[0], np.ptp(e)


# thresholds about 5x the measured float32 potential (drift -0.019 meV/atom/ps, spread 0.024
# meV/atom over 0.3 ps); forces off by 1.5 % must break them
MAX_DRIFT, MAX_SPREAD = 1e-4, 1e-4  # eV/atom/ps, eV/atom


def test_nve_conserves_energy(cu_potential):
    _, model, path = cu_potential
    drift, spread = _nve(AtompipeCalculator(path))
    print(
        f"\nNVE drift {drift * 1e3:.4f} meV/atom/ps, fluctuation {spread * 1e3:.4f} meV/atom "
        f"over 0.30 ps (dt = 2 fs, 32 Cu atoms, 300 K, {model.dtype} networks)"
    )
    assert abs(drift) < MAX_DRIFT
    assert spread < MAX_SPREAD
    bad_drift, bad_spread = _nve(_ScaledForces(model, 0.985))
    assert abs(bad_drift) > MAX_DRIFT or bad_spread > MAX_SPREAD
