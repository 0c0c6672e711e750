"""Helpers of the reliability tests: a small labelled Cu set, campaign files, store snapshots
and ``atompipe`` subprocesses."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import ase.io
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[2]
CU = ROOT / "data" / "cu_emt.extxyz"

# The smallest campaign that runs every stage: 16 Cu structures x 32 atoms, 8 Gaussian columns,
# one Dask worker, KRR only, no plots.
CAMPAIGN: dict[str, Any] = {
    "name": "rel",
    "datasets": {"cu": {"paths": ["cu.extxyz"]}},
    "split": {"fractions": [0.75, 0.125, 0.125], "seed": 0},
    "features": {"g": {"type": "gaussian", "dataset": "cu", "cutoff": 4.0}},
    "dask": {"n_workers": 1, "rows_per_chunk": 64},
    "models": {"krr": {"type": "kernelridge", "features": "g", "sigma": 1.0, "lamda": 1e-6}},
    "evaluation": {"plots": False},
}


def write_cu(path: Path, n: int = 16, start: int = 0) -> Path:
    ase.io.write(path, ase.io.read(CU, f"{start}:{start + n}"))
    return path


def write_campaign(folder: Path, name: str = "campaign.yaml", **changes: Any) -> Path:
    """``CAMPAIGN`` with dotted-key ``changes`` (a value of None deletes the key) as YAML."""
    raw = yaml.safe_load(yaml.safe_dump(CAMPAIGN))
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        if value is None:
            node.pop(last, None)
        else:
            node[last] = value
    path = folder / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file under ``roots`` with the sha256 of its bytes (lock files left out)."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.name.endswith(".lock"):
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def atompipe_env(api_url: str | None, **extra: str) -> dict[str, str]:
    """The environment of an ``atompipe`` subprocess: this checkout importable, one thread,
    no telemetry, the Prefect API ``api_url`` (None: none set, so Prefect starts its own
    ephemeral one, or a command that needs none runs without), plus ``extra``."""
    env = dict(os.environ)
    env.update(
        {
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p),
            "OMP_NUM_THREADS": "1",
            "DO_NOT_TRACK": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true",
        }
    )
    if api_url is None:
        env.pop("PREFECT_API_URL", None)
    else:
        env["PREFECT_API_URL"] = api_url
    env.pop("PREFECT_LOCAL_STORAGE_PATH", None)  # `atompipe run` keeps results in the workspace
    env.update(extra)
    return env


def atompipe_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from flows.cli import main; main()", *args]


def start_atompipe(args: list[Any], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    """``atompipe ARGS`` started in its own process group (a signal to the group reaches its
    Dask workers too, as a terminal's Ctrl-C does), stdout discarded, stderr piped."""
    return subprocess.Popen(
        atompipe_cmd(*(str(a) for a in args)),
        cwd=str(cwd),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def run_atompipe(args: list[str], cwd: Path, env: dict[str, str], **kw: Any):
    return subprocess.run(
        atompipe_cmd(*args), cwd=str(cwd), env=env, capture_output=True, text=True, **kw
    )


def cli(args: list, capfd) -> tuple[int, str]:
    """Run the ``atompipe`` typer app in this process (flows use the test's Prefect API);
    returns the exit status and what it wrote to stderr."""
    from flows.cli import app

    capfd.readouterr()
    try:
        code = app([str(a) for a in args], prog_name="atompipe", standalone_mode=False)
    except SystemExit as exc:  # pragma: no cover - typer exits this way on usage errors
        code = exc.code
    _, err = capfd.readouterr()
    return int(code or 0), err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("error:")]


def copy_campaign(src: Path, dst: Path) -> Path:
    """A copy of a campaign folder (files, workspace, MLflow database) at ``dst``."""
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of ``proc`` and wait until none of its processes (the Dask
    workers included) is left."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        alive = [p for p in psutil.process_iter(["pid"]) if _pgid(p.info["pid"]) == proc.pid]
        if not alive:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of the killed group {proc.pid} survive: {alive}")


def wait_until(proc: subprocess.Popen, ready, what: str, timeout: float = 240):
    """Poll ``ready()`` until it returns something other than None, and return that; fail when
    ``proc`` ends first or after ``timeout`` seconds (killing its group)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = ready()
        if value is not None:
            return value
        if proc.poll() is not None:
            _, err = proc.communicate()
            raise AssertionError(
                f"atompipe ended (rc {proc.returncode}) before {what}: {err.decode()[-3000:]}"
            )
        time.sleep(0.01)
    kill_group(proc)
    raise AssertionError(f"timed out waiting for {what}")
