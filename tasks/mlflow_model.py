"""An MLflow pyfunc over a saved atompipe model, logged as *code* (no cloudpickle).

``mlflow.pyfunc.load_model(uri).predict(frame)`` takes a pandas DataFrame with an ``extxyz``
column of extended-XYZ strings, one structure each (the signature's input; the unwrapped
model, ``.unwrap_python_model().predict(None, images)``, also takes ase.Atoms), and returns a
DataFrame with one row per structure: ``energy`` (eV); where the model differentiates through
its featurizer ``forces`` ((n_atoms, 3) nested lists, eV/Å) and ``stress`` (6 values, eV/Å³,
ASE's Voigt order; empty for a structure without a periodic cell); where the model has
uncertainty ``energy_std`` (eV) and, for a sparse GP on forces, ``forces_std`` (eV/Å).
The logged signature (tasks/pipeline/record.py) names these columns.
"""

from __future__ import annotations

import io
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel


def _images(model_input: Any) -> list:
    import ase.io

    if hasattr(model_input, "columns"):
        return [ase.io.read(io.StringIO(s), format="extxyz") for s in model_input["extxyz"]]
    return list(model_input)


def prediction_frame(model: Any, images: list) -> Any:
    """The pyfunc's output for ``images``: a DataFrame, one row per structure."""
    import pandas as pd

    from atomistic.predictions import predict_structures

    out = predict_structures(model, images)
    columns: dict[str, list] = {k: out[k] for k in ("energy", "energy_std") if k in out}
    for name in ("forces", "forces_std", "stress"):  # arrays as nested lists; no stress: []
        if name in out:
            columns[name] = [[] if v is None else v.tolist() for v in out[name]]
    return pd.DataFrame(columns)


class AtompipeModel(PythonModel):
    def load_context(self, context: Any) -> None:
        from atomistic.models.base import AtomisticModel

        self.model = AtomisticModel.load(context.artifacts["model"])

    # no type hint on model_input: MLflow would try to infer a schema from it
    def predict(self, context, model_input, params=None):  # noqa: ANN001
        return prediction_frame(self.model, _images(model_input))


mlflow.models.set_model(AtompipeModel())
