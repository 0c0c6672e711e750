"""Prefect tasks of the active-learning loop (docs/active-learning.md): each a few lines over its
plain function in :mod:`tasks.pipeline.active` or :mod:`tasks.pipeline.pool`, which hold the stage
logic, the keys and the existence checks (re-exported here).

Every stage is keyed by content, so a loop that is killed resumes where it stopped: ``train``
(``<workspace>/models/<key>/``), ``explore`` (``<workspace>/active/explore/<key>.extxyz``),
``select`` (a small list of indices), ``label`` (``<workspace>/active/labels/``, one file per
structure content, on Dask; not a Prefect task, the label store is its cache) and ``grow`` (a new
dataset version and its features).
"""

from __future__ import annotations

from typing import Any

from tasks.caching import stage_task
from tasks.pipeline import active as work
from tasks.pipeline import pool
from tasks.pipeline.active import active_model_key, explore_exists, explore_key, train_exists
from tasks.pipeline.pool import label_stage
from tasks.refs import DatasetRef, FeatureRef, ModelRef, ScalerRef

__all__ = [
    "active_model_key",
    "explore_exists",
    "explore_key",
    "explore_stage",
    "grow_stage",
    "label_stage",
    "select_stage",
    "train_exists",
    "train_stage",
]


@stage_task("active-train")
def train_stage(
    features: FeatureRef | dict[str, Any],
    scaler: ScalerRef | dict[str, Any],
    config: dict[str, Any],
    parts: dict[str, list[int]],
    previous: ModelRef | dict[str, Any] | None,
    workspace: str,
    test: dict[str, Any],
) -> dict[str, Any]:
    """:func:`tasks.pipeline.active.train_stage`; returns the model's :class:`~tasks.refs.ModelRef`
    (JSON form) with its metrics."""
    f, sc = FeatureRef.of(features), ScalerRef.of(scaler)
    prev = None if previous is None else ModelRef.of(previous)
    return work.train_stage(f, sc, config, parts, prev, workspace, test).to_dict()


@stage_task("active-explore")
def explore_stage(
    model: ModelRef | dict[str, Any],
    dataset: DatasetRef | dict[str, Any],
    starts: list[int],
    settings: dict[str, Any],
    seed: int,
    workspace: str,
) -> dict[str, Any]:
    """:func:`tasks.pipeline.active.explore_stage`: the snapshots' file and uncertainties."""
    m, d = ModelRef.of(model), DatasetRef.of(dataset)
    return work.explore_stage(m, d, starts, settings, seed, workspace)


@stage_task("active-select")
def select_stage(
    explored: dict[str, Any],
    model: ModelRef | dict[str, Any],
    features: FeatureRef | dict[str, Any],
    scaler: ScalerRef | dict[str, Any],
    validation: list[int],
    settings: dict[str, Any],
    max_labels: int,
    seed: int,
) -> dict[str, Any]:
    """:func:`tasks.pipeline.active.select_stage`: the snapshots to label and the threshold."""
    m, f, sc = ModelRef.of(model), FeatureRef.of(features), ScalerRef.of(scaler)
    return work.select_stage(explored, m, f, sc, validation, settings, max_labels, seed)


@stage_task("active-grow")
def grow_stage(
    parent: DatasetRef | dict[str, Any],
    features: FeatureRef | dict[str, Any],
    explored: dict[str, Any],
    indices: list[int],
    labels: dict[str, Any],
) -> dict[str, Any]:
    """:func:`tasks.pipeline.pool.grow_stage`; returns {"dataset": DatasetRef, "features":
    FeatureRef} (JSON forms)."""
    p, f = DatasetRef.of(parent), FeatureRef.of(features)
    dataset, grown = pool.grow_stage(p, f, explored, indices, labels)
    return {"dataset": dataset.to_dict(), "features": grown.to_dict()}
