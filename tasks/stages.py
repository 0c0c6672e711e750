"""Prefect tasks: one per stage, thin adapters from references in to references out.

Each returns a small JSON-able reference (store URL, content key, a few figures), never arrays;
the arrays live in Zarr or in the model directory under that key. Results are persisted as JSON
in the workspace so that caching holds across processes and days.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from atomistic.data import (
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
from atomistic.features.store import feature_key, read_features, repair_feature_group
from atomistic.storage import Store, StoreError, content_hash
from tasks.caching import stage_task
from tasks.featurize import build_featurizer, featurize_dataset
from tasks.refs import DatasetRef, FeatureRef, ScalerRef

__all__ = [
    "ingest",
    "ingest_exists",
    "ingest_key",
    "featurize",
    "featurize_exists",
    "fit_scaler",
]


def ingest_key(
    paths: list[str],
    store_url: str,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
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


def _ingest_key(context: Any, parameters: dict[str, Any]) -> str:
    return ingest_key(**parameters)


def ingest_exists(paths: list[str], store_url: str, *args: Any, **kwargs: Any) -> bool:
    """The store records what the source of :func:`ingest`'s arguments became."""
    return Store(store_url).lookup(ingest_key(paths, store_url, *args, **kwargs)) is not None


@stage_task("ingest", _ingest_key)
def ingest(
    paths: list[str],
    store_url: str,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    format: str | None = None,
    energy_key: str = "energy",
    forces_key: str = "forces",
    needs_forces: str | None = None,
) -> dict[str, Any]:
    """Validate and store structures; returns a :class:`~tasks.refs.DatasetRef` (JSON form).

    ``needs_forces``: the error to raise (naming the models that train on forces) when the
    files hold no forces, before anything is written; not part of the cache key.

    A dataset too small for the split (an empty training or test set) is refused before
    anything is written, naming the files."""
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
    return DatasetRef(store=store_url, key=key, summary=ds.summary(), written=written).to_dict()


def featurize_exists(
    dataset: DatasetRef | dict[str, Any], name: str, params: dict[str, Any], **_: Any
) -> bool:
    """The feature group is complete and every chunk matches its checksum; damaged chunks are
    marked to be computed again (features are derived data)."""
    d = DatasetRef.of(dataset)
    f = build_featurizer(name, params, d.elements)
    store = Store(d.store)
    key = feature_key(d.key, f.name, f.get_params())
    return store.has("features", key) and repair_feature_group(store, key, "features")


@stage_task("featurize")
def featurize(
    dataset: DatasetRef | dict[str, Any],
    name: str,
    params: dict[str, Any],
    scheduler: str | None = None,
    n_workers: int | None = None,
    rows_per_chunk: int | None = None,
    on_chunk: Any = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Featurize a stored dataset on Dask (a LocalCluster unless ``scheduler`` is given), on
    ``device``."""
    from tasks.cluster import dask_client

    d = DatasetRef.of(dataset)
    with dask_client(scheduler, n_workers) as client:
        ref = featurize_dataset(
            d.store,
            d.key,
            name,
            params,
            client=client,
            rows_per_chunk=rows_per_chunk,
            on_chunk=on_chunk,
            device=device,
        )
    return ref


@stage_task("fit-scaler")
def fit_scaler(
    features: FeatureRef | dict[str, Any],
    kind: str = "minmax",
    feature_range: tuple[float, float] = (-1.0, 1.0),
    per_element: bool = False,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
) -> dict[str, Any]:
    """Fit the scaler on the training split's features only; returns its :class:`ScalerRef`
    (the scaler as a JSON dict)."""
    f = FeatureRef.of(features)
    store = Store(f.store)
    split = read_split(store, f.dataset, fractions, seed)
    X, _ = read_features(store, f.key, split["train"], kind=f.kind)
    numbers = None
    if per_element:
        ds = read_dataset(store, f.dataset).subset(split["train"])
        numbers = ds.numbers
    scaler = Scaler(kind, feature_range, per_element).fit(X, numbers)
    d = scaler.to_dict()
    return ScalerRef(scaler=d, key=content_hash("scaler", f.key, d)).to_dict()
