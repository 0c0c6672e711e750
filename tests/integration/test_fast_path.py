"""The no-op rerun (flows/fastpath.py), with real Prefect, Dask, Zarr and MLflow: ``atompipe run``
a second time, in a new process, answers from the store without a Prefect flow run and prints
the same table; a changed hyperparameter, a deleted stage output or a missing MLflow run sends
it down the full path; commands that compute nothing import neither torch nor Prefect."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import ase.io
import pytest
import yaml

from flows.config import load_campaign
from flows.fastpath import completed_run, results_folder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NAME = "fastpath-itest"
CAMPAIGN = {
    "name": NAME,
    "workspace": "ws",
    "datasets": {"cu": {"paths": ["cu.extxyz"]}},
    "features": {"g": {"type": "gaussian", "dataset": "cu", "cutoff": 5.0}},
    "dask": {"n_workers": 1},
    "models": {
        "nn": {
            "type": "neuralnetwork",
            "features": "g",
            "hiddenlayers": [4],
            "activation": "tanh",
            "training": {"epochs": 3, "batch_size": 16},
        },
        "krr": {"type": "kernelridge", "features": "g", "sigma": 1.0, "lamda": 1e-6},
    },
}
FAST = "every stage is complete (fast path"
FULL = "full run ("


def _env(api_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    env["PREFECT_API_URL"] = api_url  # the session's API: the full path starts no server
    env.pop("PREFECT_LOCAL_STORAGE_PATH", None)  # `atompipe run` keeps results in the workspace
    return env


def _atompipe(workdir: Path, api_url: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from flows.cli import main; main()", *args]
    out = subprocess.run(
        cmd, cwd=workdir, env=_env(api_url), capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def _rows(stdout: str) -> list[str]:
    """The table's rows and the lines after it, without its title (the run's wall time)."""
    return [line for line in stdout.splitlines() if line.strip() and "campaign " not in line]


def _flow_runs() -> int:
    """Flow runs of this campaign recorded by the session's Prefect API."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(limit=200)
    return sum(1 for r in runs if (r.parameters.get("config") or {}).get("name") == NAME)


@pytest.fixture(scope="module")
def first(tmp_path_factory, shipped, prefect_api):
    """A workspace after one complete full run: (folder, its stdout)."""
    workdir = tmp_path_factory.mktemp("fastpath")
    ase.io.write(workdir / "cu.extxyz", ase.io.read(shipped["cu"], ":40"))
    (workdir / "campaign.yaml").write_text(yaml.safe_dump(CAMPAIGN))
    out = _atompipe(workdir, prefect_api, "run", "campaign.yaml", "--quiet")
    assert FULL + "no complete run" in out.stderr
    assert _flow_runs() == 1
    return workdir, out.stdout


def test_a_rerun_in_a_new_process_takes_the_fast_path_with_the_same_table(first, prefect_api):
    workdir, stdout = first
    again = _atompipe(workdir, prefect_api, "run", "campaign.yaml")
    assert FAST in again.stderr, again.stderr[-2000:]
    assert _flow_runs() == 1  # no flow run: Prefect was never asked
    assert _rows(again.stdout) == _rows(stdout)
    assert "champion: " in again.stdout and "MLflow: sqlite:///" in again.stdout

    forced = _atompipe(workdir, prefect_api, "run", "campaign.yaml", "--no-fast-path", "--quiet")
    assert FAST not in forced.stderr and FULL not in forced.stderr
    assert _flow_runs() == 2
    assert _rows(forced.stdout) == _rows(stdout)


def test_commands_that_compute_nothing_import_neither_torch_nor_prefect(first):
    workdir, _ = first
    with socket.socket() as busy:  # `ui` fails at the port, after its checks and imports
        busy.bind(("127.0.0.1", 0))
        port = busy.getsockname()[1]
        for args, code in (
            (["compare", "campaign.yaml"], 0),
            (["ui", "campaign.yaml", "--port", str(port)], 1),
            (["run", "campaign.yaml"], 0),  # the fast path
        ):
            script = (
                "import sys\n"
                "from flows.cli import app\n"
                "try:\n"
                f"    app({args!r})\n"
                "except SystemExit as exc:\n"
                "    print('exit', exc.code)\n"
                "print('loaded', [m for m in ('torch', 'prefect') if m in sys.modules])\n"
            )
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            env.pop("PREFECT_LOCAL_STORAGE_PATH", None)
            out = subprocess.run(
                [sys.executable, "-c", script], cwd=workdir, env=env, capture_output=True, text=True
            )
            lines = out.stdout.splitlines()
            assert lines[-1] == "loaded []", (args, out.stdout[-1500:], out.stderr[-1500:])
            assert lines[-2] == f"exit {code}", (args, out.stdout[-1500:])


def test_a_missing_mlflow_run_is_doubt(first, monkeypatch):
    from mlflow import MlflowClient

    workdir, _ = first
    monkeypatch.chdir(workdir)
    monkeypatch.delenv("PREFECT_LOCAL_STORAGE_PATH", raising=False)
    cfg = load_campaign(workdir / "campaign.yaml", build_featurizers=False)
    found = completed_run(cfg, results_folder(cfg))
    assert found.summary is not None, found.reason
    run_id = found.summary["tracking"]["children"]["krr"]["run_id"]
    client = MlflowClient(cfg.tracking_uri)
    client.delete_run(run_id)
    try:
        found = completed_run(cfg, results_folder(cfg))
        assert found.summary is None and f"MLflow run {run_id}" in found.reason
    finally:
        client.restore_run(run_id)
    assert completed_run(cfg, results_folder(cfg)).summary is not None


def test_b_a_changed_hyperparameter_takes_the_full_path(first, prefect_api):
    workdir, stdout = first
    runs = _flow_runs()
    epochs = "--set", "models.nn.training.epochs=4"
    changed = _atompipe(workdir, prefect_api, "run", "campaign.yaml", *epochs, "--quiet")
    assert FULL + "no complete run of this configuration" in changed.stderr
    assert _flow_runs() == runs + 1
    assert _rows(changed.stdout) != _rows(stdout)  # nn trained again, for 4 epochs


def test_b_a_deleted_stage_output_takes_the_full_path(first, prefect_api):
    workdir, stdout = first
    features = workdir / "ws" / "store.zarr" / "features"
    (group,) = [p for p in features.iterdir() if p.is_dir()]
    shutil.rmtree(group)
    runs = _flow_runs()
    rerun = _atompipe(workdir, prefect_api, "run", "campaign.yaml", "--quiet")
    assert FULL + "featurize/g: features" in rerun.stderr, rerun.stderr[-2000:]
    assert _flow_runs() == runs + 1
    assert (group / "zarr.json").exists()  # computed again, complete
    assert _rows(rerun.stdout) == _rows(stdout)

    again = _atompipe(workdir, prefect_api, "run", "campaign.yaml")
    assert FAST in again.stderr
    assert _flow_runs() == runs + 1
