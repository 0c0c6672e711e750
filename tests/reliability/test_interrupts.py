"""Ctrl-C (issue 15): SIGINT sent to the whole process group of ``atompipe run`` (as a terminal
sends it: the campaign process and its Dask workers) during featurization and again during
training, then SIGTERM to the process alone during training. Each time the command must exit
within 10 s with status 130 and one last line that says it was interrupted, publish nothing
partial, and the next run must resume (finished chunks are not computed again; training
continues from its checkpoint)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import zarr
from reliability_support import (
    atompipe_env,
    cli,
    kill_group,
    start_atompipe,
    wait_until,
    write_campaign,
    write_cu,
)
from test_faults import _checkpoint_epochs, _chunk_files, _done, _feature_key, _start

EPOCHS = 80


def _interrupt(proc: subprocess.Popen, sig: int = signal.SIGINT) -> tuple[float, str]:
    """Send ``sig`` to the process group; the seconds until the command exited, its stderr."""
    t0 = time.monotonic()
    os.killpg(proc.pid, sig)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    return time.monotonic() - t0, err.decode()


def _assert_stopped(proc: subprocess.Popen, seconds: float, err: str, what: str, capfd) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err[-3000:]
    assert seconds < 10, f"{what}: exited {seconds:.1f} s after SIGINT"
    assert lines and lines[-1].startswith("interrupted: campaign rel stopped"), err[-3000:]
    assert "Traceback" not in err and "Connection refused" not in err, err[-3000:]
    with capfd.disabled():
        print(f"\nCASE stop during {what}: exit 130 after {seconds:.1f} s: {lines[-1]}")


def test_sigint_during_featurization_and_training_stops_and_resumes(prefect_api, tmp_path, capfd):
    data = write_cu(tmp_path / "cu.extxyz", n=32)
    _, fkey, _ = _feature_key(data, {"cutoff": 6.5})
    nn = {
        "type": "neuralnetwork",
        "features": "g",
        "hiddenlayers": [8],
        "activation": "tanh",
        "training": {"epochs": EPOCHS, "batch_size": 8, "scheduler": None, "patience": None},
    }
    campaign = write_campaign(
        tmp_path, **{"features.g.cutoff": 6.5, "models": {"nn": nn}, "dask.n_workers": 1}
    )
    work = tmp_path / "workspace"
    store = work / "store.zarr"
    env = atompipe_env(prefect_api)

    # 1. SIGINT during featurization, with Prefect's own ephemeral API (no PREFECT_API_URL, as
    # a user runs it): the server must keep serving while the campaign stops, then go
    first = _start(campaign, atompipe_env(None, PREFECT_HOME=str(tmp_path / "prefect-home")))

    def some_chunks_done():
        done = _done(store, fkey)
        return done if done is not None and 2 <= done.sum() <= len(done) - 8 else None

    wait_until(first, some_chunks_done, "a few feature chunks were done")
    children = psutil.Process(first.pid).children(recursive=True)
    assert any("uvicorn" in " ".join(p.cmdline()) for p in children)  # the ephemeral API
    seconds, err = _interrupt(first)
    _assert_stopped(first, seconds, err, "featurization", capfd)
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, alive  # the API server and the Dask workers went with it
    done_at_stop = _done(store, fkey)
    group = zarr.open_group(str(store), mode="r", path=f"features/{fkey}")
    assert not group.attrs.get("complete", False) and 0 < done_at_stop.sum() < len(done_at_stop)
    files_at_stop = _chunk_files(store, fkey)
    assert not list(work.glob("models/*/card.json"))

    # 2. the rerun finishes the features only where they were not done; SIGINT in training
    second = _start(campaign, env)

    def some_epochs_done() -> Path | None:
        for ckpt in work.glob("checkpoints/*/last.pt"):
            epochs = _checkpoint_epochs(ckpt)
            if epochs is not None and 3 <= epochs <= EPOCHS - 40:
                return ckpt
        return None

    ckpt = wait_until(second, some_epochs_done, "some training epochs were checkpointed")
    seconds, err = _interrupt(second)
    _assert_stopped(second, seconds, err, "training", capfd)
    k = _checkpoint_epochs(ckpt)
    assert k is not None and k < EPOCHS
    assert not list(work.glob("models/*/card.json"))  # nothing partial published
    assert zarr.open_group(str(store), mode="r", path=f"features/{fkey}").attrs["complete"]
    files_now = _chunk_files(store, fkey)
    rewritten = {c for c in files_now if files_at_stop.get(c) != files_now[c]}
    assert not rewritten & {f"{c}/0" for c in np.flatnonzero(done_at_stop)}

    # 3. SIGTERM (`kill <pid>`, the process alone) once the resumed training is further on
    third = _start(campaign, env)

    def further() -> Path | None:
        epochs = _checkpoint_epochs(ckpt)
        return ckpt if epochs is not None and k < epochs <= EPOCHS - 20 else None

    wait_until(third, further, "the resumed training went on")
    t0 = time.monotonic()
    third.send_signal(signal.SIGTERM)
    try:
        _, raw = third.communicate(timeout=60)
    finally:
        if third.poll() is None:
            kill_group(third)
    _assert_stopped(third, time.monotonic() - t0, raw.decode(), "training (SIGTERM)", capfd)
    k3 = _checkpoint_epochs(ckpt)
    assert k3 is not None and k < k3 < EPOCHS
    assert not list(work.glob("models/*/card.json"))

    # 4. the last run resumes training from the checkpoint and completes the campaign
    code, err = cli(["run", campaign, "--quiet"], capfd)
    assert code == 0, err[-3000:]
    (model_dir,) = [p.parent for p in work.glob("models/*/card.json")]
    history = json.loads((model_dir / "history.json").read_text())
    assert history["resumed_from"] >= k3
    assert history["epochs_completed"] == EPOCHS


def _stderr_lines(proc: subprocess.Popen) -> list[str]:
    """The command's stderr lines as they come (read by a thread), for waiting on a stage."""
    import threading

    lines: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(raw.decode(errors="replace"))

    threading.Thread(target=read, daemon=True).start()
    return lines


def _signal_and_wait(proc: subprocess.Popen, lines: list[str], sig: int) -> tuple[float, str]:
    t0 = time.monotonic()
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            kill_group(proc)
    seconds = time.monotonic() - t0
    time.sleep(0.2)  # the reader thread takes the last lines
    return seconds, "".join(lines)


def test_sigint_during_kernel_fits_stops_within_seconds(prefect_api, tmp_path, capfd):
    """KRR and GP fits (the sparse models on energies and forces, whose kernel rows and
    likelihood search take minutes here) stop at their next block or likelihood evaluation:
    exit 130 within 10 s, nothing published; the rerun reuses every feature chunk."""
    data = write_cu(tmp_path / "cu.extxyz", n=16)
    _, fkey, _ = _feature_key(data, {"cutoff": 4.0})
    sparse = {"features": "g", "forces": True, "n_sparse": 40}
    models = {
        "gp": {"type": "gaussianprocess", **sparse},
        "krr": {"type": "kernelridge", **sparse},
    }
    campaign = write_campaign(tmp_path, models=models)
    work = tmp_path / "workspace"
    store = work / "store.zarr"
    env = atompipe_env(prefect_api)
    # stage lines on: "scaler g" ends before the fits
    proc = start_atompipe(["run", campaign], tmp_path, env)
    lines = _stderr_lines(proc)

    def fitting() -> bool | None:
        return True if any(line.startswith("scaler g") for line in lines) else None

    wait_until(proc, fitting, "the scaler stage ended (the fits started)", timeout=600)
    time.sleep(3.0)  # well inside both fits
    seconds, err = _signal_and_wait(proc, lines, signal.SIGINT)
    _assert_stopped(proc, seconds, err, "KRR and GP fits", capfd)
    # nothing partial published: the GP (its likelihood search alone takes tens of seconds on
    # a quiet machine) is not there; the KRR may have finished before the signal on a fast one
    assert not [p for p in work.glob("models/*/card.json") if _card_model(p) != "KernelRidge"]
    assert not [p for p in (work / "models" / ".staging").glob("*")]
    files = _chunk_files(store, fkey)

    code, err = cli(["run", campaign, "--quiet", "--model", "krr"], capfd)
    assert code == 0, err[-3000:]
    assert _chunk_files(store, fkey) == files  # the features were not computed again
    cards = [_card_model(p) for p in work.glob("models/*/card.json")]
    assert cards == ["KernelRidge"]


def _card_model(card: Path) -> str:
    return str(json.loads(card.read_text())["model"])


def test_sigint_stops_atompipe_latent_and_the_rerun_resumes(tmp_path, capfd):
    """``atompipe latent`` stops as ``atompipe run`` does: at the next batch, exit 130 within
    10 s, one line, no latent group and no encoder published; the rerun resumes from the
    checkpoint."""
    from atomistic.data import load_files, write_dataset
    from tasks.featurize import featurize_dataset

    data = write_cu(tmp_path / "cu.extxyz", n=16)
    store = str(tmp_path / "store.zarr")
    dkey, _ = write_dataset(load_files([data]), store)
    fkey = featurize_dataset(store, dkey, "gaussian", {"cutoff": 4.0})["key"]
    ws = tmp_path / "ws"
    args = ["latent", fkey, "--store", store, "--workspace", str(ws), "--encoder", "8,3"]
    args += ["--epochs", "150", "--batch-size", "64"]
    env = atompipe_env(None)  # the latent stages run without Prefect's API
    proc = start_atompipe(args, tmp_path, env)
    lines = _stderr_lines(proc)

    def some_epochs() -> Path | None:
        for ckpt in ws.glob("checkpoints/*/last.pt"):
            epochs = _checkpoint_epochs(ckpt)
            if epochs is not None and 2 <= epochs <= 100:
                return ckpt
        return None

    ckpt = wait_until(proc, some_epochs, "some encoder epochs were checkpointed", timeout=600)
    seconds, err = _signal_and_wait(proc, lines, signal.SIGINT)
    last = [line for line in err.splitlines() if line.strip()]
    assert proc.returncode == 130, err[-3000:]
    assert seconds < 10, f"atompipe latent exited {seconds:.1f} s after SIGINT"
    assert last[-1].startswith(f"interrupted: latent features of {fkey} stopped"), err[-3000:]
    assert "Traceback" not in err
    assert not (tmp_path / "store.zarr" / "latent").exists() or not any(
        (tmp_path / "store.zarr" / "latent").iterdir()
    )
    assert not list(ws.glob("models/*/card.json"))
    k = _checkpoint_epochs(ckpt)
    assert k is not None and k < 150
    with capfd.disabled():
        print(f"\nCASE stop during atompipe latent: exit 130 after {seconds:.1f} s: {last[-1]}")

    code, err = cli(args, capfd)
    assert code == 0, err[-3000:]
    (enc,) = [p.parent for p in ws.glob("models/*/card.json")]
    history = json.loads((enc / "history.json").read_text())
    assert history["resumed_from"] >= k and history["epochs_completed"] == 150
