"""The campaign flow: datasets → features (Dask) → scaler → latent → models → evaluation → MLflow.

Every stage is a cached Prefect task keyed by content (tasks/caching.py): a rerun with nothing
changed is a cache hit at every stage; a changed model parameter retrains that model alone; a
changed feature parameter reruns that feature set and everything downstream of it.
Independent branches (feature sets, models) are submitted concurrently.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.config import CampaignConfig, LatentFeatures
from flows.progress import CampaignProgress
from tasks.caching import submit_cached
from tasks.models import (
    encoder_exists,
    evaluate_model,
    evaluation_exists,
    model_exists,
    train_encoder,
    train_model,
)
from tasks.record import record_campaign
from tasks.stages import featurize, featurize_exists, fit_scaler, ingest, ingest_exists

__all__ = ["campaign", "run_campaign"]


def _split(cfg: CampaignConfig) -> dict[str, Any]:
    return {"fractions": list(cfg.split.fractions), "seed": cfg.split.seed}


@flow(name="atompipe-campaign", log_prints=True)
def campaign(config: dict[str, Any], show_progress: bool = True) -> dict[str, Any]:
    """Run a campaign given its validated configuration (``CampaignConfig.model_dump()``)."""
    cfg = CampaignConfig.model_validate(config)
    logger = get_run_logger()
    t0 = time.perf_counter()
    store_url = cfg.store_url
    Path(cfg.workspace).mkdir(parents=True, exist_ok=True)
    split = _split(cfg)
    progress = CampaignProgress(enabled=show_progress)
    stages: dict[str, Any] = {}  # label -> future, for the states in the summary

    with progress:
        # 1. datasets
        datasets = {
            name: submit_cached(
                ingest,
                ingest_exists,
                [str(p) for p in ds.paths],
                store_url,
                tuple(split["fractions"]),
                split["seed"],
                ds.format,
            )
            for name, ds in cfg.datasets.items()
        }
        stages.update({f"ingest/{n}": f for n, f in datasets.items()})
        datasets = {name: fut.result() for name, fut in datasets.items()}
        for name, ref in datasets.items():
            logger.info(
                "dataset %s: %s (%d structures)",
                name,
                ref["key"][:12],
                ref["summary"]["structures"],
            )

        # 2. direct feature sets (Dask), concurrently
        futures = {}
        for name, feat in cfg.features.items():
            if isinstance(feat, LatentFeatures):
                continue
            futures[name] = submit_cached(
                featurize,
                featurize_exists,
                datasets[feat.dataset],
                feat.type,
                feat.featurizer_params(),
                scheduler=cfg.dask.address,
                n_workers=cfg.dask.n_workers,
                rows_per_chunk=cfg.dask.rows_per_chunk,
                on_chunk=progress.chunk_callback(f"features {name}"),
            )
        stages.update({f"featurize/{n}": f for n, f in futures.items()})
        features = {name: fut.result() for name, fut in futures.items()}

        # 3. scalers (training split only)
        sc = cfg.scaler

        def submit_scaler(ref: dict[str, Any]) -> Any:
            return fit_scaler.submit(
                ref,
                sc.kind,
                tuple(sc.feature_range),
                sc.per_element,
                tuple(split["fractions"]),
                split["seed"],
            )

        scalers = {name: submit_scaler(ref) for name, ref in features.items()}
        stages.update({f"fit-scaler/{n}": f for n, f in scalers.items()})
        scalers = {name: fut.result() for name, fut in scalers.items()}

        # 4. latent feature sets: an encoder per set, trained on the scaled source features
        for name, feat in cfg.features.items():
            if not isinstance(feat, LatentFeatures):
                continue
            settings = feat.encoder.model_dump(mode="json")
            fut = submit_cached(
                train_encoder,
                encoder_exists,
                features[feat.source],
                scalers[feat.source],
                settings,
                split,
                cfg.workspace,
                on_epoch=progress.epoch_callback(f"encoder {name}", feat.encoder.training.epochs),
            )
            stages[f"train-encoder/{name}"] = fut
            features[name] = ref = fut.result()
            fut = submit_scaler(ref)
            stages[f"fit-scaler/{name}"] = fut
            scalers[name] = fut.result()

        # 5. models, concurrently; 6. evaluation of each as it finishes
        trained = {}
        for name, model in cfg.models.items():
            mcfg = model.model_dump(mode="json")
            epochs = getattr(getattr(model, "training", None), "epochs", None)
            trained[name] = submit_cached(
                train_model,
                model_exists,
                name,
                features[model.features],
                scalers[model.features],
                mcfg,
                split,
                cfg.workspace,
                on_epoch=progress.epoch_callback(f"model {name}", epochs),
            )
        evaluated = {
            name: submit_cached(
                evaluate_model,
                evaluation_exists,
                fut,
                features[cfg.models[name].features],
                scalers[cfg.models[name].features],
                split,
                cfg.evaluation.split,
                cfg.evaluation.plots,
            )
            for name, fut in trained.items()
        }
        stages.update({f"train-model/{n}": f for n, f in trained.items()})
        stages.update({f"evaluate/{n}": f for n, f in evaluated.items()})
        results = {name: fut.result() for name, fut in evaluated.items()}

    # 7. tracking
    record_future = record_campaign.submit(cfg.model_dump(mode="json"), datasets, features, results)
    record = record_future.result()
    stages["record"] = record_future
    summary = {
        "campaign": cfg.name,
        "datasets": {n: r["key"] for n, r in datasets.items()},
        "features": {n: r["key"] for n, r in features.items()},
        "models": {
            n: {"key": r["key"], "dir": r["dir"], **r["metrics"]} for n, r in results.items()
        },
        "tracking": record,
        "states": {label: fut.state.name for label, fut in stages.items()},
        "wall_time_s": time.perf_counter() - t0,
    }
    progress.summary_table(summary, cfg.evaluation.metric)
    return summary


def run_campaign(cfg: CampaignConfig, show_progress: bool = True) -> dict[str, Any]:
    """Run the campaign flow in this process (Prefect starts an ephemeral API if none is set)."""
    return campaign(cfg.model_dump(mode="json"), show_progress=show_progress)
