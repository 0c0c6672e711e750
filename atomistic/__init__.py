"""atompipe's science: featurizers, scalers, models and the ASE calculator, usable from a plain
Python session (no Prefect, MLflow or Dask). docs/python-api.md shows them at work::

    from atomistic import Gaussian, NeuralNetwork, AtompipeCalculator

    model = NeuralNetwork((10, 10), "silu").fit(images, featurizer=Gaussian(cutoff=5.0))
    atoms.calc = AtompipeCalculator(model)

Names are imported on first use, so ``import atomistic`` stays light.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = [
    "AEV",
    "AtomicData",
    "AtompipeCalculator",
    "AutoEncoder",
    "Dataset",
    "EncodedFeaturizer",
    "Gaussian",
    "GaussianProcess",
    "KernelRidge",
    "NeuralNetwork",
    "NotFittedError",
    "Scaler",
    "TrainingConfig",
    "TrainingWarning",
    "VAE",
    "export_model",
    "load_autoencoder",
    "load_model",
]

_WHERE = {
    "AEV": "atomistic.features",
    "Gaussian": "atomistic.features",
    "Scaler": "atomistic.features.scaling",
    "Dataset": "atomistic.data",
    "AtomicData": "atomistic.models",
    "AutoEncoder": "atomistic.models",
    "GaussianProcess": "atomistic.models",
    "KernelRidge": "atomistic.models",
    "NeuralNetwork": "atomistic.models",
    "NotFittedError": "atomistic.models",
    "TrainingConfig": "atomistic.models",
    "TrainingWarning": "atomistic.models",
    "VAE": "atomistic.models",
    "load_autoencoder": "atomistic.models",
    "load_model": "atomistic.models",
    "EncodedFeaturizer": "atomistic.models.encoded",
    "AtompipeCalculator": "atomistic.calculator",
    "export_model": "atomistic.export",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'atomistic' has no attribute {name!r}")
    value = getattr(import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
