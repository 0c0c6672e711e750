"""The train-encoder stage as a plain function: an AE or VAE fitted on scaled training features,
saved as ``<workspace>/models/<key>/``, and the latent features of every atom written as
``latent/<key>`` (:func:`train_encoder`); its one key (:func:`encoder_key`) and existence
check (:func:`encoder_exists`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from atomistic.data import read_dataset
from atomistic.features.scaling import Scaler
from atomistic.features.store import read_features, write_feature_array
from atomistic.storage import Store, content_hash
from tasks.pipeline.common import checkpoint_dir, model_dir, publish_model, split_arrays
from tasks.refs import FeatureRef, ScalerRef

__all__ = ["encoder_exists", "encoder_key", "train_encoder"]


def encoder_key(
    features: FeatureRef | dict[str, Any], scaler: ScalerRef | dict[str, Any], settings, split
) -> str:
    """The train-encoder stage's key (its model directory): features, scaler, settings, split."""
    f, sc = FeatureRef.of(features), ScalerRef.of(scaler)
    return content_hash("atompipe-encoder", 1, f.key, sc.key, settings, split)


def encoder_exists(
    features: FeatureRef | dict[str, Any],
    scaler: ScalerRef | dict[str, Any],
    settings,
    split,
    workspace,
    **_,
) -> bool:
    """The encoder is saved and its latent features are in the store."""
    card = model_dir(workspace, encoder_key(features, scaler, settings, split)) / "card.json"
    if not card.exists():
        return False
    from atomistic.features.latent import latent_key
    from atomistic.features.store import repair_feature_group
    from atomistic.models.autoencoders import load_autoencoder

    enc = load_autoencoder(card.parent)
    f = FeatureRef.of(features)
    store, lkey = Store(f.store), latent_key(f.key, enc.encoder_key)
    return store.has("latent", lkey) and repair_feature_group(store, lkey, "latent")


def _annealing(settings: dict[str, Any] | None) -> dict[str, Any] | None:
    if settings and settings["kind"] == "monotonic":
        return {"kind": "monotonic", "ratio": settings["ratio"]}
    return settings


def _new_encoder(kind: str, s: dict[str, Any]) -> Any:
    """An unfitted AE, or VAE when ``kind`` is "vae", with the campaign's settings ``s``."""
    from atomistic.models.autoencoders import VAE, AutoEncoder

    if kind == "vae":
        return VAE(
            hiddenlayers=s["hiddenlayers"],
            activation=s["activation"],
            variant=s["variant"],
            beta=s["beta"],
            annealing=_annealing(s.get("annealing")),
            per_element=s["per_element"],
        )
    return AutoEncoder(
        hiddenlayers=s["hiddenlayers"], activation=s["activation"], per_element=s["per_element"]
    )


def train_encoder(
    features: FeatureRef,
    scaler: ScalerRef,
    settings: dict[str, Any],
    split: dict[str, Any],
    workspace: str,
    on_epoch: Any = None,
) -> FeatureRef:
    """Train an AE/VAE on scaled training features (or load the one saved under its key) and
    extract latent features for every atom; a latent map of the test split beside the encoder.

    Parameters
    ----------
    features : FeatureRef
        The source features.
    scaler : ScalerRef
        Their scaler, fitted on the training split.
    settings : dict[str, Any]
        The campaign's encoder settings: ``kind`` ("ae" or "vae"), ``training``, the network.
    split : dict[str, Any]
        ``{"fractions", "seed"}``: training and validation parts fit, the test part scores.
    workspace : str
        The encoder goes to ``<workspace>/models/<encoder_key>``; a killed training resumes
        from ``<workspace>/checkpoints/<encoder_key>``.
    on_epoch : Any
        Called after each epoch (progress), or None.

    Returns
    -------
    FeatureRef
        The latent group, with the encoder, the source featurizer and scaler, and the
        encoder's held-out reconstruction error, scaled variance and KL divergence (VAE).

    Raises
    ------
    atomistic.interrupt.Interrupted
        A stop was requested during the fit (nothing is published).
    """
    from atomistic.features.latent import latent_features, latent_key, latent_labels
    from atomistic.models.autoencoders import VAE, AutoEncoder
    from atomistic.models.training import TrainingConfig

    f = features
    key = encoder_key(f, scaler, settings, split)
    target = model_dir(workspace, key)
    parts = split_arrays(f, split)
    store = Store(f.store)
    dataset = read_dataset(store, f.dataset)
    X_all, offsets = read_features(store, f.key, kind=f.kind)
    X_all = Scaler.from_dict(scaler.scaler).transform(X_all, dataset.numbers)

    def rows(idx):
        return np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in idx])

    tr, va = rows(parts["train"]), rows(parts["validation"]) if len(parts["validation"]) else None
    s = dict(settings)
    kind = s.pop("kind")
    # a killed campaign resumes the encoder's training from its last epoch
    training = TrainingConfig(**s.pop("training"), checkpoint_dir=checkpoint_dir(workspace, key))
    if (target / "card.json").exists():
        encoder = (VAE if kind == "vae" else AutoEncoder).load(target)
    else:
        encoder = _new_encoder(kind, s)
        encoder.fit(
            X_all[tr],
            dataset.numbers[tr],
            None if va is None else X_all[va],
            None if va is None else dataset.numbers[va],
            config=training,
            callback=on_epoch,
            feature_key=f.key,
        )
        publish_model(encoder, workspace, key)
    Z = latent_features(encoder, X_all, dataset.numbers)
    lkey = latent_key(f.key, encoder.encoder_key)
    attrs = {
        "featurizer": "latent",
        "dataset": f.dataset,
        "source": f.key,
        "encoder": encoder.encoder_key,
        "labels": latent_labels(encoder),
        "complete": True,
    }
    write_feature_array(store, lkey, Z, offsets, attrs)
    test_rows = rows(parts["test"])
    X_test, z_test = X_all[test_rows], dataset.numbers[test_rows]
    latent_png = target / "latent_map.png"
    if not latent_png.exists():
        from atomistic.plots import latent_map

        latent_map(Z[test_rows], z_test, path=latent_png, title=f"latent space ({kind}, test)")
    kl = getattr(encoder, "kl_divergence", None)
    return FeatureRef(
        store=f.store,
        kind="latent",
        key=lkey,
        dataset=f.dataset,
        featurizer="latent",
        params={"encoder": encoder.encoder_key, "source": f.key},
        encoder_dir=str(target),
        source_featurizer={"featurizer": f.featurizer, "params": f.params, "scaler": scaler.scaler},
        reconstruction_mse_test=float(encoder.reconstruction_error(X_test, z_test)),
        scaled_variance_test=float(X_test.var(axis=0).mean()),
        kl_test=None if kl is None else float(kl(X_test, z_test)),
        artifacts=[str(latent_png)],
    )
