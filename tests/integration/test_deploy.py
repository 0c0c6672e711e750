"""A deployment made by ``atompipe serve`` on a real ``prefect server`` bound to 127.0.0.1: one
run started by hand (``prefect deployment run``), one started by the file-arrival trigger."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import ase.io
import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

CAMPAIGN = {
    "name": "served",
    "datasets": {"cu": {"paths": ["incoming"]}},  # the watched folder: new files, new data
    "features": {"g": {"type": "gaussian", "dataset": "cu", "cutoff": 4.5}},
    "dask": {"n_workers": 1},
    "models": {"krr": {"type": "kernelridge", "features": "g", "sigma": 1.0, "lamda": 1e-6}},
    "evaluation": {"plots": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=20)


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"prefect server exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(
        f"prefect server not healthy after {timeout} s:\n{log.read_text()[-3000:]}"
    )


def _flow_runs(env: dict[str, str]) -> list[dict]:
    script = (
        "import asyncio, json\n"
        "from prefect.client.orchestration import get_client\n"
        "async def main():\n"
        "    async with get_client() as c:\n"
        "        runs = await c.read_flow_runs()\n"
        "        print(json.dumps([{'id': str(r.id), 'state': r.state.type.value,\n"
        "            'deployment': str(r.deployment_id)} for r in runs]))\n"
        "asyncio.run(main())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_served_deployment_runs_on_demand_and_on_file_arrival(tmp_path, shipped):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    ase.io.write(incoming / "cu.extxyz", ase.io.read(shipped["cu"], ":30"))
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump({**CAMPAIGN, "workspace": "ws"}))
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "prefect-home"),
        "PREFECT_API_URL": api,
        "PREFECT_LOCAL_STORAGE_PATH": str(tmp_path / "results"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LEVEL": "WARNING",
        "DO_NOT_TRACK": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "OMP_NUM_THREADS": "1",
    }
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    logs = contextlib.ExitStack()  # the log files, closed once both processes are stopped
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env={k: v for k, v in env.items() if k != "PREFECT_API_URL"},
        stdout=logs.enter_context(server_log.open("w")),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    serve = None
    try:
        _wait_healthy(api, server, server_log)
        serve = subprocess.Popen(
            [
                str(BIN / "atompipe"),
                "serve",
                "campaign.yaml",
                "--name",
                "nightly",
                "--cron",
                "0 3 * * *",
                "--watch",
                str(incoming),
                "--watch-interval",
                "1",
            ],
            cwd=tmp_path,
            env=env,
            stdout=logs.enter_context(serve_log.open("w")),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # on demand: `prefect deployment run --watch` waits for the terminal state
        deadline = time.monotonic() + 120
        while True:
            run = subprocess.run(
                [
                    str(BIN / "prefect"),
                    "deployment",
                    "run",
                    "atompipe-campaign/nightly",
                    "--watch",
                    "--watch-timeout",
                    "300",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=360,
            )
            if run.returncode == 0 or "not found" not in (run.stdout + run.stderr).lower():
                break
            assert time.monotonic() < deadline, serve_log.read_text()[-3000:]
            time.sleep(2)  # the deployment is not registered yet
        assert run.returncode == 0, (
            run.stdout[-3000:] + run.stderr[-3000:] + serve_log.read_text()[-3000:]
        )
        assert "Completed" in run.stdout, run.stdout[-3000:]
        cards = list((tmp_path / "ws" / "models").glob("*/card.json"))
        assert len(cards) == 1
        client = MlflowClient(f"sqlite:///{tmp_path / 'ws' / 'mlflow.db'}")
        exp = client.get_experiment_by_name("served")
        assert len(client.search_runs([exp.experiment_id])) == 2  # the campaign and krr

        # a file arrives in the watched folder: the trigger starts a second run on the new data
        ase.io.write(tmp_path / "new.extxyz", ase.io.read(shipped["cu"], "30:40"))
        os.rename(tmp_path / "new.extxyz", incoming / "new.extxyz")
        deadline = time.monotonic() + 240
        while True:
            # the cron schedule adds runs for the nights ahead (SCHEDULED): not ours
            runs = [r for r in _flow_runs(env) if r["state"] != "SCHEDULED"]
            if len(runs) >= 2 and all(r["state"] == "COMPLETED" for r in runs):
                break
            failed = [r for r in runs if r["state"] in ("FAILED", "CRASHED")]
            assert not failed, serve_log.read_text()[-3000:]
            assert time.monotonic() < deadline, (runs, serve_log.read_text()[-3000:])
            time.sleep(3)
        assert len(runs) == 2
        assert len(list((tmp_path / "ws" / "models").glob("*/card.json"))) == 2  # retrained
        # the deployment carries the cron schedule
        show = subprocess.run(
            [str(BIN / "prefect"), "deployment", "inspect", "atompipe-campaign/nightly"],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert "0 3 * * *" in show.stdout, show.stdout[-3000:]
    finally:
        if serve is not None:
            _stop(serve)
        _stop(server)
        logs.close()
    assert server.returncode is not None and (serve is None or serve.returncode is not None)
