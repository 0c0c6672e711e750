"""The campaign flow: datasets → features (Dask) → scaler → latent → models → evaluation → MLflow.

Every stage is a cached Prefect task keyed by content (tasks/caching.py): a rerun with nothing
changed is a cache hit at every stage; a changed model parameter retrains that model alone; a
changed feature parameter reruns that feature set and everything downstream of it.
Independent branches (feature sets, models) are submitted concurrently.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.settings import get_current_settings

from flows.campaign_run import CampaignRun, StageError
from flows.config import CampaignConfig
from flows.fastpath import remember_run
from tasks.record import check_tracking

__all__ = ["campaign", "featurize_flow", "train_flow", "run_campaign", "StageError"]


def _model_names(cfg: CampaignConfig, models: list[str] | None) -> list[str]:
    names = list(cfg.models) if models is None else list(models)
    unknown = [n for n in names if n not in cfg.models]
    if unknown:
        raise ValueError(f"campaign {cfg.name}: no model {unknown[0]!r}; it has {list(cfg.models)}")
    return names


@flow(name="atompipe-campaign", log_prints=True)
def campaign(config: dict[str, Any], show_progress: bool = True) -> dict[str, Any]:
    """The whole campaign, given its validated configuration (``CampaignConfig.model_dump()``):
    datasets, features, latent features, every model, evaluation, MLflow."""
    return train(config, None, show_progress)


@flow(name="atompipe-featurize", log_prints=True)
def featurize_flow(config: dict[str, Any], show_progress: bool = True) -> dict[str, Any]:
    """Datasets, feature sets, scalers and latent feature sets of a campaign; no models."""
    run = CampaignRun(CampaignConfig.model_validate(config), show_progress)
    try:
        with run.progress:
            datasets = run.ingest()
            run.check_data(datasets, [])
            features, _ = run.features(datasets)
    except Exception as exc:
        cause = run.root_cause(exc)
        if cause is exc:
            raise
        raise cause from exc
    return run.summary(datasets, features)


@flow(name="atompipe-train", log_prints=True)
def train_flow(
    config: dict[str, Any], models: list[str] | None = None, show_progress: bool = True
) -> dict[str, Any]:
    """Train, evaluate and record the campaign's ``models`` (all when None); the feature stages
    before them are cache hits when the features are already in the store."""
    return train(config, models, show_progress)


def train(config: dict[str, Any], models: list[str] | None, show_progress: bool) -> dict[str, Any]:
    cfg = CampaignConfig.model_validate(config)
    names = _model_names(cfg, models)
    check_tracking(cfg.tracking_uri)  # an unreachable MLflow server fails now, not after training
    run = CampaignRun(cfg, show_progress)
    try:
        with run.progress:
            datasets = run.ingest(names)
            run.check_data(datasets, names)
            only = None if models is None else {cfg.models[n].features for n in names}
            features, scalers = run.features(datasets, only)
            results = run.models(names, features, scalers)
            record = run.record(datasets, features, results)
    except Exception as exc:
        cause = run.root_cause(exc)
        if cause is exc:
            raise
        raise cause from exc
    if models is None:  # the whole campaign is complete: its run record for the no-op rerun
        folder = get_current_settings().results.local_storage_path
        remember_run(cfg, run.calls, folder)
    return run.summary(datasets, features, results, record)


def run_campaign(
    cfg: CampaignConfig,
    show_progress: bool = True,
    *,
    features_only: bool = False,
    models: list[str] | None = None,
) -> dict[str, Any]:
    """Run the campaign flow in this process (Prefect starts an ephemeral API if none is set):
    the whole campaign, only its features (``features_only``), or only some ``models``."""
    config = cfg.model_dump(mode="json")
    if features_only:
        return featurize_flow(config, show_progress=show_progress)
    if models is not None:
        _model_names(cfg, models)  # fail before any flow starts
        return train_flow(config, models, show_progress=show_progress)
    return campaign(config, show_progress=show_progress)
