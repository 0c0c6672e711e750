"""The no-op rerun without Prefect: a campaign whose every stage is complete answers from the
store and the results cache, before Prefect (or torch) is imported.

A complete run of a whole campaign (:func:`flows.campaign.campaign`) leaves a *run record* in
Prefect's results folder beside the stages' own cached results:
``atompipe-campaign-<fingerprint>.json``. It lists every stage with the cache key that the stage's
task computed for it (the task's own ``cache_key_fn``, :func:`stage_keys`) and a digest of the
result cached under that key. The fingerprint is a hash of everything those keys are made of:
the validated configuration, the bytes of every dataset file (after glob and folder expansion)
and the source of atompipe itself (a changed key function or stage changes it).

:func:`completed_run` finds the record of the campaign as configured now and checks, stage by
stage, what the full path would check: the cached result is there, unchanged, and the output it
points at is complete (the dataset indexed under its ingest key, feature groups marked complete,
model cards, evaluations and their plots, the MLflow runs in the tracking database). Anything
missing or in doubt (no record, a changed file, a damaged or incomplete output, a tracking server
it cannot check without MLflow) gives the reason instead, and ``atompipe run`` takes the full
path through Prefect. This module imports neither Prefect nor torch (nor MLflow).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from atomistic.storage import Store, content_hash, file_sha256
from tasks.refs import DatasetRef, FeatureRef, ModelRef

__all__ = [
    "FastPath",
    "completed_run",
    "fingerprint",
    "remember_run",
    "results_folder",
    "summary_entries",
]

RECORD_FORMAT = 1
_PACKAGES = ("atomistic", "tasks", "flows")


@dataclass
class FastPath:
    """What :func:`completed_run` found: the campaign's summary (as the full path returns it),
    or, when the full path must run, the reason why."""

    summary: dict[str, Any] | None = None
    reason: str = ""


def results_folder(cfg: Any) -> Path:
    """Where ``atompipe run`` keeps Prefect's cached results.

    Parameters
    ----------
    cfg : flows.config.CampaignConfig
        The campaign.

    Returns
    -------
    pathlib.Path
        ``PREFECT_LOCAL_STORAGE_PATH`` when set, else ``<workspace>/prefect-results``.
    """
    given = os.environ.get("PREFECT_LOCAL_STORAGE_PATH")
    return Path(given) if given else (Path(cfg.workspace) / "prefect-results").resolve()


def _source_digest() -> str:
    """sha256 over the Python sources of atompipe's packages (path and bytes of each file)."""
    h = hashlib.sha256()
    for name in _PACKAGES:
        spec = importlib.util.find_spec(name)
        for location in (spec.submodule_search_locations or []) if spec else []:
            base = Path(location)
            for path in sorted(base.rglob("*.py")):
                h.update(f"{name}/{path.relative_to(base)}\0".encode())
                h.update(path.read_bytes())
    return h.hexdigest()


def fingerprint(cfg: Any) -> str:
    """A hash of everything the stages' cache keys are made of.

    Parameters
    ----------
    cfg : flows.config.CampaignConfig
        The campaign.

    Returns
    -------
    str
        sha256 (hex) of the configuration, the bytes of each dataset file (after glob and
        folder expansion) and atompipe's source: equal fingerprints give equal stage keys.
    """
    files = {
        name: [[str(p), file_sha256(p)] for p in cfg.dataset_files(name)] for name in cfg.datasets
    }
    config = cfg.model_dump(mode="json")
    return content_hash("atompipe-campaign", RECORD_FORMAT, config, files, _source_digest())


def _record_path(folder: Path, cfg: Any) -> Path:
    return folder / f"atompipe-campaign-{fingerprint(cfg)}.json"


def stage_keys(calls: dict[str, tuple[Any, tuple, dict]]) -> dict[str, str]:
    """The cache key of each submitted stage, computed as Prefect computes it.

    Parameters
    ----------
    calls : dict[str, tuple]
        ``label -> (task, args, kwargs)`` of each stage submitted (its futures done).

    Returns
    -------
    dict[str, str]
        ``label -> key``: the call bound to the task's signature (defaults applied, futures
        resolved to their results), handed to the task's own ``cache_key_fn``. Imports Prefect:
        for a flow, not for the fast path.
    """
    from prefect.futures import PrefectFuture
    from prefect.utilities.callables import get_call_parameters

    keys = {}
    for label, (task, args, kwargs) in calls.items():
        args = tuple(a.result() if isinstance(a, PrefectFuture) else a for a in args)
        keys[label] = task.cache_key_fn(None, get_call_parameters(task.fn, args, kwargs))
    return keys


def _cached(folder: Path, key: str) -> tuple[Any, str]:
    """The result Prefect cached under ``key`` (a JSON result record) and its digest."""
    record = json.loads((folder / key).read_text())
    if record["metadata"]["serializer"]["type"] != "json":
        raise ValueError(f"{key}: not a JSON result")
    text = record["result"]
    return json.loads(text), hashlib.sha256(text.encode()).hexdigest()


def remember_run(
    cfg: Any, calls: dict[str, tuple[Any, tuple, dict]], folder: str | Path
) -> Path | None:
    """Write the run record of a complete run of the whole campaign.

    Parameters
    ----------
    cfg : flows.config.CampaignConfig
        The campaign that ran.
    calls : dict[str, tuple]
        Every stage's call by label, ``(task, args, kwargs)``, its future done
        (:func:`stage_keys` computes their cache keys).
    folder : str or pathlib.Path
        Prefect's results folder, where the stages' results are cached.

    Returns
    -------
    pathlib.Path or None
        The record; None when a result is missing or the folder cannot be written (a
        read-only workspace): the next run then takes the full path. A record that cannot be
        made is a warning, never a failure of the campaign that ran.
    """
    folder = Path(folder)
    try:
        keys = stage_keys(calls)
        stages = {label: {"key": k, "result": _cached(folder, k)[1]} for label, k in keys.items()}
        path = _record_path(folder, cfg)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        record = {"format": RECORD_FORMAT, "campaign": cfg.name, "stages": stages}
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
    except (OSError, ValueError, KeyError):  # a read-only workspace, a result not persisted
        return None
    except Exception as exc:  # a stage whose key cannot be computed this way
        logging.getLogger(__name__).warning("no run record for the fast path: %r", exc)
        return None
    return path


def completed_run(cfg: Any, folder: Path) -> FastPath:
    """Whether the campaign, as configured now, is complete: the fast path's decision.

    Parameters
    ----------
    cfg : flows.config.CampaignConfig
        The campaign (loaded without building featurizers).
    folder : pathlib.Path
        Prefect's results folder (:func:`results_folder`).

    Returns
    -------
    FastPath
        ``summary``: what the full path's flow would return, every stage "Cached", when the
        run record of this fingerprint exists and every stage's result and output is there;
        else ``summary`` None and ``reason`` saying what is missing or in doubt.
    """
    t0 = time.perf_counter()
    try:
        path = _record_path(folder, cfg)
        if not path.exists():
            return FastPath(reason="no complete run of this configuration and these files")
        record = json.loads(path.read_text())
        if record.get("format") != RECORD_FORMAT:
            return FastPath(reason=f"{path.name}: an unknown format")
        refs: dict[str, Any] = {}
        for label, stage in record["stages"].items():
            ref, digest = _cached(folder, stage["key"])
            if digest != stage["result"]:
                return FastPath(reason=f"{label}: its cached result changed")
            why = _incomplete(label, stage["key"], ref, cfg)
            if why:
                return FastPath(reason=f"{label}: {why}")
            refs[label] = ref
    except (OSError, ValueError, KeyError, TypeError, sqlite3.Error) as exc:
        return FastPath(reason=f"cannot read the run record: {exc}")
    return FastPath(summary=_summary(cfg, refs, time.perf_counter() - t0))


def _incomplete(label: str, key: str, ref: dict[str, Any], cfg: Any) -> str:
    """Why the output of stage ``label`` (cached result ``ref``) is not complete ("" if it is):
    the checks each stage's ``*_exists`` makes in the full path, on the output it points at."""
    stage = label.partition("/")[0]
    if stage == "ingest":
        d = DatasetRef.of(ref)
        ok = Store(d.store).lookup(key) == d.key
        return "" if ok else f"dataset {d.key[:12]} is not complete in the store"
    if stage in ("featurize", "train-encoder"):
        f = FeatureRef.of(ref)
        kind = "latent" if stage == "train-encoder" else "features"
        if not Store(f.store).has(kind, f.key):
            return f"{kind} {f.key[:12]} are not complete in the store"
        if stage == "train-encoder" and not (
            f.encoder_dir is not None and (Path(f.encoder_dir) / "card.json").exists()
        ):
            return f"encoder {f.encoder_dir} is missing"
        return ""
    if stage == "train-model":
        m = ModelRef.of(ref)
        return "" if (Path(m.dir) / "card.json").exists() else f"{m.dir} is missing"
    if stage == "evaluate":
        m = ModelRef.of(ref)
        if _metrics(m).get("split") != cfg.evaluation.split:
            return "evaluated on another split"
        files = [Path(m.dir) / "evaluation.json", *map(Path, m.artifacts or [])]
        missing = [str(f) for f in files if not f.exists()]
        return f"{missing[0]} is missing" if missing else ""
    if stage == "record":
        return _recorded(ref)
    return ""  # fit-scaler: its result is all it makes


def _metrics(model: ModelRef) -> dict[str, Any]:
    """An evaluated model's metrics (a KeyError, as for the dict, when it has none)."""
    if model.metrics is None:
        raise KeyError(f"model {model.key}: no metrics")
    return model.metrics


def summary_entries(
    datasets: dict[str, Any], features: dict[str, Any], results: dict[str, Any]
) -> dict[str, Any]:
    """The datasets, feature sets and models of a campaign run's summary, from the stages'
    references (shared by the full path and the fast path).

    Parameters
    ----------
    datasets, features, results : dict[str, dict]
        By name: the JSON form of each ingested :class:`~tasks.refs.DatasetRef`, each feature
        set's (or latent group's) :class:`~tasks.refs.FeatureRef` and each evaluated
        :class:`~tasks.refs.ModelRef`.

    Returns
    -------
    dict[str, Any]
        ``datasets`` and ``features`` (name -> content key) and ``models`` (name -> key,
        folder and metrics).
    """
    models = {n: ModelRef.of(r) for n, r in results.items()}
    return {
        "datasets": {n: DatasetRef.of(r).key for n, r in datasets.items()},
        "features": {n: FeatureRef.of(r).key for n, r in features.items()},
        "models": {n: {"key": m.key, "dir": m.dir, **_metrics(m)} for n, m in models.items()},
    }


def _recorded(tracking: dict[str, Any]) -> str:
    """Why the MLflow runs of the record are not all in the tracking database ("" if they are).
    Only a local sqlite database is checked (without MLflow); any other tracking URI is doubt."""
    from tasks.tracking import TrackingError, check_tracking

    uri = tracking["tracking_uri"]
    if not uri.startswith("sqlite:///"):
        return f"tracking at {uri} is checked through MLflow"
    db = Path(uri[len("sqlite:///") :])
    if not db.exists():
        return f"{db} is missing"
    try:
        check_tracking(uri)  # sqlite's integrity check, as before a full run
    except TrackingError as exc:
        return str(exc)
    ids = [tracking["parent_run_id"], *(c["run_id"] for c in tracking["children"].values())]
    with closing(sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)) as con:
        marks = ",".join("?" * len(ids))
        found = con.execute(
            f"SELECT run_uuid FROM runs WHERE run_uuid IN ({marks}) "  # noqa: S608 - marks only
            "AND status = 'FINISHED' AND lifecycle_stage = 'active'",
            ids,
        ).fetchall()
        champ = tracking.get("champion")
        registered = (
            champ is None
            or con.execute(
                "SELECT 1 FROM model_versions WHERE name = ? AND version = ?",
                (champ["name"], int(champ["version"])),
            ).fetchone()
        )
    missing = set(ids) - {row[0] for row in found}
    if missing:
        return f"MLflow run {sorted(missing)[0]} is not in {db}"
    if not registered and champ is not None:
        return f"model version {champ['name']} v{champ['version']} is gone"
    return ""


def _summary(cfg: Any, refs: dict[str, Any], wall_time_s: float) -> dict[str, Any]:
    """The summary the full path returns (:meth:`flows.campaign_run.CampaignRun.summary`), from
    the cached results; every stage "Cached"."""

    def named(*stages: str) -> dict[str, Any]:
        return {
            label.partition("/")[2]: ref
            for label, ref in refs.items()
            if label.partition("/")[0] in stages
        }

    return {
        "campaign": cfg.name,
        **summary_entries(named("ingest"), named("featurize", "train-encoder"), named("evaluate")),
        "tracking": refs["record"],
        "states": dict.fromkeys(refs, "Cached"),
        "wall_time_s": wall_time_s,
        "fast_path": True,
    }
