"""One run of (part of) a campaign: each stage submitted as a cached Prefect task, its progress
line, its call (for the run record of :mod:`flows.fastpath`) and, when one fails, the stage at
the root of it. The flows that drive it are in :mod:`flows.campaign`."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prefect import get_run_logger

from flows.config import CampaignConfig, LatentFeatures
from flows.fastpath import summary_entries
from flows.limits import check_against_data, no_forces_error
from flows.progress import CampaignProgress
from tasks.caching import submit_cached
from tasks.models import (
    encoder_exists,
    evaluate_model,
    evaluation_done,
    model_exists,
    model_key,
    train_encoder,
    train_model,
)
from tasks.record import record_campaign
from tasks.refs import DatasetRef
from tasks.stages import featurize, featurize_exists, fit_scaler, ingest, ingest_exists

__all__ = ["CampaignRun", "StageError"]


def _split(cfg: CampaignConfig) -> dict[str, Any]:
    return {"fractions": list(cfg.split.fractions), "seed": cfg.split.seed}


class CampaignRun:
    """One run of (part of) a campaign: the futures of its stages, for the summary."""

    def __init__(self, cfg: CampaignConfig, show_progress: bool) -> None:
        self.cfg = cfg
        self.split = _split(cfg)
        self.progress = CampaignProgress(enabled=show_progress)
        self.stages: dict[str, Any] = {}  # label -> future
        self.calls: dict[str, tuple[Any, tuple, dict]] = {}  # label -> (task, args, kwargs)
        self.logger = get_run_logger()
        self.t0 = time.perf_counter()
        Path(cfg.workspace).mkdir(parents=True, exist_ok=True)

    def states(self) -> dict[str, str]:
        return {label: fut.state.name for label, fut in self.stages.items()}

    def root_cause(self, exc: BaseException) -> BaseException:
        """The error of the first stage that failed (stages are kept upstream first), not the
        "Run is in PENDING state" of a downstream stage that never ran because of it."""
        for label, fut in self.stages.items():
            try:
                state = fut.state
                if not (state.is_failed() or state.is_crashed()):
                    continue
                fut.result()
            except Exception as cause:  # the stage's own exception
                if "PENDING state" in str(cause) or "did not reach" in str(cause):
                    continue
                stage, _, name = label.partition("/")
                if stage in ("train-model", "evaluate") and f"models.{name}" not in str(cause):
                    return StageError(f"models.{name}: {stage}: {cause}")  # which model
                return cause
        return exc

    def submit(self, label: str, task: Any, exists: Any, *args: Any, **kwargs: Any) -> Any:
        """Submit stage ``label`` (cached: :func:`submit_cached` when ``exists`` is given) and
        keep its call, whose cache key the run record lists (:mod:`flows.fastpath`)."""
        self.calls[label] = (task, args, kwargs)
        if exists is None:
            return task.submit(*args, **kwargs)
        return submit_cached(task, exists, *args, **kwargs)

    def started(self, label: str, fut: Any) -> Any:
        """A stage was submitted: its progress line starts (elapsed time, pulsing) and ends,
        saying whether it ran or was cached, as soon as the stage is done."""
        self.progress.stage_started(label)

        def report(f: Any) -> None:
            try:
                if f.state.is_completed():
                    self.progress.stage_finished(label, _how(f, f.result()))
            except Exception:  # a progress line never fails a stage; done() reports it
                pass

        fut.add_done_callback(report)
        return fut

    def done(self, label: str, fut: Any) -> Any:
        """The stage's result; its progress line ends saying whether it ran or was cached."""
        result = fut.result()
        self.progress.stage_finished(label, _how(fut, result))
        return result

    def check_data(self, datasets: dict[str, Any], models: list[str]) -> None:
        """Limits that depend on the data, before any featurization or training starts."""
        check_against_data(self.cfg, datasets, models)

    # -- 1. datasets ------------------------------------------------------------------------
    def ingest(self, models: Sequence[str] = ()) -> dict[str, Any]:
        cfg, split = self.cfg, self.split
        for name in cfg.datasets:  # what the globs and folders hold now stays inside the root
            cfg.dataset_files(name)
        futures = {
            name: self.started(
                f"ingest {name}",
                self.submit(
                    f"ingest/{name}",
                    ingest,
                    ingest_exists,
                    [str(p) for p in ds.paths],
                    cfg.store_url,
                    tuple(split["fractions"]),
                    split["seed"],
                    ds.format,
                    ds.energy_key,
                    ds.forces_key,
                    no_forces_error(cfg, name, list(models)),  # refused before it is stored
                ),
            )
            for name, ds in cfg.datasets.items()
        }
        self.stages.update({f"ingest/{n}": f for n, f in futures.items()})
        datasets = {name: self.done(f"ingest {name}", fut) for name, fut in futures.items()}
        for name, ref in datasets.items():
            d = DatasetRef.of(ref)
            n = d.summary["structures"]
            self.logger.info("dataset %s: %s (%d structures)", name, d.key[:12], n)
            copies = d.summary.get("duplicates", 0)
            if copies:  # kept within one split each, so they cannot leak into the test set
                self.logger.warning(
                    "dataset %s: %d structure(s) are copies of another; each stays in the "
                    "split of its original",
                    name,
                    copies,
                )
        return datasets

    # -- 2.-4. features, scalers, latent features -------------------------------------------
    def _scaler(self, name: str, ref: dict[str, Any]) -> Any:
        sc, split = self.cfg.scaler, self.split
        return self.submit(
            f"fit-scaler/{name}",
            fit_scaler,
            None,
            ref,
            sc.kind,
            tuple(sc.feature_range),
            sc.per_element,
            tuple(split["fractions"]),
            split["seed"],
        )

    @contextmanager
    def _scheduler(self, needed: bool) -> Iterator[str | None]:
        """The Dask scheduler address the featurize stages use: the configured one, else one
        LocalCluster for all of them, started only when some feature set must be computed."""
        if self.cfg.dask.address or not needed:
            yield self.cfg.dask.address
            return
        from tasks.cluster import dask_client

        with dask_client(None, self.cfg.dask.n_workers) as client:
            yield client.scheduler.address

    def features(
        self, datasets: dict[str, Any], only: set[str] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Direct feature sets on Dask (concurrently), their scalers, then latent sets; the sets
        in ``only`` and those they are made from (all when None)."""
        cfg, progress = self.cfg, self.progress
        wanted = {
            n: f
            for n, f in cfg.features.items()
            if only is None
            or n in only
            or any(getattr(cfg.features[o], "source", None) == n for o in only)
        }
        direct = {n: f for n, f in wanted.items() if not isinstance(f, LatentFeatures)}
        exists = {  # each group checked once, every chunk against its checksum
            n: featurize_exists(datasets[f.dataset], f.type, f.featurizer_params())
            for n, f in direct.items()
        }
        with self._scheduler(not all(exists.values())) as address:
            futures = {
                name: self.started(
                    f"features {name}",
                    self.submit(
                        f"featurize/{name}",
                        featurize,
                        lambda *_, done=exists[name], **__: done,
                        datasets[feat.dataset],
                        feat.type,
                        feat.featurizer_params(),
                        scheduler=address,
                        n_workers=cfg.dask.n_workers,
                        rows_per_chunk=cfg.dask.rows_per_chunk,
                        on_chunk=progress.chunk_callback(f"features {name}"),
                        device=feat.device,
                    ),
                )
                for name, feat in direct.items()
            }
            self.stages.update({f"featurize/{n}": f for n, f in futures.items()})
            features = {n: self.done(f"features {n}", fut) for n, fut in futures.items()}
        futures = {n: self.started(f"scaler {n}", self._scaler(n, r)) for n, r in features.items()}
        self.stages.update({f"fit-scaler/{n}": f for n, f in futures.items()})
        scalers = {name: self.done(f"scaler {name}", fut) for name, fut in futures.items()}

        # an encoder per latent set, trained on the scaled source features
        for name, feat in wanted.items():
            if not isinstance(feat, LatentFeatures):
                continue
            epochs = feat.encoder.training.epochs
            fut = self.submit(
                f"train-encoder/{name}",
                train_encoder,
                encoder_exists,
                features[feat.source],
                scalers[feat.source],
                feat.encoder.canonical(),
                self.split,
                cfg.workspace,
                on_epoch=progress.epoch_callback(f"encoder {name}", epochs),
            )
            self.stages[f"train-encoder/{name}"] = self.started(f"encoder {name}", fut)
            features[name] = self.done(f"encoder {name}", fut)
            fut = self.started(f"scaler {name}", self._scaler(name, features[name]))
            self.stages[f"fit-scaler/{name}"] = fut
            scalers[name] = self.done(f"scaler {name}", fut)
        return features, scalers

    # -- 5.-6. models, concurrently, each evaluated as it finishes ----------------------------
    def models(
        self, names: list[str], features: dict[str, Any], scalers: dict[str, Any]
    ) -> dict[str, Any]:
        cfg, progress = self.cfg, self.progress
        trained, evaluated = {}, {}
        for name in names:
            model = cfg.models[name]
            epochs = getattr(getattr(model, "training", None), "epochs", None)
            trained[name] = self.started(
                f"model {name}",
                self.submit(
                    f"train-model/{name}",
                    train_model,
                    model_exists,
                    name,
                    features[model.features],
                    scalers[model.features],
                    model.model_dump(mode="json"),
                    self.split,
                    cfg.workspace,
                    on_epoch=progress.epoch_callback(f"model {name}", epochs),
                ),
            )
        for name, fut in trained.items():  # a failed fit is the error, not its evaluation's
            fut.wait()
            if fut.state.is_completed():
                progress.stage_finished(f"model {name}", _how(fut, fut.result()))
        for name, fut in trained.items():
            fset = cfg.models[name].features
            key = model_key(
                features[fset], scalers[fset], cfg.models[name].model_dump(mode="json"), self.split
            )
            done = evaluation_done(
                Path(cfg.workspace) / "models" / key, cfg.evaluation.split, cfg.evaluation.plots
            )
            evaluated[name] = self.started(
                f"evaluate {name}",
                self.submit(
                    f"evaluate/{name}",
                    evaluate_model,
                    lambda *_, done=done, **__: done,  # the files, not Prefect's record of them
                    fut,
                    features[fset],
                    scalers[fset],
                    self.split,
                    cfg.evaluation.split,
                    cfg.evaluation.plots,
                ),
            )
        self.stages.update({f"train-model/{n}": f for n, f in trained.items()})
        self.stages.update({f"evaluate/{n}": f for n, f in evaluated.items()})
        return {name: self.done(f"evaluate {name}", fut) for name, fut in evaluated.items()}

    # -- 7. tracking ------------------------------------------------------------------------
    def record(self, datasets, features, results) -> dict[str, Any]:
        cfg = self.cfg.model_dump(mode="json")
        fut = self.started(
            "record in MLflow",
            self.submit("record", record_campaign, None, cfg, datasets, features, results),
        )
        self.stages["record"] = fut
        return self.done("record in MLflow", fut)

    def summary(self, datasets, features, results=None, record=None) -> dict[str, Any]:
        out = {
            "campaign": self.cfg.name,
            **summary_entries(datasets, features, results or {}),
            "tracking": record or {},
            "states": self.states(),
            "wall_time_s": time.perf_counter() - self.t0,
        }
        if results:
            self.progress.summary_table(out, self.cfg.evaluation.metric)
        return out


def _how(fut: Any, result: Any) -> str:
    """How a finished stage went, for its progress line: cached (Prefect's cache or an output
    found complete in the store) or run."""
    if fut.state.name == "Cached":
        return "cached"
    if isinstance(result, dict) and (
        result.get("written") is False
        or result.get("trained") is False
        or result.get("computed_chunks") == 0
    ):
        return "cached (in the store)"
    return "run"


class StageError(RuntimeError):
    """A stage of a model failed; the message names the model and the stage."""
