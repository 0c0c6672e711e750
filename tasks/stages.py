"""Prefect tasks of the data stages: ingest, featurize, fit the scaler. Each is a few lines over
its plain function (:mod:`tasks.pipeline.data`, :func:`tasks.featurize.featurize_dataset`) and
returns the JSON form of a small reference (store URL, content key, a few figures), never
arrays. Results are persisted as JSON in the workspace so that caching holds across processes
and days. The keys and existence checks are re-exported from :mod:`tasks.pipeline.data`.
"""

from __future__ import annotations

from typing import Any

from atomistic.data import DEFAULT_SPLIT
from atomistic.features.store import feature_key, repair_feature_group
from atomistic.storage import Store
from tasks.caching import stage_task
from tasks.featurize import build_featurizer, featurize_dataset
from tasks.pipeline import data
from tasks.pipeline.data import ingest_exists, ingest_key
from tasks.refs import DatasetRef, FeatureRef

__all__ = [
    "ingest",
    "ingest_exists",
    "ingest_key",
    "featurize",
    "featurize_exists",
    "fit_scaler",
]


def _ingest_key(context: Any, parameters: dict[str, Any]) -> str:
    return ingest_key(**parameters)


# the parameters are ingest_key's: Prefect hands them to it by name (_ingest_key)
@stage_task("ingest", _ingest_key)
def ingest(
    paths: list[str],
    store_url: str,
    fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    seed: int = 0,
    format: str | None = None,
    energy_key: str = "energy",
    forces_key: str = "forces",
    needs_forces: str | None = None,
) -> dict[str, Any]:
    """:func:`tasks.pipeline.data.ingest`; returns a :class:`~tasks.refs.DatasetRef` (JSON form)."""
    args = (fractions, seed, format, energy_key, forces_key, needs_forces)
    return data.ingest(paths, store_url, *args).to_dict()


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
    """:func:`tasks.featurize.featurize_dataset` on Dask (a LocalCluster unless ``scheduler`` is
    given), on ``device``; returns a :class:`~tasks.refs.FeatureRef` (JSON form)."""
    from tasks.cluster import dask_client

    d = DatasetRef.of(dataset)
    with dask_client(scheduler, n_workers) as client:
        return featurize_dataset(
            d.store,
            d.key,
            name,
            params,
            client=client,
            rows_per_chunk=rows_per_chunk,
            on_chunk=on_chunk,
            device=device,
        )


@stage_task("fit-scaler")
def fit_scaler(
    features: FeatureRef | dict[str, Any],
    kind: str = "minmax",
    feature_range: tuple[float, float] = (-1.0, 1.0),
    per_element: bool = False,
    fractions: tuple[float, float, float] = DEFAULT_SPLIT,
    seed: int = 0,
) -> dict[str, Any]:
    """:func:`tasks.pipeline.data.fit_scaler`; returns its :class:`~tasks.refs.ScalerRef` (JSON
    form)."""
    f = FeatureRef.of(features)
    return data.fit_scaler(f, kind, feature_range, per_element, fractions, seed).to_dict()
