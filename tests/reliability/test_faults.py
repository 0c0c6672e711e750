"""Faults: a Dask worker killed during featurization, the campaign process killed during
featurization and again during training, and two campaigns on one store at once.

Everything is real: a LocalCluster whose worker process is SIGKILLed, ``atompipe run``
subprocesses killed with their whole process group (their Dask workers included), and two
``atompipe run`` processes sharing one Prefect API, one Zarr store and one MLflow database.
"""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch
import zarr
from reliability_support import (
    atompipe_env,
    kill_group,
    snapshot,
    start_atompipe,
    wait_until,
    write_campaign,
    write_cu,
)

from atomistic.data import load_files, read_dataset
from atomistic.features.store import feature_key, read_features
from atomistic.models.base import load_model
from flows.cli import app
from flows.config import load_campaign
from tasks.featurize import build_featurizer, featurize_dataset

ROWS = 64  # two 32-atom structures per chunk


def _feature_key(data: Path, params: dict) -> tuple[str, str, object]:
    ds = load_files([data])
    f = build_featurizer("gaussian", params, ds.elements)
    return ds.key, feature_key(ds.key, f.name, f.get_params()), f


def _done(store: Path, key: str) -> np.ndarray | None:
    try:
        group = zarr.open_group(str(store), mode="r", path=f"features/{key}")
        return np.asarray(group["done"][...], dtype=bool)
    except Exception:  # not created yet, or being created right now
        return None


def _chunk_files(store: Path, key: str) -> dict[str, tuple[int, int]]:
    """Each stored chunk file of the feature values with its (inode, mtime): a rewrite (Zarr
    writes a temporary file and renames it) changes both."""
    root = store / "features" / key / "values" / "c"
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def _values_sha(store: Path, key: str) -> dict[str, str]:
    root = store / "features" / key / "values"
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _clean_features(tmp: Path, data: Path, params: dict) -> tuple[Path, str]:
    """An uninterrupted, serial featurization of the same file into a fresh store."""
    from atomistic.data import write_dataset

    store = tmp / "clean.zarr"
    dkey, _ = write_dataset(load_files([data]), store, split=(0.75, 0.125, 0.125))
    ref = featurize_dataset(str(store), dkey, "gaussian", params, rows_per_chunk=ROWS)
    return store, ref["key"]


# -- a Dask worker killed mid-featurization ----------------------------------------------------
CLUSTER = """
import os, sys
from distributed import Client, LocalCluster
cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                       dashboard_address=None)
client = Client(cluster)
print(cluster.scheduler_address, *sorted(client.run(os.getpid).values()), flush=True)
sys.stdin.read()  # until the test closes our stdin
client.close()
cluster.close()
"""


def _workers(cluster: subprocess.Popen) -> set[int]:
    procs = psutil.Process(cluster.pid).children(recursive=True)
    return {p.pid for p in procs if "resource_tracker" not in " ".join(p.cmdline())}


def test_killed_dask_worker_flow_completes_with_identical_bytes(prefect_api, tmp_path):
    from flows.campaign import run_campaign

    # 120 structures, 60 chunks: with the fused kernels a chunk takes a few ms, and the window
    # in which to kill a worker (some chunks done, many left) must outlast a loaded machine
    data = write_cu(tmp_path / "cu.extxyz", n=120)
    params = {"cutoff": 5.0}
    _, fkey, featurizer = _feature_key(data, params)
    store = tmp_path / "workspace" / "store.zarr"
    killed: list[int] = []
    cluster = subprocess.Popen(
        [sys.executable, "-c", CLUSTER],
        env=atompipe_env(prefect_api),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        address, *pids = cluster.stdout.readline().split()
        pids = [int(p) for p in pids]
        assert address.startswith("tcp://127.0.0.1:") and len(pids) == 2
        assert _workers(cluster) == set(pids)
        # every socket the cluster listens on is on the loopback interface
        procs = [psutil.Process(cluster.pid), *psutil.Process(cluster.pid).children(True)]
        listening = [
            c.laddr.ip for p in procs for c in p.net_connections("inet") if c.status == "LISTEN"
        ]
        assert listening and set(listening) == {"127.0.0.1"}, listening

        def kill_one_worker() -> None:
            # chunks marked done, counted from the files of ``done`` (a cheap listing; chunks
            # never marked are absent), so that the poll keeps up with the workers
            marks = store / "features" / fkey / "done" / "c"
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                n_done = len(os.listdir(marks)) if marks.is_dir() else 0
                if 2 <= n_done < 40:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(n_done)
                    return
                time.sleep(0.002)

        watcher = threading.Thread(target=kill_one_worker, daemon=True)
        watcher.start()
        campaign = write_campaign(
            tmp_path,
            **{
                "features.g.cutoff": params["cutoff"],
                "dask": {"address": address, "rows_per_chunk": ROWS},
            },
        )
        summary = run_campaign(load_campaign(campaign), show_progress=False, features_only=True)
        watcher.join(timeout=5)
        assert killed, "the featurization finished before a worker could be killed"
        assert not psutil.pid_exists(pids[0]) or psutil.Process(pids[0]).status() == "zombie"
        deadline = time.monotonic() + 60  # the nanny starts a new worker process
        while len(_workers(cluster) - {pids[0]}) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(_workers(cluster) - {pids[0]}) == 2
    finally:
        cluster.stdin.close()
        try:
            cluster.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(cluster.pid, signal.SIGKILL)
            cluster.wait(timeout=30)

    assert summary["states"]["featurize/g"] == "Completed"
    assert summary["features"]["g"] == fkey
    n_chunks = len(_done(store, fkey))
    print(f"\nworker killed with {killed[0]}/{n_chunks} chunks done")
    clean_store, clean_key = _clean_features(tmp_path, data, params)
    assert clean_key == fkey
    assert _values_sha(store, fkey) == _values_sha(clean_store, fkey)  # byte-identical chunks
    values, offsets = read_features(str(store), fkey)
    expected = np.concatenate(featurizer.featurize(ase_images(data)), axis=0)
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    assert np.array_equal(offsets, load_files([data]).offsets)


def ase_images(path: Path) -> list:
    import ase.io

    return ase.io.read(path, ":")


# -- the campaign process killed mid-featurization, then mid-training --------------------------
def _start(campaign: Path, env: dict[str, str]) -> subprocess.Popen:
    return start_atompipe(["run", campaign, "--quiet"], campaign.parent, env)


def _checkpoint_epochs(path: Path) -> int | None:
    try:
        return int(torch.load(path, weights_only=True)["history"]["epochs_completed"])
    except (FileNotFoundError, RuntimeError, EOFError, KeyError):
        return None


EPOCHS = 150


def test_killed_campaign_resumes_featurization_and_training(prefect_api, tmp_path):
    data = write_cu(tmp_path / "cu.extxyz", n=48)
    params = {"cutoff": 6.5}
    _, fkey, _ = _feature_key(data, params)
    nn = {
        "type": "neuralnetwork",
        "features": "g",
        "hiddenlayers": [8],
        "activation": "tanh",
        "training": {
            "epochs": EPOCHS,
            "batch_size": 8,
            "lr": 0.005,
            "scheduler": None,
            "patience": None,
        },
    }
    campaign = write_campaign(
        tmp_path,
        **{"features.g.cutoff": params["cutoff"], "models": {"nn": nn}, "dask.n_workers": 1},
    )
    store = tmp_path / "workspace" / "store.zarr"
    env = atompipe_env(prefect_api)

    # 1. killed during featurization
    first = _start(campaign, env)

    def some_chunks_done():
        done = _done(store, fkey)
        return done if done is not None and 4 <= done.sum() <= len(done) - 8 else None

    wait_until(first, some_chunks_done, "a few feature chunks were done")
    kill_group(first)
    done_at_kill = _done(store, fkey)
    n_chunks, n_done = len(done_at_kill), int(done_at_kill.sum())
    group = zarr.open_group(str(store), mode="r", path=f"features/{fkey}")
    assert not group.attrs.get("complete", False)
    files_at_kill = _chunk_files(store, fkey)
    assert n_done < n_chunks == 24

    # 2. the rerun finishes the features, then is killed during training
    second = _start(campaign, env)
    ckpt_dirs = tmp_path / "workspace" / "checkpoints"

    def some_epochs_done():
        for ckpt in ckpt_dirs.glob("*/last.pt"):
            epochs = _checkpoint_epochs(ckpt)
            if epochs is not None and 10 <= epochs <= EPOCHS - 50:
                return ckpt
        return None

    ckpt = wait_until(second, some_epochs_done, "some training epochs were checkpointed")
    kill_group(second)
    k = _checkpoint_epochs(ckpt)
    assert not list((tmp_path / "workspace" / "models").glob("*/card.json"))

    group = zarr.open_group(str(store), mode="r", path=f"features/{fkey}")
    assert group.attrs["complete"] is True
    files_now = _chunk_files(store, fkey)
    rewritten = {c for c in files_now if files_at_kill.get(c) != files_now[c]}
    done_chunks = {f"{c}/0" for c in np.flatnonzero(done_at_kill)}
    assert not rewritten & done_chunks  # finished chunks were not computed again
    assert len(rewritten) == n_chunks - n_done
    print(f"\nkilled at {n_done}/{n_chunks} chunks: the rerun wrote {len(rewritten)} chunks")

    # 3. the third run resumes training from the checkpoint and completes the campaign
    code = app(["run", str(campaign), "--quiet"], prog_name="atompipe", standalone_mode=False)
    assert not code
    (model_dir,) = [p.parent for p in (tmp_path / "workspace" / "models").glob("*/card.json")]
    import json

    history = json.loads((model_dir / "history.json").read_text())
    assert history["resumed_from"] == k
    assert history["epochs_completed"] == EPOCHS
    assert len(history["metrics"]["train_loss"]) == EPOCHS
    print(f"\nkilled at epoch {k}/{EPOCHS}: the rerun resumed there and trained {EPOCHS - k}")
    assert not ckpt.parent.exists()  # the checkpoint is removed once the model is published
    model = load_model(model_dir)  # sha256 of the weights checked against the card
    ds = read_dataset(str(store), load_files([data]).key)
    pred = model.predict_atoms(ds.to_atoms()[:4], forces=False)["energy"]
    assert np.abs(pred - ds.energy[:4]).max() / 32 < 0.05  # a trained potential, eV/atom


# -- two campaigns on one store at once ----------------------------------------------------
def test_two_campaigns_on_one_store_at_once(prefect_api, tmp_path):
    data = write_cu(tmp_path / "cu.extxyz", n=32)
    nn = {
        "type": "neuralnetwork",
        "features": "g",
        "hiddenlayers": [6],
        "training": {"epochs": 10, "batch_size": 8},
    }
    campaign = write_campaign(tmp_path, **{"models.nn": nn})
    env = atompipe_env(prefect_api)
    procs = [_start(campaign, env) for _ in range(2)]
    errors = []
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=400)
        finally:
            if proc.poll() is None:
                kill_group(proc)
        errors.append(err.decode()[-3000:])
    assert [p.returncode for p in procs] == [0, 0], errors

    work = tmp_path / "workspace"
    store = work / "store.zarr"
    # no staged or torn groups; every published group is complete and matches its key
    assert not [p for p in store.glob(".staging/*") if p.is_dir()]
    (dkey,) = [p.name for p in (store / "datasets").iterdir() if p.is_dir()]
    ds = read_dataset(str(store), dkey)
    assert ds.key == dkey == load_files([data]).key
    (fkey,) = [p.name for p in (store / "features").iterdir() if p.is_dir()]
    group = zarr.open_group(str(store), mode="r", path=f"features/{fkey}")
    assert group.attrs["complete"] is True and group["done"][...].all()
    clean_store, clean_key = _clean_features(tmp_path, data, {"cutoff": 4.0})
    assert clean_key == fkey and _values_sha(store, fkey) == _values_sha(clean_store, fkey)
    cards = sorted((work / "models").glob("*/card.json"))
    assert len(cards) == 2  # krr and nn, each published once
    for card in cards:
        load_model(card.parent)
    assert not [p for p in (work / "models" / ".staging").glob("*")]
    assert not list((work / "checkpoints").glob("*/last.pt"))
    before = snapshot(store)

    # MLflow: one experiment, a parent run per campaign run
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{work / 'mlflow.db'}")
    exp = client.get_experiment_by_name("rel")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(parents) == 2 and all(r.info.status == "FINISHED" for r in runs)
    versions = client.search_model_versions("name='rel-champion'")
    # the second campaign's best scores no better than the champion it finds: no new version
    assert sorted(int(v.version) for v in versions) == [1]
    assert snapshot(store) == before
