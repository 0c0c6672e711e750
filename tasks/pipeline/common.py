"""What the stages that train or predict share: model directories, written through a staging
folder and published by one rename, files written atomically, and the scaled cached features of
some structures (:class:`atomistic.models.base.AtomicData`)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from atomistic import interrupt
from atomistic.data import read_dataset, read_split
from atomistic.features.scaling import Scaler
from atomistic.features.store import read_features
from atomistic.storage import Store
from tasks.refs import FeatureRef, ScalerRef

__all__ = [
    "atomic_data",
    "checkpoint_dir",
    "model_dir",
    "model_featurizer",
    "model_params",
    "publish_dir",
    "publish_model",
    "split_arrays",
    "staging",
    "write_atomic",
]


def model_dir(workspace: str | Path, key: str) -> Path:
    """The model directory of content key ``key``: ``<workspace>/models/<key>``.

    Parameters
    ----------
    workspace : str or pathlib.Path
        The campaign's workspace.
    key : str
        The stage's content key.

    Returns
    -------
    pathlib.Path
        Complete once its ``card.json`` is written.
    """
    return Path(workspace) / "models" / key


def checkpoint_dir(workspace: str | Path, key: str) -> str:
    """``<workspace>/checkpoints/<key>``: where a training of content key ``key`` keeps its
    checkpoints (resumed after a kill; removed once the model is published)."""
    return str(Path(workspace) / "checkpoints" / key)


def model_params(config: dict[str, Any], workspace: str | Path, key: str) -> dict[str, Any]:
    """A model's constructor arguments from its campaign settings; a network's training keeps
    its checkpoints under :func:`checkpoint_dir` (a killed training resumes from them).

    Parameters
    ----------
    config : dict[str, Any]
        The campaign's model settings: ``type``, ``features`` and the model's parameters.
    workspace, key : str or pathlib.Path, str
        As :func:`model_dir` takes them.

    Returns
    -------
    dict[str, Any]
        ``config`` without ``type`` and ``features``.
    """
    params = {k: v for k, v in config.items() if k not in ("type", "features")}
    if config["type"] == "neuralnetwork":
        checkpoints = checkpoint_dir(workspace, key)
        params["training"] = {**params["training"], "checkpoint_dir": checkpoints}
    return params


def staging(workspace: str | Path, key: str) -> Path:
    """A new, empty folder ``<workspace>/models/.staging/<key[:16]>-<random>``, unique to this
    call, to build model directory ``key`` in."""
    path = Path(workspace) / "models" / ".staging" / f"{key[:16]}-{uuid.uuid4().hex}"
    path.mkdir(parents=True)
    return path


def publish_dir(build: Path, target: Path) -> None:
    """Move a finished directory into place in one rename; a concurrent twin wins quietly.

    Parameters
    ----------
    build : pathlib.Path
        The finished directory (from :func:`staging`).
    target : pathlib.Path
        Its place; when the rename fails because a twin published ``target`` (its
        ``card.json`` exists), ``build`` is removed instead.

    Raises
    ------
    OSError
        The rename failed and no complete ``target`` is there.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(build, target)
    except OSError:
        if not (target / "card.json").exists():
            raise
        shutil.rmtree(build, ignore_errors=True)


def publish_model(
    model: Any, workspace: str | Path, key: str, history: bool = True, **save: Any
) -> Path:
    """Save a fitted model (or encoder) as model directory ``key``, unless a stop was requested.

    Parameters
    ----------
    model : Any
        Has ``save(path, **save)``; its ``history_`` (when it has one and ``history`` is True)
        goes to ``history.json`` beside it.
    workspace, key : str or pathlib.Path, str
        As :func:`model_dir` takes them; the key's checkpoints are removed once the directory
        is published.
    history : bool
        Whether to write ``history.json``.
    **save : Any
        Passed to ``model.save`` (e.g. ``metrics``).

    Returns
    -------
    pathlib.Path
        The published directory.

    Raises
    ------
    atomistic.interrupt.Interrupted
        A stop was requested: a fit cut short is never published.
    """
    interrupt.check()
    build = staging(workspace, key)
    model.save(build, **save)
    fitted = getattr(model, "history_", None) if history else None
    if fitted is not None:
        (build / "history.json").write_text(json.dumps(fitted.to_dict()))
    target = model_dir(workspace, key)
    publish_dir(build, target)
    shutil.rmtree(checkpoint_dir(workspace, key), ignore_errors=True)
    return target


def write_atomic(path: Path, text_writer: Callable[[str], Any]) -> None:
    """Write a file through a temporary name and a rename: it is complete or absent.

    Parameters
    ----------
    path : pathlib.Path
        The file; its folder is created.
    text_writer : Callable[[str], Any]
        Writes the content to the temporary path it is given.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=path.suffix)
    os.close(fd)
    try:
        text_writer(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def split_arrays(ref: FeatureRef, split: dict[str, Any]) -> dict[str, np.ndarray]:
    """The structure indices of each part of the split of the features' dataset.

    Parameters
    ----------
    ref : FeatureRef
        The features (their store and dataset).
    split : dict[str, Any]
        ``{"fractions": [train, validation, test], "seed": int}``.

    Returns
    -------
    dict[str, numpy.ndarray]
        ``train``, ``validation``, ``test``.
    """
    return read_split(ref.store, ref.dataset, tuple(split["fractions"]), split["seed"])


def model_featurizer(ref: FeatureRef) -> Any:
    """The featurizer that computes features ``ref`` from structures.

    Parameters
    ----------
    ref : FeatureRef
        A feature group, or a latent group (its source featurizer, that one's scaler, then the
        encoder).

    Returns
    -------
    Any
        A featurizer, or None for a latent reference from before encoders travelled with
        models.
    """
    from atomistic.features import featurizer_from_params

    if ref.kind != "features":
        source = ref.source_featurizer
        if source is None or ref.encoder_dir is None:
            return None
        from atomistic.models.autoencoders import load_autoencoder
        from atomistic.models.encoded import EncodedFeaturizer

        base = featurizer_from_params(source["featurizer"], source["params"])
        scaler = None if source["scaler"] is None else Scaler.from_dict(source["scaler"])
        return EncodedFeaturizer(base, scaler, load_autoencoder(ref.encoder_dir))
    return featurizer_from_params(ref.featurizer, ref.params)


def atomic_data(ref: FeatureRef, scaler_ref: ScalerRef, indices: Any, featurizer: Any) -> Any:
    """Structures ``indices`` with their scaled cached features (the fast path).

    Parameters
    ----------
    ref : FeatureRef
        The features, read from the store.
    scaler_ref : ScalerRef
        Their scaler.
    indices : numpy.ndarray or list[int]
        Structure indices into the features' dataset.
    featurizer : Any
        Travels with the data (:func:`model_featurizer`), for forces and for saved models.

    Returns
    -------
    atomistic.models.base.AtomicData
        The structures, their scaled features, the featurizer and the scaler.
    """
    from atomistic.models.base import AtomicData

    store = Store(ref.store)
    dataset = read_dataset(store, ref.dataset).subset(indices)
    X, _ = read_features(store, ref.key, indices, kind=ref.kind)
    scaler = Scaler.from_dict(scaler_ref.scaler)
    return AtomicData(dataset, scaler.transform(X, dataset.numbers), featurizer, scaler)
