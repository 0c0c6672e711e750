"""Prefect tasks for the learning stages: autoencoders and latent features, supervised models,
evaluation. Each reads its inputs from the store by reference and writes a model directory
``<workspace>/models/<key>/`` (complete only once its card is written) or a latent group.

Why it is one module of ~430 lines: the encoder, model and evaluation stages share the reference
helpers, the staging directory and its publishing rename, and their bodies still hold the
stage logic that issue 16 (item 1) moves into plain functions; once it has moved, each task is a
few lines and this module shrinks below 400 lines without a split."""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from atomistic import interrupt
from atomistic.data import read_dataset, read_split
from atomistic.features.scaling import Scaler
from atomistic.features.store import read_features, write_feature_array
from atomistic.storage import Store, content_hash
from tasks.caching import content_cache_key, stage_task
from tasks.refs import FeatureRef, ModelRef, ScalerRef

__all__ = ["train_encoder", "train_model", "evaluate_model", "model_key", "evaluation_done"]

_MODEL_TYPES = {
    "neuralnetwork": "NeuralNetwork",
    "kernelridge": "KernelRidge",
    "gaussianprocess": "GaussianProcess",
}


def model_key(
    features: FeatureRef | dict[str, Any],
    scaler: ScalerRef | dict[str, Any],
    config: dict[str, Any],
    split: dict[str, Any],
) -> str:
    """The train-model stage's key: the features', the scaler's, the settings and the split."""
    f, sc = FeatureRef.of(features), ScalerRef.of(scaler)
    # format 2 for latent features: the saved model carries its featurizer, scaler and encoder
    version = 2 if f.kind == "latent" else 1
    config = {k: v for k, v in config.items() if k != "device"}  # where it ran, not what it is
    return content_hash("atompipe-model", version, f.key, sc.key, config, split)


def _warn(message: str) -> None:
    """A warning line for the user: the Prefect run log inside a flow, stderr outside."""
    try:
        from prefect import get_run_logger

        get_run_logger().warning(message)
    except Exception:  # no active run context
        print(f"warning: {message}", file=sys.stderr)


def _publish_dir(build: Path, target: Path) -> None:
    """Move a finished directory into place in one rename; a concurrent twin wins quietly."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(build, target)
    except OSError:
        if not (target / "card.json").exists():
            raise
        shutil.rmtree(build, ignore_errors=True)


def _staging(workspace: str, key: str) -> Path:
    path = Path(workspace) / "models" / ".staging" / f"{key[:16]}-{uuid.uuid4().hex}"
    path.mkdir(parents=True)
    return path


def _split_arrays(ref: FeatureRef, split: dict[str, Any]) -> dict[str, np.ndarray]:
    return read_split(ref.store, ref.dataset, tuple(split["fractions"]), split["seed"])


def _atomic_data(ref: FeatureRef, scaler_ref: ScalerRef, indices, featurizer):
    """AtomicData for structures ``indices``: scaled cached features (the fast path)."""
    from atomistic.models.base import AtomicData

    store = Store(ref.store)
    dataset = read_dataset(store, ref.dataset).subset(indices)
    X, _ = read_features(store, ref.key, indices, kind=ref.kind)
    scaler = Scaler.from_dict(scaler_ref.scaler)
    return AtomicData(dataset, scaler.transform(X, dataset.numbers), featurizer, scaler)


def _featurizer(ref: FeatureRef):
    from atomistic.features import featurizer_from_params

    if ref.kind != "features":  # latent: source featurizer -> its scaler -> the encoder
        source = ref.source_featurizer
        if source is None or ref.encoder_dir is None:
            return None  # a latent reference from before encoders travelled with models
        from atomistic.models.autoencoders import load_autoencoder
        from atomistic.models.encoded import EncodedFeaturizer

        base = featurizer_from_params(source["featurizer"], source["params"])
        scaler = None if source["scaler"] is None else Scaler.from_dict(source["scaler"])
        return EncodedFeaturizer(base, scaler, load_autoencoder(ref.encoder_dir))
    return featurizer_from_params(ref.featurizer, ref.params)


# -- autoencoders and latent features ----------------------------------------------------------
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
    key = encoder_key(features, scaler, settings, split)
    card = Path(workspace) / "models" / key / "card.json"
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


# cache format 2: the latent reference carries its source featurizer and scaler, which models
# trained on it need to predict from structures (a reference cached before lacks them)
@stage_task("train-encoder", content_cache_key("train-encoder/2"))
def train_encoder(
    features: FeatureRef | dict[str, Any],
    scaler: ScalerRef | dict[str, Any],
    settings: dict[str, Any],
    split: dict[str, Any],
    workspace: str,
    on_epoch: Any = None,
) -> dict[str, Any]:
    """Train an AE/VAE on scaled training features; extract latent features for every atom.
    Returns the latent group's :class:`~tasks.refs.FeatureRef` (JSON form)."""
    from atomistic.features.latent import latent_features, latent_key, latent_labels
    from atomistic.models.autoencoders import VAE, AutoEncoder
    from atomistic.models.training import TrainingConfig

    f, scaler_ref = FeatureRef.of(features), ScalerRef.of(scaler)
    key = encoder_key(f, scaler_ref, settings, split)
    target = Path(workspace) / "models" / key
    parts = _split_arrays(f, split)
    store = Store(f.store)
    dataset = read_dataset(store, f.dataset)
    sc = Scaler.from_dict(scaler_ref.scaler)
    X_all, offsets = read_features(store, f.key, kind=f.kind)
    X_all = sc.transform(X_all, dataset.numbers)

    def rows(idx):
        return np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in idx])

    tr, va = rows(parts["train"]), rows(parts["validation"]) if len(parts["validation"]) else None
    s = dict(settings)
    kind = s.pop("kind")
    # a killed campaign resumes the encoder's training from its last epoch
    training = TrainingConfig(
        **s.pop("training"), checkpoint_dir=str(Path(workspace) / "checkpoints" / key)
    )
    if (target / "card.json").exists():
        encoder = (VAE if kind == "vae" else AutoEncoder).load(target)
    else:
        if kind == "vae":
            encoder = VAE(
                hiddenlayers=s["hiddenlayers"],
                activation=s["activation"],
                variant=s["variant"],
                beta=s["beta"],
                annealing=_annealing(s.get("annealing")),
                per_element=s["per_element"],
            )
        else:
            encoder = AutoEncoder(
                hiddenlayers=s["hiddenlayers"],
                activation=s["activation"],
                per_element=s["per_element"],
            )
        encoder.fit(
            X_all[tr],
            dataset.numbers[tr],
            None if va is None else X_all[va],
            None if va is None else dataset.numbers[va],
            config=training,
            callback=on_epoch,
            feature_key=f.key,
        )
        interrupt.check()  # a fit cut short by a stop request is never published
        build = _staging(workspace, key)
        encoder.save(build)
        history = getattr(encoder, "history_", None)
        if history is not None:
            (build / "history.json").write_text(json.dumps(history.to_dict()))
        _publish_dir(build, target)
        shutil.rmtree(Path(workspace) / "checkpoints" / key, ignore_errors=True)
    Z = latent_features(encoder, X_all, dataset.numbers)
    lkey = latent_key(f.key, encoder.encoder_key)
    write_feature_array(
        store,
        lkey,
        Z,
        offsets,
        {
            "featurizer": "latent",
            "dataset": f.dataset,
            "source": f.key,
            "encoder": encoder.encoder_key,
            "labels": latent_labels(encoder),
            "complete": True,
        },
    )
    test_rows = rows(parts["test"])
    X_test, z_test = X_all[test_rows], dataset.numbers[test_rows]
    artifacts = []
    latent_png = target / "latent_map.png"
    if not latent_png.exists():
        from atomistic.plots import latent_map

        latent_map(Z[test_rows], z_test, path=latent_png, title=f"latent space ({kind}, test)")
    artifacts.append(str(latent_png))
    kl = getattr(encoder, "kl_divergence", None)
    return FeatureRef(
        store=f.store,
        kind="latent",
        key=lkey,
        dataset=f.dataset,
        featurizer="latent",
        params={"encoder": encoder.encoder_key, "source": f.key},
        encoder_dir=str(target),
        source_featurizer={
            "featurizer": f.featurizer,
            "params": f.params,
            "scaler": scaler_ref.scaler,
        },
        reconstruction_mse_test=float(encoder.reconstruction_error(X_test, z_test)),
        scaled_variance_test=float(X_test.var(axis=0).mean()),
        kl_test=None if kl is None else float(kl(X_test, z_test)),
        artifacts=artifacts,
    ).to_dict()


# -- supervised models -------------------------------------------------------------------------
def model_exists(name, features, scaler, config, split, workspace, **_: Any) -> bool:
    key = model_key(features, scaler, config, split)
    return (Path(workspace) / "models" / key / "card.json").exists()


def evaluation_done(directory: str | Path, which: str = "test", plots: bool = True) -> bool:
    """The model folder holds an evaluation on split ``which`` (and its energy parity plot when
    plots are asked for): the artifacts themselves, not Prefect's record of having made them."""
    path = Path(directory) / "evaluation.json"
    try:
        done = json.loads(path.read_text()).get("split") == which
    except (OSError, ValueError, AttributeError):
        return False
    return done and (not plots or (Path(directory) / "parity_energy.png").exists())


def evaluation_exists(
    model: Any,
    features: Any = None,
    scaler: Any = None,
    split: Any = None,
    which: str = "test",
    plots: bool = True,
    **_: Any,
) -> bool:
    """:func:`evaluation_done` for a trained model's reference; False for a model still being
    trained (a future), whose folder may be new."""
    if not isinstance(model, dict | ModelRef):
        return False
    return evaluation_done(ModelRef.of(model).dir, which, plots)


@stage_task("train-model")
def train_model(
    name: str,
    features: FeatureRef | dict[str, Any],
    scaler: ScalerRef | dict[str, Any],
    config: dict[str, Any],
    split: dict[str, Any],
    workspace: str,
    on_epoch: Any = None,
) -> dict[str, Any]:
    """Fit one model on the training split (validation split for early stopping); save it.
    Returns its :class:`~tasks.refs.ModelRef` (JSON form)."""
    import time

    import atomistic.models as models

    f, sc = FeatureRef.of(features), ScalerRef.of(scaler)
    key = model_key(f, sc, config, split)
    target = Path(workspace) / "models" / key
    ref = ModelRef(
        name=name,
        key=key,
        dir=str(target),
        type=config["type"],
        features=f.key,
        dataset=f.dataset,
    )
    if (target / "card.json").exists():
        return replace(ref, trained=False).to_dict()
    parts = _split_arrays(f, split)
    featurizer = _featurizer(f)
    train = _atomic_data(f, sc, parts["train"], featurizer)
    val = _atomic_data(f, sc, parts["validation"], featurizer) if len(parts["validation"]) else None
    params = {k: v for k, v in config.items() if k not in ("type", "features")}
    klass = getattr(models, _MODEL_TYPES[config["type"]])
    if config["type"] == "neuralnetwork":
        params["training"] = {
            **params["training"],
            "checkpoint_dir": str(Path(workspace) / "checkpoints" / key),
        }
    model = klass(**params)
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", models.TrainingWarning)
        if config["type"] == "neuralnetwork":
            model.fit(train, val, callback=on_epoch)
        else:  # kernels: validation metrics, and a GP on forces rescales its stds there
            model.fit(train, val)
    for w in caught:  # name the campaign's model; it will not be registered as champion
        if issubclass(w.category, models.TrainingWarning):
            _warn(f"model {name!r}: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    fit_time = time.perf_counter() - t0
    interrupt.check()  # a fit cut short by a stop request is never published
    build = _staging(workspace, key)
    model.save(build, metrics={"fit_time_s": fit_time})
    history = getattr(model, "history_", None)
    if history is not None:
        (build / "history.json").write_text(json.dumps(history.to_dict()))
    _publish_dir(build, target)
    shutil.rmtree(Path(workspace) / "checkpoints" / key, ignore_errors=True)
    return replace(ref, trained=True, fit_time_s=fit_time).to_dict()


@stage_task("evaluate")
def evaluate_model(
    model: ModelRef | dict[str, Any],
    features: FeatureRef | dict[str, Any],
    scaler: ScalerRef | dict[str, Any],
    split: dict[str, Any],
    which: str = "test",
    plots: bool = True,
) -> dict[str, Any]:
    """Errors on the held-out split: energies from cached features, forces through the
    featurizer where the dataset has them; parity plots beside the model. Returns the model's
    :class:`~tasks.refs.ModelRef` (JSON form) with its metrics and plots."""
    from atomistic import metrics as M
    from atomistic.models.base import AtomisticModel

    mref, f = ModelRef.of(model), FeatureRef.of(features)
    directory = Path(mref.dir)
    m = AtomisticModel.load(directory)
    parts = _split_arrays(f, split)
    idx = parts[which]
    if len(idx) == 0:
        raise ValueError(
            f"evaluation.split: the {which} split of dataset {f.dataset[:12]} is empty "
            f"(fractions {tuple(split['fractions'])}); nothing to evaluate {mref.name} on"
        )
    featurizer = _featurizer(f)
    data = _atomic_data(f, ScalerRef.of(scaler), idx, featurizer)
    ds = data.dataset
    want_forces = ds.forces is not None and featurizer is not None
    pred = m.predict(data, forces=want_forces)
    n = ds.atoms_per_structure
    out: dict[str, Any] = {"split": which, "n_structures": int(ds.n_structures)}
    card = json.loads((directory / "card.json").read_text())
    if "fit_time_s" in card.get("metrics", {}):
        out["fit_time_s"] = card["metrics"]["fit_time_s"]
    out.update(M.energy_errors(ds.energy, pred["energy"], n))
    if want_forces:
        out.update(M.force_errors(ds.forces, pred["forces"]))
    if "energy_std" in pred:
        z = (ds.energy - pred["energy"]) / pred["energy_std"]
        out.update({f"z_within_{k}sigma": float(np.mean(np.abs(z) <= k)) for k in (1, 2, 3)})
    if want_forces and "forces_std" in pred:  # sparse GP on forces: are its force stds calibrated
        from scipy.stats import spearmanr

        f_err = np.abs(ds.forces - pred["forces"]).ravel()
        f_std = np.asarray(pred["forces_std"]).ravel()
        for k in (1, 2, 3):
            out[f"force_within_{k}sigma"] = float(np.mean(f_err <= k * f_std))
        out["force_std_mean"] = float(f_std.mean())
        out["force_std_error_spearman"] = float(spearmanr(f_std, f_err).statistic)
    artifacts = []
    if plots:
        from atomistic.plots import learning_curve, parity_plot

        artifacts.append(
            str(
                parity_plot(
                    ds.energy / n,
                    pred["energy"] / n,
                    directory / "parity_energy.png",
                    f"{mref.name}: energy ({which})",
                    "eV/atom",
                    std=pred["energy_std"] / n if "energy_std" in pred else None,
                )
            )
        )
        if want_forces:
            artifacts.append(
                str(
                    parity_plot(
                        ds.forces.ravel(),
                        pred["forces"].ravel(),
                        directory / "parity_forces.png",
                        f"{mref.name}: forces ({which})",
                        "eV/Å",
                        std=np.ravel(pred["forces_std"]) if "forces_std" in pred else None,
                    )
                )
            )
        hist = directory / "history.json"
        if hist.exists():
            artifacts.append(
                str(
                    learning_curve(
                        json.loads(hist.read_text()),
                        directory / "learning_curve.png",
                        str(mref.name),
                    )
                )
            )
    out = {k: (float(v) if isinstance(v, np.floating | float | int) else v) for k, v in out.items()}
    (directory / "evaluation.json").write_text(json.dumps(out, indent=1))
    return replace(mref, metrics=out, artifacts=artifacts).to_dict()
