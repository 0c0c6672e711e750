"""The supervised stages as plain functions: fit one model on the training split and save it as
``<workspace>/models/<key>/`` (:func:`train_model`), and score it on a held-out split
(:func:`evaluate_model`); their keys and existence checks (:func:`model_key`,
:func:`model_exists`, :func:`evaluation_done`, :func:`evaluation_exists`)."""

from __future__ import annotations

import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from atomistic.storage import content_hash
from tasks.pipeline.common import (
    atomic_data,
    model_dir,
    model_featurizer,
    model_params,
    publish_model,
    split_arrays,
)
from tasks.refs import FeatureRef, ModelRef, ScalerRef

__all__ = [
    "evaluate_model",
    "evaluation_done",
    "evaluation_exists",
    "model_exists",
    "model_key",
    "model_class",
    "train_model",
]

_MODEL_TYPES = {
    "neuralnetwork": "NeuralNetwork",
    "kernelridge": "KernelRidge",
    "gaussianprocess": "GaussianProcess",
}


def model_class(config: dict[str, Any]) -> type:
    """The class of a campaign model's ``type`` (``neuralnetwork`` -> ``NeuralNetwork``, ...)."""
    import atomistic.models as models

    return getattr(models, _MODEL_TYPES[config["type"]])


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


def model_exists(name, features, scaler, config, split, workspace, **_: Any) -> bool:
    """The model of :func:`train_model`'s arguments is saved (its card is written)."""
    key = model_key(features, scaler, config, split)
    return (model_dir(workspace, key) / "card.json").exists()


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


def _stderr(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def train_model(
    name: str,
    features: FeatureRef,
    scaler: ScalerRef,
    config: dict[str, Any],
    split: dict[str, Any],
    workspace: str,
    on_epoch: Any = None,
    warn: Callable[[str], None] = _stderr,
) -> ModelRef:
    """Fit one model on the training split (validation split for early stopping); save it,
    unless its directory is complete already.

    Parameters
    ----------
    name : str
        The campaign's name for the model (in warnings and the reference).
    features : FeatureRef
        Its features (a feature or latent group).
    scaler : ScalerRef
        Their scaler.
    config : dict[str, Any]
        The campaign's model settings: ``type`` ("neuralnetwork", "kernelridge",
        "gaussianprocess"), ``features`` and the model's parameters.
    split : dict[str, Any]
        ``{"fractions", "seed"}``.
    workspace : str
        The model goes to ``<workspace>/models/<model_key>``; a network's killed training
        resumes from ``<workspace>/checkpoints/<model_key>``.
    on_epoch : Any
        Called after each epoch of a network (progress), or None.
    warn : Callable[[str], None]
        Told, naming the model, each :class:`atomistic.models.TrainingWarning` of the fit (a
        model that learned nothing useful); by default a line on stderr.

    Returns
    -------
    ModelRef
        ``trained`` False when it was saved already; else True, with ``fit_time_s``.

    Raises
    ------
    atomistic.interrupt.Interrupted
        A stop was requested during the fit (nothing is published).
    """
    import atomistic.models as models

    key = model_key(features, scaler, config, split)
    target = model_dir(workspace, key)
    ref = ModelRef(
        name=name,
        key=key,
        dir=str(target),
        type=config["type"],
        features=features.key,
        dataset=features.dataset,
    )
    if (target / "card.json").exists():
        return replace(ref, trained=False)
    parts = split_arrays(features, split)
    featurizer = model_featurizer(features)
    train = atomic_data(features, scaler, parts["train"], featurizer)
    val = None
    if len(parts["validation"]):
        val = atomic_data(features, scaler, parts["validation"], featurizer)
    model = model_class(config)(**model_params(config, workspace, key))
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", models.TrainingWarning)
        if config["type"] == "neuralnetwork":
            model.fit(train, val, callback=on_epoch)
        else:  # kernels: validation metrics, and a GP on forces rescales its stds there
            model.fit(train, val)
    for w in caught:  # name the campaign's model; it will not be registered as champion
        if issubclass(w.category, models.TrainingWarning):
            warn(f"model {name!r}: {w.message}")
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    fit_time = time.perf_counter() - t0
    publish_model(model, workspace, key, metrics={"fit_time_s": fit_time})
    return replace(ref, trained=True, fit_time_s=fit_time)


def _errors(ds: Any, pred: dict[str, Any], want_forces: bool) -> dict[str, Any]:
    """Energy (and force) errors of ``pred`` on dataset ``ds``; the calibration of predicted
    standard deviations where the model gives them."""
    from atomistic import metrics as M

    out = dict(M.energy_errors(ds.energy, pred["energy"], ds.atoms_per_structure))
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
    return out


def _plots(
    directory: Path, name: str, which: str, ds: Any, pred: dict[str, Any], want_forces: bool
) -> list[str]:
    """Energy (and force) parity plots and the learning curve (from ``history.json``), written
    into the model directory; their paths."""
    from atomistic.plots import learning_curve, parity_plot

    n = ds.atoms_per_structure
    energy_std = pred["energy_std"] / n if "energy_std" in pred else None
    paths = [
        parity_plot(
            ds.energy / n,
            pred["energy"] / n,
            directory / "parity_energy.png",
            f"{name}: energy ({which})",
            "eV/atom",
            std=energy_std,
        )
    ]
    if want_forces:
        forces_std = np.ravel(pred["forces_std"]) if "forces_std" in pred else None
        paths.append(
            parity_plot(
                ds.forces.ravel(),
                pred["forces"].ravel(),
                directory / "parity_forces.png",
                f"{name}: forces ({which})",
                "eV/Å",
                std=forces_std,
            )
        )
    hist = directory / "history.json"
    if hist.exists():
        history = json.loads(hist.read_text())
        paths.append(learning_curve(history, directory / "learning_curve.png", name))
    return [str(p) for p in paths]


def evaluate_model(
    model: ModelRef,
    features: FeatureRef,
    scaler: ScalerRef,
    split: dict[str, Any],
    which: str = "test",
    plots: bool = True,
) -> ModelRef:
    """Errors on a held-out split: energies from cached features, forces through the featurizer
    where the dataset has them; ``evaluation.json`` and parity plots beside the model.

    Parameters
    ----------
    model : ModelRef
        A saved model.
    features : FeatureRef
        The features it was trained on.
    scaler : ScalerRef
        Their scaler.
    split : dict[str, Any]
        ``{"fractions", "seed"}``.
    which : str
        The part of the split scored: "test" or "validation".
    plots : bool
        Whether to draw the parity plots and the learning curve.

    Returns
    -------
    ModelRef
        ``model`` with its ``metrics`` (``evaluation.json``: ``split``, ``n_structures``,
        ``fit_time_s`` when the card has it, the errors) and the plots (``artifacts``).

    Raises
    ------
    ValueError
        The split's part ``which`` is empty.
    """
    from atomistic.models.base import AtomisticModel

    directory = Path(model.dir)
    m = AtomisticModel.load(directory)
    idx = split_arrays(features, split)[which]
    if len(idx) == 0:
        raise ValueError(
            f"evaluation.split: the {which} split of dataset {features.dataset[:12]} is empty "
            f"(fractions {tuple(split['fractions'])}); nothing to evaluate {model.name} on"
        )
    featurizer = model_featurizer(features)
    ds = (data := atomic_data(features, scaler, idx, featurizer)).dataset
    want_forces = ds.forces is not None and featurizer is not None
    pred = m.predict(data, forces=want_forces)
    out: dict[str, Any] = {"split": which, "n_structures": int(ds.n_structures)}
    card = json.loads((directory / "card.json").read_text())
    if "fit_time_s" in card.get("metrics", {}):
        out["fit_time_s"] = card["metrics"]["fit_time_s"]
    out.update(_errors(ds, pred, want_forces))
    artifacts = _plots(directory, str(model.name), which, ds, pred, want_forces) if plots else []
    out = {k: (float(v) if isinstance(v, np.floating | float | int) else v) for k, v in out.items()}
    (directory / "evaluation.json").write_text(json.dumps(out, indent=1))
    return replace(model, metrics=out, artifacts=artifacts)
