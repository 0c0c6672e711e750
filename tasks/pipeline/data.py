"""The data stages as plain functions: ingest (structure files validated and stored as
``datasets/<key>``, :func:`ingest`; its one key :func:`ingest_key` and existence check
:func:`ingest_exists`) and the scaler fitted on the training split's features
(:func:`fit_scaler`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from atomistic.data import (
    DEFAULT_SPLIT,
    DataError,
    expand_paths,
    file_format,
    load_files,
    make_split,
    read_dataset,
    read_split,
    write_dataset,
)
from atomistic.features.scaling import Scaler
from atomistic.features.store import read_features
from atomistic.storage import Store, StoreError, content_hash
from tasks.refs import DatasetRef, FeatureRef, ScalerRef

__all__ = ["fit_scaler", "ingest", "ingest_exists", "ingest_key"]


def ingest_key(
    paths: list[str],
    store_url: str,
    fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    seed: int = 0,
    format: str | None = None,
    energy_key: str = "energy",
    forces_key: str = "forces",
    needs_forces: str | None = None,
) -> str:
    """The ingest stage's one key, for Prefect's cache and for the store's record of what a
    source became (:func:`ingest`, :func:`ingest_exists`).

    Parameters
    ----------
    paths, store_url, fractions, seed, format, energy_key, forces_key, needs_forces
        :func:`ingest`'s arguments; ``needs_forces`` is not part of the key.

    Returns
    -------
    str
        ``atompipe-ingest-<sha256>`` of each file's bytes and the format ASE reads it as
        (inferred from its suffix), and the other parameters; never the files' names or times.
    """
    digests = [
        [hashlib.sha256(Path(path).read_bytes()).hexdigest(), file_format(path, format)]
        for path in expand_paths(paths)
    ]
    params = {
        "store_url": store_url,
        "fractions": fractions,
        "seed": seed,
        "format": format,
        "energy_key": energy_key,
        "forces_key": forces_key,
    }
    return "atompipe-ingest-" + content_hash("ingest", 2, digests, params)


def ingest_exists(paths: list[str], store_url: str, *args: Any, **kwargs: Any) -> bool:
    """The store records what the source of :func:`ingest`'s arguments became."""
    return Store(store_url).lookup(ingest_key(paths, store_url, *args, **kwargs)) is not None


def ingest(
    paths: list[str],
    store_url: str,
    fractions: tuple[float, float, float],
    seed: int,
    format: str | None,
    energy_key: str,
    forces_key: str,
    needs_forces: str | None,
) -> DatasetRef:
    """Validate and store structures, and record in the store what their source became.

    Parameters
    ----------
    paths, store_url, fractions, seed, format, energy_key, forces_key
        As :func:`ingest_key` takes them: the files (globs and folders expanded), the store,
        the split and how to read the files.
    needs_forces : str or None
        The error to raise (naming the models that train on forces) when the files hold no
        forces, before anything is written; not part of the key.

    Returns
    -------
    DatasetRef
        With ``summary`` and ``written`` (whether this call wrote the dataset).

    Raises
    ------
    atomistic.data.DataError
        Unreadable or invalid structures; no forces where ``needs_forces`` asks for them; a
        dataset too small for the split (an empty training or test set), naming the files.
    atomistic.storage.StoreError
        The store cannot be written to.
    """
    ds = load_files(paths, format=format, energy_key=energy_key, forces_key=forces_key)
    if needs_forces and ds.forces is None:
        raise DataError(needs_forces)
    parts = make_split(ds.n_structures, fractions, seed, ds.structure_groups())
    empty = [name for name in ("train", "test") if len(parts[name]) == 0]
    if empty:
        raise DataError(
            f"{', '.join(paths)}: {ds.n_structures} structure(s) split {tuple(fractions)} "
            f"leave the {empty[0]} set empty; add structures or change split.fractions"
        )
    key, written = write_dataset(ds, store_url, split=fractions, seed=seed)
    store = Store(store_url)
    source_key = ingest_key(paths, store_url, fractions, seed, format, energy_key, forces_key)
    if store.lookup(source_key) != key:  # a store that has it all is never written to
        try:
            store.remember(source_key, key)
        except OSError as exc:
            raise StoreError(f"cannot write to the store {store_url}: {exc}") from exc
    return DatasetRef(store=store_url, key=key, summary=ds.summary(), written=written)


def fit_scaler(
    features: FeatureRef,
    kind: str,
    feature_range: tuple[float, float],
    per_element: bool,
    fractions: tuple[float, float, float],
    seed: int,
) -> ScalerRef:
    """Fit a scaler on the training split's features only.

    Parameters
    ----------
    features : FeatureRef
        The features (a feature or latent group).
    kind : str
        :class:`atomistic.features.scaling.Scaler`'s kind ("minmax", ...).
    feature_range : tuple[float, float]
        The min-max range.
    per_element : bool
        One scaling per element.
    fractions : tuple[float, float, float]
        The split's fractions.
    seed : int
        The split's seed.

    Returns
    -------
    ScalerRef
        The scaler's JSON form and its key (of the features and the scaler).
    """
    store = Store(features.store)
    split = read_split(store, features.dataset, fractions, seed)
    X, _ = read_features(store, features.key, split["train"], kind=features.kind)
    numbers = None
    if per_element:
        numbers = read_dataset(store, features.dataset).subset(split["train"]).numbers
    d = Scaler(kind, feature_range, per_element).fit(X, numbers).to_dict()
    return ScalerRef(scaler=d, key=content_hash("scaler", features.key, d))
