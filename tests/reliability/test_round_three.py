"""Round three (issue 15, "the next ten ways a campaign can break"): crashes between the writes
of one stage, clock changes, two writers and two users on one store, a store on object storage,
files changed between reads.

Each crash is a real process killed (SIGKILL, by itself at the exact point, or by the test) and
each store a real Zarr store on disk or behind a real S3 API (moto's server on 127.0.0.1). Every
case asserts the recovery a user sees (one error line naming the culprit and the exit status, or
a rerun that completes and computes nothing again) and that nothing half-written is left.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import ase.io
import numpy as np
import pytest
import zarr
from reliability_support import ROOT, cli, error_lines, snapshot, write_cu

from atomistic.data import load_files, read_dataset, write_dataset
from atomistic.features.store import read_features
from atomistic.storage import Store

PY_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
    "OMP_NUM_THREADS": "1",
}


def _python(code: str, **kw) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python process (this repository importable)."""
    return subprocess.run(
        [sys.executable, "-c", code],
        env=kw.pop("env", PY_ENV),
        capture_output=True,
        text=True,
        timeout=kw.pop("timeout", 600),
        **kw,
    )


def _report(capfd, case: str, outcome: str) -> None:
    with capfd.disabled():
        print(f"\nCASE {case}: {outcome}")


def _staged(store: Path) -> list[str]:
    folder = store / ".staging"
    return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def _chunk_files(store: Path, key: str) -> dict[str, tuple[int, int]]:
    root = store / "features" / key / "values"
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture(scope="module")
def cu(tmp_path_factory) -> Path:
    return write_cu(tmp_path_factory.mktemp("cu") / "cu.extxyz", n=8)


_FEATURIZE_THEN_DIE = """
import os, signal
from atomistic.data import load_files, write_dataset, read_dataset
from atomistic.storage import Store
from atomistic.features.store import plan_feature_group, compute_chunk
from tasks.featurize import build_featurizer
url = {store!r}
key, _ = write_dataset(load_files([{data!r}]), url)
ds = read_dataset(url, key)
f = build_featurizer("gaussian", {{"cutoff": 4.0}}, ds.elements)
plan = plan_feature_group(Store(url), ds, f, rows_per_chunk=64)
for c in plan.todo:
    compute_chunk(url, key, plan.key, c, f)
print(plan.key, len(plan.todo), flush=True)
os.kill(os.getpid(), signal.SIGKILL)  # after the last chunk, before the completion mark
"""


def test_rt1_crash_between_the_last_chunk_and_the_completion_mark(cu, tmp_path, capfd):
    store = tmp_path / "store.zarr"
    proc = _python(_FEATURIZE_THEN_DIE.format(store=str(store), data=str(cu)))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    fkey, n = proc.stdout.split()
    group = zarr.open_group(str(store), mode="r", path=f"features/{fkey}")
    assert np.asarray(group["done"][...]).all() and not group.attrs.get("complete")
    before = _chunk_files(store, fkey)

    ds = read_dataset(str(store), load_files([cu]).key)
    from tasks.featurize import build_featurizer, featurize_dataset

    f = build_featurizer("gaussian", {"cutoff": 4.0}, ds.elements)
    ref = featurize_dataset(str(store), ds.key, "gaussian", {"cutoff": 4.0}, rows_per_chunk=64)
    assert (ref["key"], ref["computed_chunks"]) == (fkey, 0)  # nothing computed again
    assert _chunk_files(store, fkey) == before
    values, _ = read_features(str(store), fkey)  # complete, and every chunk matches its sum
    expected = np.concatenate(f.featurize(ase.io.read(cu, ":")))
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    _report(capfd, "RT1", f"{n} chunks done, mark missing: rerun marked it, 0 recomputed")


_STAGE_THEN_DIE = """
import os, signal, sys, numpy as np
from atomistic.storage import Store
with Store({store!r}).writing("datasets", {key!r}) as g:
    g.create_array("x", data=np.arange(10))
    print(os.getpid(), flush=True)
    if {wait!r}:
        sys.stdin.readline()  # a live writer: publishes when the test says so
    else:
        os.kill(os.getpid(), signal.SIGKILL)  # staged, never published
print("published", flush=True)
"""


def test_rt2_a_writer_killed_before_publishing_leaves_nothing_behind(cu, tmp_path, capfd):
    store = tmp_path / "store.zarr"
    key = uuid.uuid4().hex * 2
    proc = _python(_STAGE_THEN_DIE.format(store=str(store), key=key, wait=False))
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    pid = proc.stdout.split()[0]
    (orphan,) = _staged(store)
    assert f"-{pid}-" in orphan

    dkey, written = write_dataset(load_files([cu]), str(store))  # the next writer
    assert written and _staged(store) == []  # the dead writer's staging is gone
    assert not Store(store).has("datasets", key)  # and it was never published
    assert read_dataset(str(store), dkey).n_structures == 8
    _report(capfd, "RT2", f"staging {orphan[:40]}… of dead pid {pid} removed by the next write")


def test_rt3_a_live_writers_staging_is_not_swept(cu, tmp_path, capfd):
    """Two writers on one store: the sweep of RT2 must never take a live writer's group."""
    store = tmp_path / "store.zarr"
    key = uuid.uuid4().hex * 2
    code = _STAGE_THEN_DIE.format(store=str(store), key=key, wait=True)
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        env=PY_ENV,
        text=True,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        pid = proc.stdout.readline().strip()
        assert pid.isdigit(), proc.stderr.read() if proc.stderr else ""
        write_dataset(load_files([cu]), str(store))  # another writer meanwhile
        assert any(f"-{pid}-" in n for n in _staged(store))  # still there
        out, err = proc.communicate("go\n", timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "published" in out, err[-2000:]
    group = Store(store).open("datasets", key)
    np.testing.assert_array_equal(group["x"][...], np.arange(10))
    assert _staged(store) == []
    _report(capfd, "RT3", "a live writer's staging kept while another wrote; it published")


def test_rt4_the_clock_moved_nothing_is_computed_again(cu, tmp_path, capfd):
    """Every file of the store dated 1970, then 2100 (a clock set back or forward): the stages
    decide by content and checksums, never by time, so nothing is written again."""
    from tasks.featurize import featurize_dataset

    store = tmp_path / "store.zarr"
    ds = load_files([cu])
    write_dataset(ds, str(store))
    first = featurize_dataset(str(store), ds.key, "gaussian", {"cutoff": 4.0}, rows_per_chunk=64)
    fkey = first["key"]
    for stamp in (0, 4102444800):  # 1970-01-01, 2100-01-01
        for p in store.rglob("*"):
            os.utime(p, (stamp, stamp), follow_symlinks=False)
        before = snapshot(store)
        assert write_dataset(ds, str(store)) == (ds.key, False)
        again = featurize_dataset(
            str(store), ds.key, "gaussian", {"cutoff": 4.0}, rows_per_chunk=64
        )
        assert (again["key"], again["computed_chunks"]) == (fkey, 0)
        assert snapshot(store) == before
        assert {p.stat().st_mtime for p in store.rglob("*") if p.is_file()} == {stamp}
    _report(capfd, "RT4", "store dated 1970 and 2100: nothing rewritten, features read back")


def test_rt5_a_truncated_model_card_is_one_error_line(cu, tmp_path, capfd):
    """A crash while a model folder was copied by hand (or a full disk) leaves ``card.json``
    cut short: ``predict`` names the file, writes no predictions."""
    from atomistic.models.kernelridge import KernelRidge
    from tasks.featurize import build_featurizer

    ds = load_files([cu])
    f = build_featurizer("gaussian", {"cutoff": 4.0}, ds.elements)
    model_dir = tmp_path / "model"
    KernelRidge(sigma=1.0, lamda=1e-6).fit(ase.io.read(cu, ":"), featurizer=f).save(model_dir)
    card = model_dir / "card.json"
    card.write_bytes(card.read_bytes()[: len(card.read_bytes()) // 2])
    out = tmp_path / "pred.extxyz"
    code, err = cli(["predict", model_dir, cu, "--output", out], capfd)
    lines = error_lines(err)
    assert code == 1 and len(lines) == 1 and "card.json" in lines[0], err[-3000:]
    assert "Traceback" not in err and not out.exists()
    _report(capfd, "RT5", lines[0])


def _open_dir(prefix: str) -> Path:
    """A folder another user can enter (pytest's tmp folders are private to root)."""
    base = Path(tempfile.mkdtemp(prefix=prefix, dir=tempfile.gettempdir()))
    base.chmod(0o755)
    return base


def test_rt6_another_user_without_write_access_gets_one_line(cu, capfd):
    """Two users, one store: the store belongs to another user (uid 65534, umask 022), who
    may be read but not written. ``atompipe ingest`` of new structures by this user (root
    without CAP_DAC_OVERRIDE, so permissions apply): one line naming the store, exit 1,
    nothing written."""
    from test_bad_input import _without_root_file_override

    if os.geteuid() != 0:
        pytest.skip("needs root to hand the store to another user")
    base = _open_dir("atompipe-rt6-")
    try:
        store = base / "store.zarr"
        write_dataset(load_files([cu]), str(store))
        for p in [store, *store.rglob("*")]:
            os.chown(p, 65534, 65534, follow_symlinks=False)
        new = write_cu(base / "new.extxyz", n=4, start=20)
        before = snapshot(store)
        cmd = [sys.executable, "-c", "from flows.cli import main; main()", "ingest", str(new)]
        proc = subprocess.run(
            [*cmd, "--store", str(store)],
            env=PY_ENV,
            capture_output=True,
            text=True,
            cwd=str(base),
            timeout=600,
            preexec_fn=_without_root_file_override,
        )
        lines = error_lines(proc.stderr)
        assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
        assert str(store) in lines[0] and "Permission denied" in lines[0], lines
        assert "Traceback" not in proc.stderr
        assert snapshot(store) == before
        _report(capfd, "RT6", lines[0])
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_rt7_an_index_entry_whose_dataset_is_gone_is_ingested_again(cu, tmp_path, capfd):
    """A crash between the dataset's removal and its index entry's (or a dataset deleted by
    hand): the index points at nothing, and ``ingest`` stores the structures again."""
    store = tmp_path / "store.zarr"
    code, err = cli(["ingest", cu, "--store", store, "--json"], capfd)
    assert code == 0, err
    key = load_files([cu]).key
    shutil.rmtree(store / "datasets" / key)
    code, err = cli(["ingest", cu, "--store", store, "--json"], capfd)
    assert code == 0, err
    assert read_dataset(str(store), key).n_structures == 8
    assert _staged(store) == []
    _report(capfd, "RT7", "index entry to a deleted dataset: ingested again, same key")


def test_rt8_a_file_rewritten_between_runs_is_a_new_dataset(cu, tmp_path, capfd):
    """The structure file changed between two runs (same path, same size class): the new
    bytes get a new key; the old dataset is neither reused for them nor changed."""
    store = tmp_path / "store.zarr"
    data = write_cu(tmp_path / "cu.extxyz", n=8)
    k1, _ = write_dataset(load_files([data]), str(store))
    old = snapshot(store / "datasets" / k1)
    atoms = ase.io.read(data, ":")
    atoms[3].positions[0, 0] += 0.01  # one coordinate, 0.01 Å
    ase.io.write(data, atoms)
    atoms = ase.io.read(data, ":")  # as the file holds them
    ds2 = load_files([data])
    k2, written = write_dataset(ds2, str(store))
    assert written and k2 != k1
    assert snapshot(store / "datasets" / k1) == old
    back = read_dataset(str(store), k2)
    np.testing.assert_array_equal(back.positions, np.concatenate([a.positions for a in atoms]))
    _report(capfd, "RT8", "rewritten file: new key, old dataset unchanged")


_HOLD_LOCK = """
import sys, time
from atomistic.storage import Store
from tasks.featurize import _planning_lock
with _planning_lock(Store({store!r}), "gaussian"):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_rt9_a_planner_killed_holding_the_lock_blocks_nobody(cu, tmp_path, capfd):
    """A campaign SIGKILLed while it held the feature-planning lock: the next one plans and
    finishes (the kernel drops an flock with its holder; no stale lock file to clear)."""
    from tasks.featurize import featurize_dataset

    store = tmp_path / "store.zarr"
    key, _ = write_dataset(load_files([cu]), str(store))
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK.format(store=str(store))],
        env=PY_ENV,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        t0 = time.monotonic()
        ref = featurize_dataset(str(store), key, "gaussian", {"cutoff": 4.0}, rows_per_chunk=64)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert ref["computed_chunks"] == ref["n_chunks"]
    read_features(str(store), ref["key"])
    _report(capfd, "RT9", f"lock holder killed: the next planner finished in {took:.1f} s")


# -- a real S3 API (moto's server: the s3_env fixture of tests/conftest.py) ------------------
def test_rt10_an_interrupted_copy_to_object_storage_leaves_no_orphans(
    cu, s3_env, monkeypatch, capfd
):
    """A writer SIGKILLed with its group staged on S3 (what an interrupted copy leaves): the
    next writer from this host removes the dead writer's objects; nothing of it is published."""
    import s3fs

    for k, v in s3_env.items():
        monkeypatch.setenv(k, v)
    # clients cached by an earlier test hold another server's endpoint: start from none
    s3fs.S3FileSystem.clear_instance_cache()
    try:
        fs = s3fs.S3FileSystem(endpoint_url=s3_env["AWS_ENDPOINT_URL"], skip_instance_cache=True)
        bucket = f"atompipe-{uuid.uuid4().hex[:12]}"
        fs.mkdir(bucket)
        url = f"s3://{bucket}/store.zarr"
        key = uuid.uuid4().hex * 2
        proc = _python(
            _STAGE_THEN_DIE.format(store=url, key=key, wait=False), env={**PY_ENV, **s3_env}
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
        pid = proc.stdout.split()[0]
        fs.invalidate_cache()
        orphans = [p for p in fs.find(f"{bucket}/store.zarr/.staging") if f"-{pid}-" in p]
        assert orphans, fs.find(f"{bucket}/store.zarr")

        dkey, written = write_dataset(load_files([cu]), url)
        fs.invalidate_cache()
        left = [p for p in fs.find(f"{bucket}/store.zarr/.staging") if not p.endswith(".json")]
        assert written and left == [], left
        assert not Store(url).has("datasets", key)
        assert read_dataset(url, dkey).n_structures == 8
        _report(capfd, "RT10", f"{len(orphans)} orphan objects of dead pid {pid} removed")
    finally:
        s3fs.S3FileSystem.clear_instance_cache()


def test_rt11_a_read_only_workspace_whose_stages_are_done(cu, tmp_path, prefect_api, capfd):
    """A finished workspace made read-only (an archive, another user's): ``--features-only``
    succeeds and writes nothing (Prefect's results go to a temporary folder, the ingest index
    entry is skipped); a recorded run cannot succeed (MLflow writes in the workspace) and says
    so in one line before any work."""
    from reliability_support import atompipe_env, run_atompipe, write_campaign
    from test_bad_input import _read_only, _without_root_file_override

    folder = _open_dir("atompipe-rt11-")
    try:
        shutil.copy(cu, folder / "cu.extxyz")
        campaign = write_campaign(folder)
        code, err = cli(["run", campaign, "--quiet", "--features-only"], capfd)
        assert code == 0, err[-3000:]
        copy = _open_dir("atompipe-rt11-copy-")  # a copy: the index key names another path
        shutil.copytree(folder, copy, dirs_exist_ok=True)
        work = copy / "workspace"
        _read_only(work)
        before = snapshot(work)
        env = atompipe_env(prefect_api, PREFECT_HOME=str(copy / "prefect-home"))
        args = ["run", str(copy / "campaign.yaml"), "--quiet"]
        done = run_atompipe(
            [*args, "--features-only"],
            copy,
            env,
            preexec_fn=_without_root_file_override,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "features g:" in done.stdout and "error" not in done.stderr
        recorded = run_atompipe(
            args, copy, env, preexec_fn=_without_root_file_override, timeout=600
        )
        lines = error_lines(recorded.stderr)
        assert recorded.returncode == 1 and len(lines) == 1, recorded.stderr[-3000:]
        assert f"workspace {work.resolve()} is read-only" in lines[0] and "MLflow" in lines[0]
        assert "Traceback" not in recorded.stderr
        assert snapshot(work) == before
        _report(capfd, "RT11", f"--features-only exit 0, nothing written; run: {lines[0]}")
    finally:
        for root in [p for p in (folder, locals().get("copy")) if p is not None]:
            for p in [root, *root.rglob("*")]:
                if not p.is_symlink():
                    os.chmod(p, p.stat().st_mode | 0o200)
            shutil.rmtree(root, ignore_errors=True)
