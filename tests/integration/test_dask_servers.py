"""Featurization on a real Dask deployment: a ``dask scheduler`` and two ``dask worker``
processes on 127.0.0.1, reached by address through ``tasks.cluster.dask_client``.

The stored features must be byte-identical to a serial run; an unreachable address must give a
ClusterError that names it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from atomistic.data import load_files, write_dataset
from atomistic.features.store import read_features
from tasks.cluster import ClusterError, dask_client
from tasks.featurize import featurize_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CU = ROOT / "data" / "cu_emt.extxyz"
N_FRAMES = 40  # 40 x 32 atoms
ROWS = 32 * 2  # 20 chunks
PARAMS = {"cutoff": 6.5}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process group we started (workers first), then SIGKILL what remains."""
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    for proc in procs:
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=15)


@pytest.fixture
def dask_servers(tmp_path):
    """Address of a scheduler with two single-threaded workers, all separate processes."""
    scheduler_file = tmp_path / "scheduler.json"
    logs = tmp_path / "logs"
    logs.mkdir()
    env = _env()
    procs: list[subprocess.Popen] = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            [sys.executable, "-m", *args],
            env=env,
            cwd=str(tmp_path),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the nanny's child dies with it
        )
        log.close()
        procs.insert(0, proc)  # stop order: workers before the scheduler
        return proc

    try:
        scheduler = start(
            "scheduler",
            [
                "distributed.cli.dask_scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--no-dashboard",
                "--scheduler-file",
                str(scheduler_file),
            ],
        )
        deadline = time.monotonic() + 60
        address = None
        while time.monotonic() < deadline and address is None:
            if scheduler.poll() is not None:
                break
            try:
                address = json.loads(scheduler_file.read_text())["address"]
            except (FileNotFoundError, json.JSONDecodeError, KeyError):
                time.sleep(0.1)
        if address is None:
            raise RuntimeError(
                "the dask scheduler did not start:\n" + (logs / "scheduler.log").read_text()
            )
        assert address.startswith("tcp://127.0.0.1:")
        for i in range(2):
            start(
                f"worker-{i}",
                [
                    "distributed.cli.dask_worker",
                    address,
                    "--nthreads",
                    "1",
                    "--no-dashboard",
                    "--name",
                    f"w{i}",
                    "--host",
                    "127.0.0.1",
                ],
            )
        yield address
    finally:
        _stop(procs)


def test_featurize_on_dask_scheduler_and_workers(dask_servers, tmp_path):
    address = dask_servers
    ds = load_files([CU]).subset(range(N_FRAMES))
    store = str(tmp_path / "dask.zarr")
    dataset_key, _ = write_dataset(ds, store)

    progress: list[tuple[int, int]] = []
    with dask_client(address, timeout=30) as client:
        client.wait_for_workers(2, timeout=60)
        workers = client.scheduler_info()["workers"]
        assert len(workers) == 2
        assert {w["nthreads"] for w in workers.values()} == {1}
        assert all(a.startswith("tcp://127.0.0.1:") for a in workers)
        # the chunks run in the worker processes, not here
        assert not set(client.run(os.getpid).values()) & {os.getpid()}
        ref = featurize_dataset(
            store,
            dataset_key,
            "gaussian",
            PARAMS,
            client=client,
            rows_per_chunk=ROWS,
            on_chunk=lambda d, t: progress.append((d, t)),
        )
    n_chunks = -(-ds.n_atoms // ROWS)
    assert ref["n_chunks"] == n_chunks and ref["computed_chunks"] == n_chunks
    assert progress[-1] == (n_chunks, n_chunks) and len(progress) == n_chunks
    group = zarr.open_group(store, mode="r", path=f"features/{ref['key']}")
    assert group.attrs["complete"] is True and group["done"][...].all()

    serial_store = str(tmp_path / "serial.zarr")
    assert write_dataset(ds, serial_store)[0] == dataset_key
    serial = featurize_dataset(serial_store, dataset_key, "gaussian", PARAMS, rows_per_chunk=ROWS)
    assert serial["key"] == ref["key"] and serial["computed_chunks"] == n_chunks

    a = np.asarray(group["values"][...])
    b = np.asarray(
        zarr.open_group(serial_store, mode="r", path=f"features/{ref['key']}")["values"][...]
    )
    assert a.dtype == b.dtype == np.float64 and a.shape == b.shape
    assert a.tobytes() == b.tobytes()
    va, oa = read_features(store, ref["key"])
    vb, ob = read_features(serial_store, ref["key"])
    assert np.array_equal(va, vb) and np.array_equal(oa, ob)
    assert np.array_equal(oa, ds.offsets)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_scheduler_names_its_address():
    address = f"tcp://127.0.0.1:{_closed_port()}"
    t0 = time.monotonic()
    with pytest.raises(ClusterError) as info:
        with dask_client(address, timeout=2):
            pass
    assert address in str(info.value)
    assert time.monotonic() - t0 < 30
