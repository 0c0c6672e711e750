"""Peak memory of featurization as the dataset grows 1x, 2x, 4x, 8x.

The Cu set (500 x 32 atoms; 50 with --quick) replicated k times with a small rattle, stored as
one dataset per size in a Zarr store. Each measurement runs in a fresh Python process:

* streamed: the pipeline's ``tasks.featurize.featurize_dataset`` on a Dask LocalCluster with
  ``processes=False`` (one single-threaded worker in the same process, so one RSS covers the
  scheduler, the worker and the client), writing chunk by chunk into the store;
* in memory: the same featurizer over the whole dataset at once (``featurize_arrays``), the
  result held in memory, as a featurizer without a chunked store would do.

Peak resident set size = ``VmHWM`` of /proc/self/status at the end (the child's own peak;
``ru_maxrss`` would carry the runner's over fork and exec); the RSS
before the featurization (imports, cluster, dataset read) is reported apart. Features: ML4Chem's
default Gaussian set (8 columns for Cu, 64 bytes per atom), the demo campaign's. Expected: the
streamed peak stays flat (one chunk of rows at a time); the in-memory peak grows with the
feature array. Both hold the working memory of one featurizer call (at most 8192 atoms).

    python -m benchmarks.memory [--quick]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, child_env, load_frames, module_main, table

PARAMS = {"cutoff": 6.5}  # ML4Chem's default Gaussian set (G2+G3), the demo campaign's
FACTORS = (1, 2, 4, 8)
QUICK_FACTORS = (1, 8)


def _replicate(ds, k: int, seed: int):
    """``ds`` repeated ``k`` times, each copy rattled by 0.01 Å."""
    from atomistic.data import Dataset

    rng = np.random.default_rng(seed)
    counts = np.tile(np.diff(ds.offsets), k)
    return Dataset(
        numbers=np.tile(ds.numbers, k),
        positions=np.tile(ds.positions, (k, 1)) + rng.normal(0, 0.01, (k * ds.n_atoms, 3)),
        cell=np.tile(ds.cell, (k, 1, 1)),
        pbc=np.tile(ds.pbc, (k, 1)),
        offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        energy=np.tile(ds.energy, k),
        forces=np.tile(ds.forces, (k, 1)),
    )


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def child(url: str, key: str, mode: str) -> dict:
    """In a fresh process: featurize ``datasets/<key>`` streamed (Dask, Zarr) or in memory."""
    import torch

    torch.set_num_threads(1)
    from atomistic.data import read_dataset
    from tasks.featurize import build_featurizer, featurize_dataset

    out: dict = {}
    t0 = time.perf_counter()
    if mode == "streamed":
        import logging

        from distributed import Client, LocalCluster

        with (
            LocalCluster(
                n_workers=1,
                threads_per_worker=1,
                processes=False,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            ) as cluster,
            Client(cluster) as client,
        ):
            out["rss_before_mb"] = _rss_mb()
            t0 = time.perf_counter()
            ref = featurize_dataset(url, key, "gaussian", PARAMS, client=client)
            out["seconds"] = time.perf_counter() - t0
            out["chunks"] = ref["n_chunks"]
    else:
        ds = read_dataset(url, key)
        f = build_featurizer("gaussian", PARAMS, ds.elements)
        out["rss_before_mb"] = _rss_mb()
        t0 = time.perf_counter()
        X = f.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
        out["seconds"] = time.perf_counter() - t0
        out["array_mb"] = X.nbytes / 2**20
    out["peak_rss_mb"] = _peak_rss_mb()
    return out


def _peak_rss_mb() -> float:
    """This process's peak RSS, MB: ``VmHWM`` of /proc/self/status, which belongs to the
    process image (``ru_maxrss`` is not: Linux carries it over fork and exec, so a child of a
    2 GB runner reported 2 GB whatever it did); ``ru_maxrss`` where /proc is absent."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spawn(url: str, key: str, mode: str) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.memory", "--child", url, key, mode]
    proc = subprocess.run(
        cmd, cwd=ROOT, capture_output=True, text=True, check=False, env=child_env()
    )
    if proc.returncode != 0:
        raise RuntimeError(f"benchmarks.memory child failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Peak RSS (MB) of streamed and in-memory featurization against dataset size."""
    from atomistic.data import Dataset, write_dataset
    from tasks.featurize import build_featurizer

    base = Dataset.from_atoms(load_frames("cu", 50 if quick else 500), require_energy=True)
    n_features = build_featurizer("gaussian", PARAMS, base.elements).n_features
    modes = ("streamed",) if quick else ("streamed", "in_memory")
    rows, records = [], []
    with tempfile.TemporaryDirectory(prefix="atompipe-bench-memory-") as tmp:
        url = str(Path(tmp) / "store.zarr")
        for k in QUICK_FACTORS if quick else FACTORS:
            ds = _replicate(base, k, seed=k)
            key, _ = write_dataset(ds, url)
            rec = {
                "factor": k,
                "structures": ds.n_structures,
                "atoms": ds.n_atoms,
                "feature_array_mb": ds.n_atoms * n_features * 8 / 2**20,
            }
            for mode in modes:
                rec[mode] = _spawn(url, key, mode)
            print(
                f"  {k}x ({ds.n_atoms} atoms): "
                + ", ".join(f"{m} peak {rec[m]['peak_rss_mb']:.0f} MB" for m in modes),
                flush=True,
            )
            records.append(rec)
            row = [f"{k}x", ds.n_atoms, rec["feature_array_mb"]]
            for m in modes:
                row += [rec[m]["peak_rss_mb"], rec[m]["peak_rss_mb"] - rec[m]["rss_before_mb"]]
            rows.append(row)
    growth = {
        f"{m}_mb": records[-1][m]["peak_rss_mb"] - records[0][m]["peak_rss_mb"] for m in modes
    }
    growth["feature_array_mb"] = records[-1]["feature_array_mb"] - records[0]["feature_array_mb"]
    columns = ["size", "atoms", "array MB"]
    for m in modes:
        columns += [f"{m} peak", f"{m} +work"]
    print(
        table(
            f"peak memory (MB) of featurization against dataset size (Cu, {n_features} "
            f"Gaussian features)",
            columns,
            rows,
            "+work: peak minus the RSS just before featurizing. Growth 1x -> 8x: "
            + ", ".join(f"{m} {growth[f'{m}_mb']:+.0f} MB" for m in modes)
            + f" (feature array {growth['feature_array_mb']:+.1f} MB).",
        ),
        flush=True,
    )
    return {"n_features": n_features, "records": records, "growth_1x_to_8x": growth}


def main(argv=None) -> None:
    if argv is None and "--child" in sys.argv:
        i = sys.argv.index("--child")
        url, key, mode = sys.argv[i + 1 : i + 4]
        print(json.dumps(child(url, key, mode)))
        return
    module_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
