"""An MLflow pyfunc over a saved atompipe model, logged as *code* (no cloudpickle).

``mlflow.pyfunc.load_model(uri).predict(images)`` takes a list of ase.Atoms (or a pandas
DataFrame with an ``extxyz`` column of extended-XYZ strings) and returns energies in eV.
"""

from __future__ import annotations

import io
from typing import Any

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class AtompipeEnergyModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from atomistic.models.base import AtomisticModel

        self.model = AtomisticModel.load(context.artifacts["model"])

    # no type hint on model_input: MLflow would try to infer a schema from it
    def predict(self, context, model_input, params=None):  # noqa: ANN001
        import ase.io

        if hasattr(model_input, "columns"):
            images = [ase.io.read(io.StringIO(s), format="extxyz") for s in model_input["extxyz"]]
        else:
            images = list(model_input)
        return np.asarray(self.model.predict_atoms(images, forces=False)["energy"])


mlflow.models.set_model(AtompipeEnergyModel())
