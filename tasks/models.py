"""Prefect tasks of the learning stages: autoencoders and latent features, supervised models,
evaluation. Each is a few lines over its plain function in :mod:`tasks.pipeline.encoder` or
:mod:`tasks.pipeline.models` (which hold the stage logic, the keys and the existence checks,
re-exported here): references in, the reference's JSON form out."""

from __future__ import annotations

import sys
from typing import Any

from tasks.caching import content_cache_key, stage_task
from tasks.pipeline import encoder as encoder_work
from tasks.pipeline import models as work
from tasks.pipeline.encoder import encoder_exists, encoder_key
from tasks.pipeline.models import evaluation_done, evaluation_exists, model_exists, model_key
from tasks.refs import FeatureRef, ModelRef, ScalerRef

__all__ = [
    "encoder_exists",
    "encoder_key",
    "evaluate_model",
    "evaluation_done",
    "evaluation_exists",
    "model_exists",
    "model_key",
    "train_encoder",
    "train_model",
]


def _warn(message: str) -> None:
    """A warning line for the user: the Prefect run log inside a flow, stderr outside."""
    try:
        from prefect import get_run_logger

        get_run_logger().warning(message)
    except Exception:  # no active run context
        print(f"warning: {message}", file=sys.stderr)


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
    """:func:`tasks.pipeline.encoder.train_encoder`; returns the latent group's
    :class:`~tasks.refs.FeatureRef` (JSON form)."""
    f, sc = FeatureRef.of(features), ScalerRef.of(scaler)
    return encoder_work.train_encoder(f, sc, settings, split, workspace, on_epoch).to_dict()


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
    """:func:`tasks.pipeline.models.train_model`, its warnings in the run log; returns the model's
    :class:`~tasks.refs.ModelRef` (JSON form)."""
    f, sc = FeatureRef.of(features), ScalerRef.of(scaler)
    ref = work.train_model(name, f, sc, config, split, workspace, on_epoch, warn=_warn)
    return ref.to_dict()


@stage_task("evaluate")
def evaluate_model(
    model: ModelRef | dict[str, Any],
    features: FeatureRef | dict[str, Any],
    scaler: ScalerRef | dict[str, Any],
    split: dict[str, Any],
    which: str = "test",
    plots: bool = True,
) -> dict[str, Any]:
    """:func:`tasks.pipeline.models.evaluate_model`; returns the model's
    :class:`~tasks.refs.ModelRef` (JSON form) with its metrics and plots."""
    m, f, sc = ModelRef.of(model), FeatureRef.of(features), ScalerRef.of(scaler)
    return work.evaluate_model(m, f, sc, split, which, plots).to_dict()
