"""Atomic latent features: the codes of a trained autoencoder (the posterior mean of a VAE).

An encoder trained without labels on scaled atomic features maps each atom's features
(n_atoms, n_features) to a code (n_atoms, latent_dim); these codes are a feature set like any
other and feed every supervised model (docs/architecture.md, "Atomic latent features").

The content key of a latent feature set combines the key of the input features, the encoder's key
(:attr:`atomistic.models.autoencoders.AutoEncoder.encoder_key`, which covers its hyperparameters,
training configuration, input feature key and weights) and :data:`FORMAT_VERSION`.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Protocol

import numpy as np

__all__ = ["FORMAT_VERSION", "latent_features", "latent_labels", "latent_key"]

FORMAT_VERSION = 1


class Encoder(Protocol):
    """What latent features need of an encoder: a content key and ``encode``."""

    @property
    def encoder_key(self) -> str: ...

    latent_dim_: int

    def encode(self, X: np.ndarray, numbers: np.ndarray) -> np.ndarray: ...


def latent_features(encoder: Encoder, X: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """Latent codes (n_atoms, latent_dim), float64, of scaled features ``X`` (n_atoms,
    n_features) of atoms with atomic numbers ``numbers`` (n_atoms,); dimensionless."""
    Z = np.asarray(encoder.encode(X, numbers), dtype=np.float64)
    if Z.shape != (np.shape(X)[0], encoder.latent_dim_):
        raise ValueError(f"the encoder returned codes of shape {Z.shape}")
    return Z


def latent_labels(encoder: Encoder) -> list[dict[str, Any]]:
    """One label per latent column: {"term": "latent", "index": k, "encoder": encoder_key}."""
    key = encoder.encoder_key
    return [{"term": "latent", "index": k, "encoder": key} for k in range(encoder.latent_dim_)]


def latent_key(feature_key: str, encoder_key: str) -> str:
    """Content key (sha256 hex) of the latent features of input features ``feature_key`` under
    the encoder ``encoder_key``."""
    payload = {
        "stage": "latent",
        "format": FORMAT_VERSION,
        "features": feature_key,
        "encoder": encoder_key,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
