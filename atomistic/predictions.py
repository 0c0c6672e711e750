"""Predictions of a saved model per structure, in the units the outputs are written in.

One place that decides what a model can give for a batch of structures: energies always;
forces and, for periodic structures, stress where the model carries its featurizer; energy
and force standard deviations where the model has uncertainty. ``atompipe predict`` and the
MLflow pyfunc both write what this returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms

__all__ = ["predict_structures"]


def _periodic(atoms: Atoms) -> bool:
    return bool(np.all(atoms.pbc)) and abs(float(np.linalg.det(atoms.cell.array))) > 1e-12


def predict_structures(model: Any, images: Sequence[Atoms]) -> dict[str, list]:
    """Per-structure predictions of ``model`` (an :class:`~atomistic.models.base.AtomisticModel`)
    for ``images`` (S structures).

    Returns lists of length S: ``energy`` (eV); ``forces`` ((n_i, 3) arrays, eV/Å) and
    ``stress`` ((6,) arrays, eV/Å³, ASE's Voigt order; None for a structure without a periodic
    3-D cell) when the model can differentiate through its featurizer; ``energy_std`` (eV) and
    ``forces_std`` ((n_i, 3), eV/Å) when the model predicts them.
    """
    images = list(images)
    derivatives = getattr(model, "featurizer_", None) is not None
    periodic = [_periodic(a) for a in images]
    out = model.predict_atoms(images, forces=derivatives, stress=derivatives and any(periodic))
    result: dict[str, list] = {"energy": [float(e) for e in np.asarray(out["energy"])]}
    if "energy_std" in out:
        result["energy_std"] = [float(e) for e in np.asarray(out["energy_std"])]
    if derivatives:
        result["forces"] = [np.asarray(f, dtype=np.float64) for f in out["forces"]]
        stress = out.get("stress")
        result["stress"] = [
            np.asarray(stress[s], dtype=np.float64) if stress is not None and periodic[s] else None
            for s in range(len(images))
        ]
    if "forces_std" in out:
        std = np.asarray(out["forces_std"], dtype=np.float64).reshape(-1, 3)
        offsets = np.cumsum([0] + [len(a) for a in images])
        result["forces_std"] = [std[offsets[s] : offsets[s + 1]] for s in range(len(images))]
    return result
