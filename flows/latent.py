"""Latent features from the command line: ``atompipe latent FEATURE_KEY``.

The same stages the campaign runs (fit the scaler on the training split, train the AE/VAE, write
``latent/<key>``), called directly on a feature set already in the store, plus what a person wants
to look at afterwards: the reconstruction error against the variance of the scaled features on
held-out atoms, the KL of a VAE, the latent map, and decoded samples from the prior.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from tasks.refs import FeatureRef

__all__ = ["run_latent"]


def run_latent(
    store_url: str,
    feature_key: str,
    workspace: str,
    settings: dict[str, Any],
    scaler: dict[str, Any],
    split: dict[str, Any],
    *,
    map_path: str | Path | None = None,
    samples: int = 0,
    on_epoch: Any = None,
) -> dict[str, Any]:
    """Train (or reuse) an encoder on ``features/<feature_key>`` and write its latent features.

    ``settings`` are the campaign's encoder settings (flows.config.AutoEncoderSettings as a
    dict), ``scaler`` its scaler settings, ``split`` {"fractions", "seed"}. Returns the latent
    reference of :func:`tasks.models.train_encoder` (with "kl_test" for a VAE) plus "map" and
    "samples".
    """
    from atomistic.models.autoencoders import load_autoencoder
    from tasks.models import train_encoder
    from tasks.stages import fit_scaler

    features = FeatureRef.from_store(store_url, feature_key)
    scaler_ref = fit_scaler.fn(
        features,
        scaler["kind"],
        tuple(scaler["feature_range"]),
        scaler["per_element"],
        tuple(split["fractions"]),
        split["seed"],
    )
    out = train_encoder.fn(features, scaler_ref, settings, split, workspace, on_epoch=on_epoch)
    encoder_dir = Path(str(FeatureRef.of(out).encoder_dir))
    if map_path is not None:  # the encoder's own map of the held-out atoms
        shutil.copyfile(encoder_dir / "latent_map.png", map_path)
        out["map"] = str(map_path)
    if samples:
        encoder = load_autoencoder(encoder_dir)
        if hasattr(encoder, "sample"):
            seed = split["seed"]
            out["samples"] = {
                el: encoder.sample(samples, el, seed=seed) for el in encoder.elements_
            }
    return out
