"""An ASE calculator over any trained atompipe model (the ASE contract: ase/calculators/emt.py).

calc = AtompipeCalculator("workspace/models/<key>")
atoms.calc = calc
atoms.get_potential_energy(); atoms.get_forces(); calc.results.get("energy_std")
calc.results.get("forces_std")   # GaussianProcess(forces=True)
atoms.get_stress()               # periodic cells: eV/Å^3, ASE's Voigt order (xx yy zz yz xz xy)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from atomistic.models.base import AtomisticModel, load_model

__all__ = ["AtompipeCalculator"]


class AtompipeCalculator(Calculator):
    """Energy (eV), free energy (= energy), forces (eV/Å), stress (eV/Å^3, for a structure with
    a 3-D cell; autograd with respect to a strain of the cell, as ``predict(stress=True)``)
    and, for models with uncertainty (GaussianProcess), ``energy_std`` (eV) and, when trained
    on forces, ``forces_std`` (n_atoms, 3) eV/Å, from a saved model directory or a fitted
    model."""

    def __init__(self, model: str | Path | AtomisticModel, **kwargs: Any) -> None:
        self.model = model if isinstance(model, AtomisticModel) else load_model(model)
        self.model._check_fitted()
        self.implemented_properties = ["energy", "free_energy", "forces", "stress"]
        if self.model.has_uncertainty:
            self.implemented_properties.append("energy_std")
            # a sparse GP on forces and a committee of networks give forces_std too
            if getattr(self.model, "forces", False) or int(getattr(self.model, "ensemble", 1)) > 1:
                self.implemented_properties.append("forces_std")
        # False: energies and forces only where the stds cost extra (a GP's force stds cost a
        # forward-mode pass per atom and direction); MD between uncertainty checks sets it
        self.uncertainty = True
        super().__init__(**kwargs)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        stress = "stress" in properties
        if stress and self.atoms.cell.rank < 3:
            raise PropertyNotImplementedError("stress needs a structure with a 3-D cell")
        if self.uncertainty or not getattr(self.model, "std_optional", False):
            out = self.model.predict_atoms([self.atoms], forces=True, stress=stress)
        else:  # a GP asked for means only: no stds (a model whose stds are free keeps them)
            data = self.model._as_data([self.atoms])
            out = dict(self.model.predict(data, forces=True, stress=stress, std=False))  # type: ignore[call-arg]
            out["forces"] = [out["forces"]]  # one structure, as predict_atoms gives it
        energy = float(out["energy"][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": np.asarray(out["forces"][0], dtype=np.float64),
        }
        if stress:
            self.results["stress"] = np.asarray(out["stress"][0], dtype=np.float64)
        if "energy_std" in out:
            self.results["energy_std"] = float(out["energy_std"][0])
        if "forces_std" in out:  # (n_atoms, 3) eV/Å, one structure
            self.results["forces_std"] = np.asarray(out["forces_std"], dtype=np.float64)
