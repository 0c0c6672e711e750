"""Error metrics and calibration against hand-computed values."""

import numpy as np
import pytest

from atomistic.metrics import calibration, energy_errors, force_errors, parity


def test_energy_and_force_errors():
    e = energy_errors(np.array([1.0, 2.0]), np.array([1.5, 1.0]), n_atoms=np.array([1, 2]))
    assert e["energy_mae"] == pytest.approx(0.75)
    assert e["energy_rmse"] == pytest.approx(np.sqrt((0.25 + 1.0) / 2))
    assert e["energy_mae_per_atom"] == pytest.approx(0.5)
    f = force_errors([np.zeros((1, 3)), np.zeros((1, 3))], [np.ones((1, 3)), -np.ones((1, 3))])
    assert f == {"force_mae": 1.0, "force_rmse": 1.0}
    with pytest.raises(ValueError, match="shapes"):
        energy_errors(np.zeros(2), np.zeros(3))
    p = parity(np.ones((2, 3)), np.zeros((2, 3)))
    assert p["true"].shape == p["pred"].shape == (6,)


def test_calibration_of_gaussian_scores():
    z = np.random.default_rng(0).normal(size=200_000)
    c = calibration(z)
    for k in (1, 2, 3):
        assert c[f"within_{k}sigma"] == pytest.approx(c[f"expected_{k}sigma"], abs=3e-3)
    assert c["z_std"] == pytest.approx(1.0, abs=1e-2)
    assert calibration(2 * z)["within_1sigma"] < 0.5  # overconfident std
