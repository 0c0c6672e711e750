"""The active-learning loop killed and resumed (issue 18): ``atompipe active`` subprocesses, their
whole process group (Dask workers included) SIGKILLed once while the first iteration labels, and
once while its committee trains; each rerun must finish without labelling again what was
labelled, and without redoing a finished stage.

Everything is real: the command line in a subprocess, the session's Prefect API, a Dask
LocalCluster of two workers labelling with a slow EMT (``tests/reliability/slow_emt.py``, named
by import path and allow-listed in the campaign), a Zarr store, MLflow in sqlite. Files are told
apart by (inode, mtime): a label or a chunk written again is a new file renamed into place.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import torch  # imported now: the first poll of a checkpoint must not wait for it
from reliability_support import (
    atompipe_cmd,
    atompipe_env,
    kill_group,
    start_atompipe,
    wait_until,
    write_campaign,
    write_cu,
)

SLOW_EMT = "tests.reliability.slow_emt:SlowEMT"
PICKS = 8  # labels of the one iteration
EPOCHS = 150

NN: dict[str, Any] = {
    "type": "neuralnetwork",
    "features": "g",
    "hiddenlayers": [4],
    "activation": "celu0.1",
    "force_weight": 1.0,
    "ensemble": 2,
    "training": {
        "epochs": EPOCHS,
        "batch_size": 8,
        "warmup_epochs": 0,
        "scheduler": None,
        "patience": None,
    },
}

ACTIVE: dict[str, Any] = {
    "model": "nn",
    "iterations": 1,
    "exploration": {"temperatures": [600], "steps": 40, "interval": 5, "starts": 2},
    "selection": {"threshold": 0.0, "max_labels": PICKS, "diversity": "none"},
    "labelling": {"calculator": SLOW_EMT, "params": {"delay": 0.3}, "allow": [SLOW_EMT]},
}


def _campaign(folder: Path) -> Path:
    write_cu(folder / "cu.extxyz", n=16)
    return write_campaign(
        folder,
        **{
            "models": {"nn": NN},
            "dask": {"n_workers": 2, "rows_per_chunk": 64},
            "active": ACTIVE,
        },
    )


def _report(capfd, case: str, outcome: str) -> None:
    with capfd.disabled():
        print(f"\nCASE {case}: {outcome}")


# -- files and processes ---------------------------------------------------------------------------
def _stamps(root: Path, pattern: str = "**/*") -> dict[str, tuple[int, int]]:
    """Each file under ``root`` matching ``pattern`` with its (inode, mtime): a file written
    again (a temporary file renamed into place) changes both. Hidden files (a writer's
    temporary file), lock files and staged groups are left out."""
    out = {}
    for p in root.glob(pattern):
        rel = p.relative_to(root)
        if not p.is_file() or p.name.endswith(".lock"):
            continue
        if any(part.startswith(".") for part in rel.parts):
            continue
        st = p.stat()
        out[str(rel)] = (st.st_ino, st.st_mtime_ns)
    return out


def _labels(workspace: Path) -> dict[str, tuple[int, int]]:
    return _stamps(workspace / "active" / "labels", "*.npz")


def _start(campaign: Path, env: dict[str, str]) -> subprocess.Popen:
    return start_atompipe(["active", campaign], campaign.parent, env)


def _rerun(
    campaign: Path, env: dict[str, str], watch: Path | None = None
) -> tuple[dict[int, dict[str, int]], list[int]]:
    """``atompipe active`` to completion: per iteration the labels added and computed now, as
    it prints them, and the epochs of each version of checkpoint ``watch`` seen meanwhile (a
    training restarted from scratch writes epoch 1 first; one resumed at epoch k, k + 1)."""
    proc = subprocess.Popen(
        atompipe_cmd("active", str(campaign)),
        cwd=str(campaign.parent),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[int] = []
    before = watch.stat() if watch is not None else None

    def watcher() -> None:  # new versions only: the one the kill left is not the rerun's
        last = None if before is None else (before.st_ino, before.st_mtime_ns)
        while proc.poll() is None:
            try:
                st = watch.stat()
            except FileNotFoundError:
                st = None
            if st is not None and (st.st_ino, st.st_mtime_ns) != last:
                epochs = _checkpoint_epochs(watch)
                if epochs is not None:
                    last = (st.st_ino, st.st_mtime_ns)
                    seen.append(epochs)
            time.sleep(0.001)

    thread = threading.Thread(target=watcher, daemon=True)
    if watch is not None:
        thread.start()
    try:
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if watch is not None:
        thread.join(timeout=5)
    assert proc.returncode == 0, err[-3000:]
    rows = {
        int(m["it"]): {"added": int(m["added"]), "computed": int(m["computed"])}
        for m in re.finditer(
            r"^iteration (?P<it>\d+): \d+ structures, (?P<added>\d+) labels added "
            r"\((?P<computed>\d+) computed now\)",
            out,
            re.M,
        )
    }
    assert sorted(rows) == [0, 1], out
    return rows, seen


def _mlflow_rows(workspace: Path, name: str) -> dict[int, dict[str, float]]:
    """The metrics of each iteration's MLflow run (the loop records once, at its end)."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    exp = client.get_experiment_by_name(f"{name}-active")
    if exp is None:
        return {}
    out = {}
    for run in client.search_runs([exp.experiment_id]):
        m = re.fullmatch(r"iteration-(\d+)", run.info.run_name)
        if m:
            assert int(m[1]) not in out, "an iteration recorded twice"
            out[int(m[1])] = run.data.metrics
    return out


def _final(workspace: Path) -> dict[str, Any]:
    """What a finished loop leaves: the last iteration's model and dataset keys (as MLflow
    tags them), the label files' names, the sha256 of the last model's weights."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{workspace / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rel-active")
    (run,) = client.search_runs([exp.experiment_id], "attributes.run_name = 'iteration-1'")
    model = run.data.tags["atompipe.model_key"]
    weights = workspace / "models" / model / "weights.safetensors"
    return {
        "model": model,
        "dataset": run.data.tags["atompipe.dataset_key"],
        "labels": sorted(_labels(workspace)),
        "weights": hashlib.sha256(weights.read_bytes()).hexdigest(),
    }


@pytest.fixture(scope="module")
def uninterrupted(prefect_api, tmp_path_factory) -> dict[str, Any]:
    """The same campaign run once, never killed: what each resumed loop must end with."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    campaign = _campaign(folder)
    rows, _ = _rerun(campaign, atompipe_env(prefect_api))
    assert rows[1] == {"added": PICKS, "computed": PICKS}
    return _final(folder / "workspace")


def _checkpoint_epochs(path: Path) -> int | None:
    try:
        return int(torch.load(path, weights_only=True)["history"]["epochs_completed"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return None


def _changed(before: dict, after: dict) -> list[str]:
    """Files of ``before`` that are gone or written again in ``after``."""
    return sorted(k for k, v in before.items() if after.get(k) != v)


# -- 1. killed while labelling -----------------------------------------------------------------
def test_killed_while_labelling_resumes_computing_only_the_missing_labels(
    prefect_api, uninterrupted, tmp_path, capfd
):
    t0 = time.monotonic()
    campaign = _campaign(tmp_path)
    workspace = tmp_path / "workspace"
    env = atompipe_env(prefect_api)

    first = _start(campaign, env)

    def some_labels():
        n = len(_labels(workspace))
        return n if 1 <= n <= PICKS - 3 else None

    wait_until(first, some_labels, "some labels were written")
    kill_group(first)
    at_kill = _labels(workspace)
    leftovers = sorted(p.name for p in (workspace / "active" / "labels").glob(".*"))
    n_kill = len(at_kill)
    assert 1 <= n_kill < PICKS
    assert not (workspace / "mlflow.db").exists() or not _mlflow_rows(workspace, "rel")

    rows, _ = _rerun(campaign, env)
    after = _labels(workspace)
    assert rows[1]["added"] == PICKS and len(after) == PICKS
    assert not _changed(at_kill, after), "a label that existed was written again"
    assert rows[1]["computed"] == PICKS - n_kill  # the missing ones, and only them
    assert rows[0]["computed"] == 0
    recorded = _mlflow_rows(workspace, "rel")
    assert recorded[1]["labels_computed"] == PICKS - n_kill
    assert recorded[1]["labels_added"] == PICKS
    final = _final(workspace)
    assert final == uninterrupted  # the same labels, dataset, model key and weights
    _report(
        capfd,
        "A1",
        f"killed with {n_kill}/{PICKS} labels written ({len(leftovers)} temporary file(s) left); "
        f"the rerun computed {rows[1]['computed']} (MLflow labels_computed "
        f"{recorded[1]['labels_computed']:.0f}), {len(_changed(at_kill, after))} of the "
        f"{n_kill} rewritten; final keys and weights as uninterrupted; "
        f"{time.monotonic() - t0:.0f} s",
    )


# -- 2. killed while the committee trains ------------------------------------------------------
def test_killed_while_training_resumes_without_labelling_or_featurizing_again(
    prefect_api, uninterrupted, tmp_path, capfd
):
    t0 = time.monotonic()
    campaign = _campaign(tmp_path)
    workspace = tmp_path / "workspace"
    models, checkpoints = workspace / "models", workspace / "checkpoints"
    store = workspace / "store.zarr"
    env = atompipe_env(prefect_api)

    first = _start(campaign, env)

    def iteration_one_training():
        published = {p.parent.name for p in models.glob("*/card.json")}
        if len(published) != 1 or len(_labels(workspace)) < PICKS:
            return None
        for ckpt in checkpoints.rglob("last.pt"):
            key = ckpt.relative_to(checkpoints).parts[0]
            epochs = _checkpoint_epochs(ckpt)
            if key not in published and epochs is not None and 20 <= epochs <= EPOCHS - 40:
                return key, ckpt
        return None

    training, ckpt = wait_until(first, iteration_one_training, "iteration 1 trains")
    kill_group(first)
    member = ckpt.parent.name if ckpt.parent.name.startswith("member") else "member0"
    at_kill = _checkpoint_epochs(ckpt)
    epochs = {
        (p.parent.name if p.parent != checkpoints / training else "member0"): _checkpoint_epochs(p)
        for p in (checkpoints / training).rglob("last.pt")
    }
    assert not (models / training / "card.json").exists()
    (seed_model,) = [p.parent.name for p in models.glob("*/card.json")]
    labels = _labels(workspace)
    features = _stamps(store / "features")
    datasets = _stamps(store / "datasets")
    seed_files = _stamps(models / seed_model)
    n_groups = len({Path(f).parts[0] for f in features if len(Path(f).parts) > 1})
    assert len(labels) == PICKS and n_groups == 2  # the seed's features and the grown set's

    rows, seen = _rerun(campaign, env, watch=ckpt)
    assert seen, f"no checkpoint of {member} seen during the rerun"
    assert min(seen) > at_kill, f"{member} killed at epoch {at_kill} restarted: {seen[:5]}"
    assert rows[1]["computed"] == 0 and rows[1]["added"] == PICKS
    recorded = _mlflow_rows(workspace, "rel")
    assert recorded[1]["labels_computed"] == 0
    assert _labels(workspace) == labels
    rewritten = {
        "features": _changed(features, _stamps(store / "features")),
        "datasets": _changed(datasets, _stamps(store / "datasets")),
        "seed model": _changed(seed_files, _stamps(models / seed_model)),
    }
    assert rewritten == {"features": [], "datasets": [], "seed model": []}
    assert (models / training / "card.json").exists()
    assert not (checkpoints / training).exists()
    final = _final(workspace)
    same_weights = final.pop("weights") == uninterrupted["weights"]
    assert final == {k: v for k, v in uninterrupted.items() if k != "weights"}
    _report(
        capfd,
        "A2",
        f"killed while {member} of iteration 1 trained (checkpointed epochs {epochs} of "
        f"{EPOCHS}, {PICKS} labels, {n_groups} feature "
        f"groups of {len(features)} files done); the rerun resumed {member} at epoch "
        f"{min(seen)} ({len(seen)} checkpoints seen), computed "
        f"{rows[1]['computed']} labels (MLflow {recorded[1]['labels_computed']:.0f}), rewrote "
        f"{sum(map(len, rewritten.values()))} of {len(features) + len(datasets)} store files "
        f"and 0 of {len(seed_files)} files of the seed model, published the committee "
        f"(weights {'byte-identical to' if same_weights else 'differ from'} the uninterrupted "
        f"run's); "
        f"{time.monotonic() - t0:.0f} s",
    )
