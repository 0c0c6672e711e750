"""Errors of predicted energies and forces, and parity data (plain numpy).

Energies in eV, forces in eV/Å. Per-atom energy errors divide each structure's error by its
number of atoms; force errors are over every Cartesian component of every atom.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "energy_errors",
    "force_errors",
    "parity",
    "evaluate",
    "z_scores",
    "calibration",
]

_GAUSSIAN_COVERAGE = {1: 0.6826894921370859, 2: 0.9544997361036416, 3: 0.9973002039367398}


def _mae_rmse(err: np.ndarray) -> tuple[float, float]:
    if err.size == 0:
        return float("nan"), float("nan")
    return float(np.abs(err).mean()), float(np.sqrt((err**2).mean()))


def energy_errors(
    true: np.ndarray, pred: np.ndarray, n_atoms: np.ndarray | None = None
) -> dict[str, float]:
    """MAE and RMSE per structure (eV) and, given ``n_atoms`` (S,), per atom (eV/atom)."""
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if true.shape != pred.shape:
        raise ValueError(f"energy shapes differ: {true.shape} vs {pred.shape}")
    err = pred - true
    out = dict(zip(("energy_mae", "energy_rmse"), _mae_rmse(err), strict=True))
    if n_atoms is not None:
        per_atom = err / np.asarray(n_atoms, dtype=np.float64)
        out.update(
            zip(("energy_mae_per_atom", "energy_rmse_per_atom"), _mae_rmse(per_atom), strict=True)
        )
    return out


def force_errors(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MAE and RMSE over force components (eV/Å); arrays (n_atoms, 3) or lists of them."""
    true = (
        np.concatenate([np.reshape(t, (-1, 3)) for t in true]) if isinstance(true, list) else true
    )
    pred = (
        np.concatenate([np.reshape(p, (-1, 3)) for p in pred]) if isinstance(pred, list) else pred
    )
    true, pred = np.asarray(true, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    if true.shape != pred.shape:
        raise ValueError(f"force shapes differ: {true.shape} vs {pred.shape}")
    return dict(zip(("force_mae", "force_rmse"), _mae_rmse(pred - true), strict=True))


def parity(true: np.ndarray, pred: np.ndarray) -> dict[str, np.ndarray]:
    """Flattened (true, pred) arrays for a parity plot."""
    return {
        "true": np.asarray(true, dtype=np.float64).reshape(-1),
        "pred": np.asarray(pred, dtype=np.float64).reshape(-1),
    }


def evaluate(dataset: Any, prediction: dict[str, Any]) -> dict[str, float]:
    """All errors of a model's ``prediction`` (keys energy, forces) against a Dataset's labels."""
    out: dict[str, float] = {}
    n = np.diff(dataset.offsets)
    if dataset.energy is not None and "energy" in prediction:
        out.update(energy_errors(dataset.energy, prediction["energy"], n))
    if dataset.forces is not None and prediction.get("forces") is not None:
        out.update(force_errors(dataset.forces, prediction["forces"]))
    if dataset.energy is not None and prediction.get("energy_std") is not None:
        z = z_scores(dataset.energy, prediction["energy"], prediction["energy_std"])
        out.update(
            {
                f"calibration_{k}": v
                for k, v in calibration(z).items()
                if not k.startswith("expected")
            }
        )
    return out


def z_scores(true: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """(y - mean) / std, elementwise."""
    return (np.asarray(true) - np.asarray(mean)) / np.asarray(std)


def calibration(z: np.ndarray) -> dict[str, float]:
    """Coverage of z-scores: fraction with |z| <= 1, 2, 3 next to a Gaussian's
    0.683 / 0.954 / 0.997, and the mean and standard deviation of z (0 and 1 if calibrated)."""
    z = np.asarray(z, dtype=np.float64).reshape(-1)
    out: dict[str, float] = {"n": float(z.size)}
    for k, expected in _GAUSSIAN_COVERAGE.items():
        out[f"within_{k}sigma"] = float(np.mean(np.abs(z) <= k)) if z.size else float("nan")
        out[f"expected_{k}sigma"] = expected
    out["z_mean"] = float(z.mean()) if z.size else float("nan")
    out["z_std"] = float(z.std()) if z.size else float("nan")
    return out
