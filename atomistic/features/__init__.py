"""Atom-centred features: Gaussian symmetry functions (Behler-Parrinello) and ANI AEVs.

Every featurizer is a ``torch.nn.Module`` (``forward(numbers, positions, cells, batch, nl)``) with
numpy conveniences (``featurize(images)``, ``featurize_arrays(...)``); see docs/features.md.
"""

from .aev import AEV
from .base import Featurizer, featurizer_from_params
from .cutoff import CosineCutoff, Cutoff
from .gaussian import Gaussian
from .terms import AngularTerm, ANIAngular, ANIRadial, BehlerAngular, BehlerRadial, RadialTerm

__all__ = [
    "AEV",
    "ANIAngular",
    "ANIRadial",
    "AngularTerm",
    "BehlerAngular",
    "BehlerRadial",
    "CosineCutoff",
    "Cutoff",
    "Featurizer",
    "Gaussian",
    "RadialTerm",
    "featurizer_from_params",
]
