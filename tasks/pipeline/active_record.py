"""MLflow tracking of an active-learning loop as a plain function (:func:`record_active`): a
parent run per loop run with the curve of test force error against labels, one run per iteration
(recorded once: a rerun or a later trigger of ``atompipe serve`` adds runs only for iterations
not recorded before), each iteration's model registered as a version of
``<name>-active-champion``, and the alias "champion" moved to an iteration's model only when its
force MAE on the fixed test set is lower than the champion's (docs/active-learning.md, MLflow).

The pyfunc, its pip requirement and signature are those of the campaign's models
(:mod:`tasks.pipeline.record`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

from tasks.pipeline.record import (
    _MODEL_CODE,
    _git_commit,
    _params,
    _requirement,
    _signature,
    recording,
)
from tasks.tracking import (
    experiment_id,
    follow_moved_workspace,
)

__all__ = ["champion_name", "record_active", "test_set_key"]

_RECORDED = "atompipe.recorded"  # the last tag of an iteration's run: its recording is complete


def champion_name(config: dict[str, Any]) -> str:
    """The registered model of a campaign's active loop: ``<name>-active-champion``."""
    return f"{config['name']}-active-champion"


def test_set_key(test: dict[str, Any]) -> str:
    """The identity of a fixed test set: its dataset's content key and the structures' indices
    (not the store's address: the same content elsewhere is the same test set)."""
    blob = json.dumps({"dataset": test["dataset"], "indices": list(test["indices"])})
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def record_active(
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    test: dict[str, Any],
    model_dirs: dict[str, str],
    flow_run: str = "none",
    stopped: str | None = None,
) -> dict[str, Any]:
    """Log an active-learning loop to MLflow, under the tracking database's writers' lock.

    Parameters
    ----------
    config : dict[str, Any]
        The campaign (``CampaignConfig.model_dump(mode="json")``) with its ``active:`` section.
    rows : list[dict[str, Any]]
        One row per iteration, from 0: ``iteration``, ``model`` (its key), ``dataset`` (its
        key), ``test_force_mae``, ``labels_added`` and the other numbers to log as metrics.
    test : dict[str, Any]
        The fixed test set: ``store``, ``dataset`` (key), ``indices``.
    model_dirs : dict[str, str]
        Each row's model key mapped to its saved model's folder.
    flow_run : str
        The Prefect flow run's id (a tag of every run), "none" outside a flow.
    stopped : str or None
        Why the loop ended (``budget``, ``target``, ``converged``, ...): the parent run's tag
        ``atompipe.stopped``.

    Returns
    -------
    dict[str, Any]
        ``experiment``, ``tracking_uri``, ``parent_run``, ``recorded`` (the iterations given a
        run now), ``champion`` (``name``, ``version``, ``iteration``, ``model``,
        ``test_force_mae`` of the version holding the alias after this call; None when
        nothing is registered).

    Raises
    ------
    atomistic.interrupt.Interrupted
        A stop was requested.
    tasks.tracking.TrackingError
        The tracking server cannot be reached, or its sqlite database is damaged.
    """
    with recording(config) as uri:
        return _record(config, rows, test, model_dirs, uri, flow_run, stopped)


def _recorded(client: Any, exp_id: str) -> set[tuple[int, str]]:
    """(iteration, model key) of the iterations whose runs were recorded completely."""
    runs = client.search_runs(
        [exp_id], filter_string=f"tags.`{_RECORDED}` = 'true'", max_results=50000
    )
    return {
        (int(r.data.tags["atompipe.iteration"]), r.data.tags["atompipe.model_key"]) for r in runs
    }


def _versions(client: Any, name: str) -> dict[str, str]:
    """The registered versions of ``name`` by the model key they hold."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        return {}
    return {
        mv.tags["atompipe.model_key"]: str(mv.version)
        for mv in found
        if "atompipe.model_key" in mv.tags
    }


def _held(client: Any, name: str, test_key: str) -> dict[str, Any] | None:
    """The version holding the alias "champion", or None. Its ``score`` (the iteration run's
    ``test_force_mae``) is None when it was measured on another test set (not comparable)."""
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, "champion")
        run = client.get_run(mv.run_id)
    except MlflowException:
        return None
    same = run.data.tags.get("atompipe.test_set") == test_key
    return {
        "name": name,
        "version": str(mv.version),
        "iteration": run.data.tags.get("atompipe.iteration"),
        "model": mv.tags.get("atompipe.model_key"),
        "test_force_mae": run.data.metrics.get("test_force_mae") if same else None,
    }


def _register(
    client: Any, run_id: str, row: dict[str, Any], model_dir: str, store_url: str, name: str
) -> str:
    """The pyfunc of ``row``'s model logged in its iteration's run and registered as a version
    of ``name`` (tagged with the model key); returns the version."""
    import mlflow

    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_MODEL_CODE,
            artifacts={"model": model_dir},
            pip_requirements=[_requirement()],
            signature=_signature(Path(model_dir), store_url, row["dataset"]),
        )
    with contextlib.redirect_stderr(io.StringIO()):  # MLflow prints "Created version"
        mv = mlflow.register_model(
            info.model_uri,
            name,
            tags={"atompipe.model_key": row["model"], "atompipe.iteration": str(row["iteration"])},
        )
    return str(mv.version)


def _compare(
    client: Any,
    name: str,
    run_id: str,
    row: dict[str, Any],
    version: str,
    held: dict[str, Any] | None,
) -> dict[str, Any] | None:
    """Move the alias to ``version`` when ``row``'s test force MAE is lower than the held
    champion's (or there is none); the decision and the previous best as tags of the run.
    Returns the champion after the decision."""
    score = row.get("test_force_mae")
    finite = isinstance(score, int | float) and math.isfinite(score)
    previous = None if held is None else held["test_force_mae"]
    if not finite:
        move = False
    elif held is None:
        move = True
    elif previous is None:
        move = False  # measured on another test set: not comparable, the champion stays
    else:
        move = score < previous
    client.set_tag(run_id, "champion", "true" if move else "false")
    client.set_tag(run_id, "champion_previous", "none" if held is None else held["version"])
    client.set_tag(run_id, "champion_previous_test_force_mae", str(previous).lower())
    if held is not None and previous is None:
        client.set_tag(run_id, "champion_compared", "false")
    if not move:
        return held
    client.set_registered_model_alias(name, "champion", version)
    return {
        "name": name,
        "version": version,
        "iteration": str(row["iteration"]),
        "model": row["model"],
        "test_force_mae": score,
    }


def _record(
    config: dict[str, Any],
    rows: list[dict[str, Any]],
    test: dict[str, Any],
    model_dirs: dict[str, str],
    uri: str,
    flow_run: str,
    stopped: str | None = None,
) -> dict[str, Any]:
    import mlflow
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    ws = Path(config["workspace"])
    name = ((config.get("tracking") or {}).get("experiment") or config["name"]) + "-active"
    follow_moved_workspace(uri, name, ws)
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    exp_id = experiment_id(client, name, ws, "://" not in uri or uri.startswith("sqlite"))
    tags = {"atompipe.git_commit": _git_commit(), "atompipe.prefect_flow_run": flow_run}
    stop = {} if stopped is None else {"atompipe.stopped": stopped}
    parent = client.create_run(exp_id, run_name=f"{config['name']}-active", tags={**tags, **stop})
    pid = parent.info.run_id
    _params(client, pid, config.get("active", {}))
    register = (config.get("evaluation") or {}).get("register_best", True)
    reg_name = champion_name(config)
    test_key = test_set_key(test)
    done = _recorded(client, exp_id)
    versions = _versions(client, reg_name) if register else {}
    held = _held(client, reg_name, test_key) if register else None
    recorded = []
    now = int(time.time() * 1000)
    for row in rows:
        it = int(row["iteration"])
        for m in ("test_force_mae", "labels_added"):
            if m in row:
                client.log_metric(pid, m, float(row[m]), now, it)
        if (it, row["model"]) in done:
            continue
        run = client.create_run(
            exp_id,
            run_name=f"iteration-{it}",
            tags={
                **tags,
                "mlflow.parentRunId": pid,
                "atompipe.iteration": str(it),
                "atompipe.model_key": row["model"],
                "atompipe.dataset_key": row["dataset"],
                "atompipe.test_set": test_key,
                "atompipe.registered_model": reg_name,
            },
        )
        rid = run.info.run_id
        metrics = [
            Metric(k, float(v), now, it)
            for k, v in row.items()
            if isinstance(v, int | float) and not isinstance(v, bool) and v == v
        ]
        client.log_batch(rid, metrics=metrics)
        if register:
            version = versions.get(row["model"])
            if version is None:
                directory = model_dirs[row["model"]]
                version = _register(client, rid, row, directory, test["store"], reg_name)
                versions[row["model"]] = version
            client.set_tag(rid, "atompipe.registered_version", version)
            held = _compare(client, reg_name, rid, row, version, held)
        client.set_tag(rid, _RECORDED, "true")
        client.set_terminated(rid)
        recorded.append(it)
    with tempfile.TemporaryDirectory() as tmp:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        ax.plot([r["labels_added"] for r in rows], [r["test_force_mae"] for r in rows], "o-")
        ax.set_xlabel("labels added")
        ax.set_ylabel("test force MAE (eV/Å)")
        fig.tight_layout()
        fig.savefig(Path(tmp) / "active_curve.png", dpi=100)
        plt.close(fig)
        (Path(tmp) / "active_curve.json").write_text(json.dumps(rows, indent=1))
        client.log_artifact(pid, str(Path(tmp) / "active_curve.png"))
        client.log_artifact(pid, str(Path(tmp) / "active_curve.json"))
    client.set_terminated(pid)
    return {
        "experiment": name,
        "parent_run": pid,
        "tracking_uri": uri,
        "recorded": recorded,
        "champion": held,
    }
