"""The active-learning flow (docs/active-learning.md): train → explore → select → label → grow →
train again, until the label budget is spent, the test error is reached, nothing is uncertain
any more, or the iterations run out.

Iteration 0 is the campaign's own first stages (ingest, featurize on Dask, fit the scaler) and a
first committee on the training split of the model's dataset. Every later stage is a cached task
of tasks/active.py keyed by content, so a rerun of a finished loop is cache hits throughout and a
killed loop resumes at the stage it was in. The training split grows; the validation split (early
stopping, the calibrated threshold) and the test set stay fixed. MLflow gets one run per
iteration under a parent run, and a plot of the test force error against the labels added; each
iteration's model is registered, the alias "champion" on the lowest test force error
(:mod:`tasks.pipeline.active_record`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from prefect import flow, get_run_logger

from flows.config import ActiveConfig, CampaignConfig, ConfigError, LatentFeatures
from tasks.active import (
    explore_exists,
    explore_stage,
    grow_stage,
    label_stage,
    select_stage,
    train_exists,
    train_stage,
)
from tasks.caching import submit_cached
from tasks.refs import DatasetRef, FeatureRef, ModelRef
from tasks.stages import featurize, featurize_exists, fit_scaler, ingest, ingest_exists

__all__ = ["active_flow", "check_active", "run_active"]


def check_active(cfg: CampaignConfig) -> ActiveConfig:
    """The ``active:`` section refers to what the campaign has; errors name the key.

    Returns
    -------
    ActiveConfig
        ``cfg.active``, checked.
    """
    a = cfg.active
    if a is None:
        raise ConfigError(f"campaign {cfg.name}: no `active:` section")
    model = cfg.models.get(a.model)
    if model is None:
        raise ConfigError(f"active.model: unknown model {a.model!r}; models: {list(cfg.models)}")
    committee = model.type == "neuralnetwork" and model.ensemble >= 2
    gp_on_forces = model.type == "gaussianprocess" and model.forces
    if not (committee or gp_on_forces):
        raise ConfigError(
            f"active.model: {a.model!r} must give a force uncertainty: a neuralnetwork with "
            "ensemble >= 2 (a committee) or a gaussianprocess with forces: true"
        )
    if model.type == "neuralnetwork" and model.force_weight <= 0:
        raise ConfigError(f"active.model: {a.model!r} must train on forces (force_weight > 0)")
    if isinstance(cfg.features[model.features], LatentFeatures):
        raise ConfigError("active.model: latent features cannot drive molecular dynamics")
    if a.test is not None and a.test not in cfg.datasets:
        raise ConfigError(f"active.test: unknown dataset {a.test!r}")
    from atomistic.active import BUILTIN_CALCULATORS

    calc = a.labelling.calculator
    if calc not in BUILTIN_CALCULATORS and calc not in a.labelling.allow:
        raise ConfigError(
            f"active.labelling.calculator: {calc!r} is neither built in {BUILTIN_CALCULATORS} "
            "nor listed in active.labelling.allow"
        )
    return a


def _ingest(cfg: CampaignConfig, name: str) -> dict[str, Any]:
    ds = cfg.datasets[name]
    return submit_cached(
        ingest,
        ingest_exists,
        [str(p) for p in cfg.dataset_files(name)],
        cfg.store_url,
        tuple(cfg.split.fractions),
        cfg.split.seed,
        ds.format,
        ds.energy_key,
        ds.forces_key,
    ).result()


def _train(cfg, features, scaler, model_cfg, parts, previous, test) -> dict[str, Any]:
    return submit_cached(
        train_stage,
        train_exists,
        features,
        scaler,
        model_cfg,
        parts,
        previous,
        cfg.workspace,
        test,
    ).result()


@flow(name="atompipe-active", log_prints=True)
def active_flow(config: dict[str, Any], new_iterations: int | None = None) -> dict[str, Any]:
    """The active-learning loop of a campaign.

    Parameters
    ----------
    config : dict[str, Any]
        The campaign (``CampaignConfig.model_dump(mode="json")``) with its ``active:`` section.
    new_iterations : int or None
        Stop (``stopped: "paused"``) once this many iterations were run that no earlier run had
        finished (an iteration is finished when its model is saved; the finished ones are cache
        hits): 1 runs the loop for one more iteration, what each trigger of ``atompipe serve``
        does. None: no such limit. ``active.iterations``, the budget and the stopping rule
        still apply.

    Returns
    -------
    dict[str, Any]
        ``campaign``, ``iterations`` (one row per iteration, from 0), ``stopped`` (the reason),
        ``new_iterations`` (iterations run now that no earlier run had finished), ``model`` and
        ``dataset`` (the last), ``tracking`` (:func:`tasks.pipeline.active_record.record_active`)
        and ``wall_time_s``.
    """
    cfg = CampaignConfig.model_validate(config)
    a = check_active(cfg)
    log = get_run_logger()
    Path(cfg.workspace).mkdir(parents=True, exist_ok=True)
    model_cfg = cfg.models[a.model].model_dump(mode="json")
    feat = cfg.features[cfg.models[a.model].features]
    assert not isinstance(feat, LatentFeatures)  # check_active refuses latent features
    t0 = time.perf_counter()

    # iteration 0: the campaign's first stages and a first committee
    dataset = _ingest(cfg, feat.dataset)
    params = feat.featurizer_params()
    features = submit_cached(
        featurize,
        lambda *_, **__: featurize_exists(dataset, feat.type, params),
        dataset,
        feat.type,
        params,
        scheduler=cfg.dask.address,
        n_workers=cfg.dask.n_workers,
        rows_per_chunk=cfg.dask.rows_per_chunk,
        device=feat.device,
    ).result()
    sc = cfg.scaler
    scaler = fit_scaler.submit(
        features,
        sc.kind,
        tuple(sc.feature_range),
        sc.per_element,
        tuple(cfg.split.fractions),
        cfg.split.seed,
    ).result()
    from atomistic.data import read_split

    d = DatasetRef.of(dataset)
    split = read_split(d.store, d.key, tuple(cfg.split.fractions), cfg.split.seed)
    parts = {"train": split["train"].tolist(), "validation": split["validation"].tolist()}
    test: dict[str, Any]
    if a.test is None:
        test = {"store": d.store, "dataset": d.key}
        test["indices"] = split["test"].tolist()
    else:
        t = DatasetRef.of(_ingest(cfg, a.test))
        n = t.summary["structures"]
        test = {"store": t.store, "dataset": t.key, "indices": list(range(n))}
    model = _train(cfg, features, scaler, model_cfg, parts, None, test)
    model_dirs = {ModelRef.of(model).key: ModelRef.of(model).dir}
    rows = [_row(0, dataset, model, 0, 0, None, None, None)]
    log.info(
        "active 0: %d training structures, test force MAE %.4f eV/Å",
        len(parts["train"]),
        rows[-1]["test_force_mae"],
    )
    rng = np.random.default_rng(a.seed)
    added = 0
    reason = "iterations"
    explore_settings = a.exploration.model_dump(mode="json")
    n_starts = explore_settings.pop("starts")
    from atomistic.active import stop_reason

    fresh = 0  # iterations run now that no earlier run had finished
    for it in range(1, a.iterations + 1):
        why = stop_reason(added, a.budget, rows[-1]["test_force_mae"], a.target_error)
        if why:
            reason = why
            break
        if new_iterations is not None and fresh >= new_iterations:
            reason = "paused"
            log.info("active: %d new iteration(s) run; paused before iteration %d", fresh, it)
            break
        starts = sorted(
            int(i) for i in rng.choice(parts["train"], min(n_starts, len(parts["train"])), False)
        )
        seed = int(rng.integers(2**31))
        explored_before = explore_exists(
            model, dataset, starts, explore_settings, seed, cfg.workspace
        )
        explored = submit_cached(
            explore_stage,
            explore_exists,
            model,
            dataset,
            starts,
            explore_settings,
            seed,
            cfg.workspace,
        ).result()
        n_max = (
            a.selection.max_labels
            if a.budget is None
            else min(a.selection.max_labels, a.budget - added)
        )
        picked = select_stage.submit(
            explored,
            model,
            features,
            scaler,
            parts["validation"],
            {**a.selection.model_dump(mode="json"), "upper": a.exploration.max_uncertainty},
            n_max,
            seed,
        ).result()
        why = stop_reason(added, n_uncertain=picked["uncertain"], n_picked=len(picked["indices"]))
        if why is not None:
            reason = why
            log.info(
                "active %d: stopping (%s): %d snapshots above the threshold, none picked",
                it,
                why,
                picked["uncertain"],
            )
            break
        labels = label_stage(
            explored,
            picked["indices"],
            a.labelling.model_dump(mode="json"),
            cfg.workspace,
            cfg.dask.address,
            cfg.dask.n_workers,
        )
        # a failed reference calculation (an SCF that does not converge) leaves its structure out
        failed = {f["key"] for f in labels["failed"]}
        for f in labels["failed"]:
            log.warning(
                "active %d: the reference calculation of snapshot %d failed; left out: %s",
                it,
                f["index"],
                f["error"],
            )
        kept = [
            (i, k)
            for i, k in zip(picked["indices"], labels["keys"], strict=True)
            if k not in failed
        ]
        if not kept:
            log.warning("active %d: every reference calculation failed; the model stays", it)
            rows.append(
                _row(it, dataset, model, added, labels["computed"], picked, explored, None, failed)
            )
            fresh += not explored_before
            continue
        grown = grow_stage.submit(
            dataset,
            features,
            explored,
            [i for i, _ in kept],
            {"keys": [k for _, k in kept], "labels_dir": labels["labels_dir"]},
        ).result()
        n_old = _size(dataset)
        dataset, features = grown["dataset"], grown["features"]
        n_new = _size(dataset) - n_old
        parts = {
            "train": parts["train"] + list(range(n_old, n_old + n_new)),
            "validation": parts["validation"],
        }
        added += n_new
        previous = model if a.warm_start else None
        fresh += not train_exists(features, scaler, model_cfg, parts, previous, cfg.workspace)
        model = _train(cfg, features, scaler, model_cfg, parts, previous, test)
        model_dirs[ModelRef.of(model).key] = ModelRef.of(model).dir
        rows.append(
            _row(it, dataset, model, added, labels["computed"], picked, explored, grown, failed)
        )
        log.info(
            "active %d: %d candidates, %d uncertain, %d labelled (%d computed, %d failed), %d "
            "training structures, test force MAE %.4f eV/Å",
            it,
            explored["n"],
            picked["uncertain"],
            n_new,
            labels["computed"],
            len(failed),
            len(parts["train"]),
            rows[-1]["test_force_mae"],
        )
    else:
        why = stop_reason(added, a.budget, rows[-1]["test_force_mae"], a.target_error)
        reason = why or "iterations"
    from prefect.runtime import flow_run

    from tasks.pipeline.active_record import record_active

    tracking = record_active(config, rows, test, model_dirs, str(flow_run.id or "none"), reason)
    log.info("active: champion %s", tracking["champion"])
    final = ModelRef.of(model)
    return {
        "campaign": cfg.name,
        "iterations": rows,
        "stopped": reason,
        "new_iterations": fresh,
        "model": {"key": final.key, "dir": final.dir},
        "dataset": DatasetRef.of(dataset).key,
        "tracking": tracking,
        "wall_time_s": time.perf_counter() - t0,
    }


def _size(dataset: dict[str, Any]) -> int:
    """The number of structures of a dataset (its reference's JSON form)."""
    return DatasetRef.of(dataset).summary["structures"]


def _row(it, dataset, model, added, computed, picked, explored, grown, failed=()) -> dict[str, Any]:
    """An iteration's numbers: its model's test errors, the dataset, the labels added so far,
    computed and failed now (``failed``: the structures' keys), the selection's figures."""
    ref = ModelRef.of(model)
    if ref.metrics is None:  # train_stage evaluates every committee on the test set
        raise KeyError(f"model {ref.key}: no metrics")
    m = ref.metrics
    row: dict[str, Any] = {
        "iteration": it,
        "model": ref.key,
        "dataset": DatasetRef.of(dataset).key,
        "dataset_size": _size(dataset),
        "labels_added": added,
        "labels_computed": computed,
        "labels_failed": len(failed),
        "test_force_mae": m.get("force_mae"),
        "test_force_rmse": m.get("force_rmse"),
        "test_energy_mae_per_atom": m.get("energy_mae_per_atom"),
    }
    row.update({k: v for k, v in m.items() if k.startswith("force_calibration_")})
    if picked is not None:
        row["threshold"] = picked["threshold"] if picked["threshold"] is not None else float("nan")
        row["uncertain"] = picked["uncertain"]
        row["candidates"] = explored["n"]
        row["featurized_atoms"] = (
            0 if grown is None else FeatureRef.of(grown["features"]).featurized_atoms
        )
    return row


def run_active(cfg: CampaignConfig, new_iterations: int | None = None) -> dict[str, Any]:
    """Run the active-learning flow in this process (Prefect starts an ephemeral API if none is
    set); ``new_iterations`` as in :func:`active_flow`."""
    check_active(cfg)
    return active_flow(cfg.model_dump(mode="json"), new_iterations)
