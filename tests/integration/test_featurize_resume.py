"""A featurization killed mid-run resumes on rerun: finished chunks are kept, bytes unchanged.

A real subprocess runs the serial featurization and is SIGKILLed once a few chunks are marked
done in the store; the rerun in this process must compute exactly the missing chunks, and the
result must be byte-identical to an uninterrupted run (and agree with the featurizer itself).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from atomistic.data import load_files, write_dataset
from atomistic.features.store import feature_key, read_features
from tasks.featurize import build_featurizer, featurize_dataset

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
CU = ROOT / "data" / "cu_emt.extxyz"
N_FRAMES = 64  # 64 x 32 atoms
ROWS = 32 * 2  # two structures per chunk: 32 chunks
PARAMS = {"cutoff": 6.5}

CHILD = textwrap.dedent(
    """
    import sys
    from tasks.featurize import featurize_dataset
    featurize_dataset(sys.argv[1], sys.argv[2], "gaussian", {params!r}, rows_per_chunk={rows})
    """
).format(params=PARAMS, rows=ROWS)


def _done(store: str, key: str) -> np.ndarray | None:
    try:
        group = zarr.open_group(store, mode="r", path=f"features/{key}")
        return np.asarray(group["done"][...], dtype=bool)
    except Exception:  # not created yet, or the array is being created right now
        return None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def test_killed_featurization_resumes_without_recomputing(tmp_path):
    ds = load_files([CU]).subset(range(N_FRAMES))
    store = str(tmp_path / "a.zarr")
    dataset_key, written = write_dataset(ds, store)
    assert written and dataset_key == ds.key
    f = build_featurizer("gaussian", PARAMS, ds.elements)
    key = feature_key(dataset_key, f.name, f.get_params())
    n_chunks = -(-ds.n_atoms // ROWS)
    assert n_chunks == 32

    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, store, dataset_key],
        env=_env(),
        cwd=str(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    seen = 0
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = _done(store, key)
            if done is not None:
                assert done.shape == (n_chunks,)
                seen = int(done.sum())
                if seen >= 5:
                    break
            if proc.poll() is not None:
                break
            time.sleep(0.01)
        alive = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        _, err = proc.communicate(timeout=30)
    assert alive, f"the child ended before it could be killed (rc {proc.returncode}): {err!r}"
    assert proc.returncode == -signal.SIGKILL
    assert 3 <= seen <= n_chunks - 3, f"caught the child with {seen}/{n_chunks} chunks done"

    # What the store says after the kill (the child may have finished one more chunk).
    group = zarr.open_group(store, mode="r", path=f"features/{key}")
    done_at_kill = np.asarray(group["done"][...], dtype=bool)
    n_done = int(done_at_kill.sum())
    assert not group.attrs.get("complete", False)
    assert 3 <= n_done < n_chunks
    before = np.asarray(group["values"][...])
    print(f"\nkilled with {n_done}/{n_chunks} chunks done")

    ref = featurize_dataset(store, dataset_key, "gaussian", PARAMS, rows_per_chunk=ROWS)
    assert ref["key"] == key
    assert ref["n_chunks"] == n_chunks
    assert ref["computed_chunks"] == n_chunks - n_done
    group = zarr.open_group(store, mode="r", path=f"features/{key}")
    assert group.attrs["complete"] is True
    assert group["done"][...].all()
    resumed = np.asarray(group["values"][...])
    # the rows finished before the kill were not touched
    for c in np.flatnonzero(done_at_kill):
        lo, hi = c * ROWS, min((c + 1) * ROWS, ds.n_atoms)
        assert np.array_equal(resumed[lo:hi], before[lo:hi])

    # a third call has nothing to do
    again = featurize_dataset(store, dataset_key, "gaussian", PARAMS, rows_per_chunk=ROWS)
    assert again["computed_chunks"] == 0 and again["key"] == key

    # an uninterrupted run into a fresh store gives the same bytes
    fresh = str(tmp_path / "b.zarr")
    assert write_dataset(ds, fresh)[0] == dataset_key
    full = featurize_dataset(fresh, dataset_key, "gaussian", PARAMS, rows_per_chunk=ROWS)
    assert full["key"] == key and full["computed_chunks"] == n_chunks
    clean = np.asarray(zarr.open_group(fresh, mode="r", path=f"features/{key}")["values"][...])
    assert resumed.dtype == clean.dtype == np.float64
    assert resumed.shape == clean.shape == (ds.n_atoms, f.n_features)
    assert np.array_equal(resumed, clean)
    assert resumed.tobytes() == clean.tobytes()

    values, offsets = read_features(store, key)
    assert np.array_equal(values, clean)
    assert np.array_equal(offsets, ds.offsets)

    # and the stored rows are the featurizer's own output, structure by structure
    expected = np.concatenate(f.featurize(ds.to_atoms()), axis=0)
    np.testing.assert_allclose(resumed, expected, rtol=0, atol=1e-12)
