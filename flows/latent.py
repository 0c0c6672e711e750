"""Latent features from the command line: ``atompipe latent FEATURE_KEY``.

The same stages the campaign runs (fit the scaler on the training split, train the AE/VAE, write
``latent/<key>``), called directly on a feature set already in the store, plus what a person wants
to look at afterwards: the reconstruction error against the variance of the scaled features on
held-out atoms, the KL of a VAE, the latent map, and decoded samples from the prior.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from atomistic.storage import Store

__all__ = ["feature_reference", "run_latent"]


def feature_reference(store_url: str, key: str) -> dict[str, Any]:
    """The small reference the stages pass around, rebuilt from a feature group's attributes."""
    store = Store(store_url)
    group = store.open("features", key)  # StoreError naming the key when absent
    attrs = dict(group.attrs)
    return {
        "store": store_url,
        "kind": "features",
        "key": key,
        "dataset": attrs["dataset"],
        "featurizer": attrs["featurizer"],
        "params": attrs["params"],
    }


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
    reference of :func:`tasks.models.train_encoder` plus "kl_test" (VAE), "map" and "samples".
    """
    from atomistic.data import read_dataset, read_split
    from atomistic.features.scaling import Scaler
    from atomistic.features.store import read_features
    from atomistic.models.autoencoders import load_autoencoder
    from tasks.models import train_encoder
    from tasks.stages import fit_scaler

    features = feature_reference(store_url, feature_key)
    scaler_ref = fit_scaler.fn(
        features,
        scaler["kind"],
        tuple(scaler["feature_range"]),
        scaler["per_element"],
        tuple(split["fractions"]),
        split["seed"],
    )
    ref = train_encoder.fn(features, scaler_ref, settings, split, workspace, on_epoch=on_epoch)
    encoder = load_autoencoder(ref["encoder_dir"])
    store = Store(store_url)
    test = read_split(store, features["dataset"], tuple(split["fractions"]), split["seed"])["test"]
    ds = read_dataset(store, features["dataset"]).subset(test)
    X, _ = read_features(store, feature_key, test)
    X = Scaler.from_dict(scaler_ref["scaler"]).transform(X, ds.numbers)
    out = dict(ref)
    if hasattr(encoder, "kl_divergence"):
        out["kl_test"] = encoder.kl_divergence(X, ds.numbers)
    if map_path is not None:
        from atomistic.plots import latent_map

        Z, _ = read_features(store, ref["key"], test, kind="latent")
        out["map"] = str(
            latent_map(Z, ds.numbers, path=map_path, title=f"latent {ref['key'][:12]}")
        )
    if samples and hasattr(encoder, "sample"):
        out["samples"] = {
            el: np.asarray(encoder.sample(samples, el, seed=split["seed"]))
            for el in encoder.elements_
        }
    return out
