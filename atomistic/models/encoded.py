"""Latent features computed from structures: a featurizer, its scaler and an autoencoder's
encoder as one differentiable featurizer, so that a model fitted on latent features predicts
energies, forces and stress from structures (autograd through the encoder).

    x_i = scaler(featurizer(R))_i,   z_i = encoder_Z(i)(x_i)   (the mean, for a VAE)

``EncodedFeaturizer`` has the featurizer interface the models use (``neighbors``,
``featurize_arrays``, a differentiable ``forward``, ``elements``, ``n_features``, ``cutoff``,
``name``/``get_params``); the encoder's weights travel with a saved model (``encoder.safetensors``
beside its card), so the model directory is the whole path from structures to predictions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from atomistic.features.scaling import Scaler

__all__ = ["EncodedFeaturizer", "encode_torch"]


def encode_torch(encoder: Any, X: Tensor, numbers: Tensor) -> Tensor:
    """Differentiable codes (n_atoms, latent_dim) of scaled features X (n_atoms, n_features):
    the encoder's output (a VAE's mean), rows in the input order."""
    encoder._check_fitted()
    index = encoder._index(numbers.detach().cpu().numpy())
    order = torch.argsort(index, stable=True)  # rows grouped by element, shape (n,)
    xs, counts = encoder._batch(X, index, order)
    out = encoder.module_.encode(xs.to(torch.float64), counts)["mean"]
    return out[torch.argsort(order)]


class EncodedFeaturizer(torch.nn.Module):
    """``featurizer`` -> ``scaler`` (a fitted Scaler or None) -> ``encoder`` (a fitted
    AutoEncoder or VAE). Output (n_atoms, latent_dim), dimensionless, float64."""

    name = "latent"

    def __init__(self, featurizer: Any, scaler: Scaler | None, encoder: Any) -> None:
        super().__init__()
        encoder._check_fitted()
        if int(encoder.n_features_) != int(featurizer.n_features):
            raise ValueError(
                f"the encoder was fitted on {encoder.n_features_} features, the featurizer "
                f"gives {featurizer.n_features}"
            )
        self.base = featurizer
        self.base_scaler = scaler
        self.encoder = encoder
        try:
            self.encoder_key = encoder.encoder_key
        except AttributeError:  # rebuilt from a model card: the key is the card's
            self.encoder_key = ""

    @property
    def elements(self) -> tuple[str, ...] | None:
        return self.base.elements

    @property
    def cutoff(self) -> float:
        return float(self.base.cutoff)

    @property
    def n_features(self) -> int:
        return int(self.encoder.latent_dim_)

    def fit_elements(self, data: Any) -> EncodedFeaturizer:
        self.base.fit_elements(data)
        return self

    def neighbors(self, numbers, positions, cells, pbcs, offsets):
        return self.base.neighbors(numbers, positions, cells, pbcs, offsets)

    def featurize_arrays(self, numbers, positions, cells, pbcs, offsets) -> np.ndarray:
        """(N, latent_dim) float64 codes of a flat ragged batch (shapes as the featurizer's)."""
        X = self.base.featurize_arrays(numbers, positions, cells, pbcs, offsets)
        numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        if self.base_scaler is not None:
            X = self.base_scaler.transform(X, numbers)
        return np.asarray(self.encoder.encode(X, numbers), dtype=np.float64)

    def featurize(self, images: Any) -> list[np.ndarray]:
        if hasattr(images, "get_atomic_numbers"):
            images = [images]
        images = list(images)
        sizes = np.array([len(a) for a in images])
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        Z = self.featurize_arrays(
            np.concatenate([a.numbers for a in images]),
            np.concatenate([a.positions for a in images]),
            np.stack([a.cell.array for a in images]),
            np.stack([a.pbc for a in images]),
            offsets,
        )
        return np.split(Z, offsets[1:-1])

    def forward(self, numbers: Tensor, positions: Tensor, cells: Tensor, batch: Tensor, nl):
        X = self.base(numbers, positions, cells, batch, nl)
        if self.base_scaler is not None:
            X = self.base_scaler.transform_torch(X, numbers)
        return encode_torch(self.encoder, X, numbers)

    # -- persistence (the card's "featurizer" entry and the encoder's weights) ---------------
    def get_params(self) -> dict[str, Any]:
        enc = self.encoder
        return {
            "featurizer": {"name": self.base.name, "params": self.base.get_params()},
            "scaler": None if self.base_scaler is None else self.base_scaler.to_dict(),
            "encoder": {
                "model": type(enc).__name__,
                "hyperparameters": enc.get_params(),
                "elements": list(enc.elements_),
                "n_features": int(enc.n_features_),
                "latent_dim": int(enc.latent_dim_),
                "encoder_key": self.encoder_key,
            },
        }

    def state_tensors(self) -> dict[str, Tensor]:
        """The encoder's weights, for ``encoder.safetensors`` in a model directory."""
        return self.encoder._state_dict()

    @classmethod
    def from_params(cls, params: dict[str, Any], tensors: dict[str, Tensor]) -> EncodedFeaturizer:
        """Rebuild from :meth:`get_params` and :meth:`state_tensors`."""
        from atomistic.features import featurizer_from_params
        from atomistic.models.autoencoders import ENCODER_CLASSES

        f = params["featurizer"]
        base = featurizer_from_params(f["name"], f["params"])
        scaler = None if params["scaler"] is None else Scaler.from_dict(params["scaler"])
        e = params["encoder"]
        klass = ENCODER_CLASSES.get(e["model"])
        if klass is None:
            raise ValueError(f"unknown encoder class {e['model']!r} in the model card")
        enc = klass(**e["hyperparameters"])
        state = {k: v.to(torch.float64) for k, v in tensors.items()}
        enc._set_weights(e["elements"], e["n_features"], e["latent_dim"], state)
        out = cls.__new__(cls)
        torch.nn.Module.__init__(out)
        out.base, out.base_scaler, out.encoder = base, scaler, enc
        out.encoder_key = e.get("encoder_key", "")
        return out

    def extra_repr(self) -> str:
        return f"encoder={type(self.encoder).__name__}, latent_dim={self.n_features}"
