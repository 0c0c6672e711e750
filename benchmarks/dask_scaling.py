"""Dask strong scaling: one dataset featurized into a fresh Zarr store with 1 and 2 workers.

The Cu set (data/cu_emt.extxyz, 500 x 32 atoms; 60 frames with --quick) with ML4Chem's default
Gaussian features (G2+G3, the demo campaign's), chunked as the pipeline chunks by default (one
4 MiB chunk for the serial run and one worker; one chunk a worker with two), through the
pipeline's own code: ``tasks.featurize.featurize_dataset`` on ``tasks.cluster.dask_client`` (a
LocalCluster of single-threaded worker processes). Timed: the featurization call alone, into a
fresh store each repeat (the median of the repeats, and their spread max / min), after a warm-up
featurization on every worker; the cluster start-up is reported apart. The serial path (no
Dask, same chunks) is the baseline.

The workers' MALLOC_TRIM_THRESHOLD_ is reported: Dask's nanny sets it to 65536 by default, which
made glibc return every large freed block to the system at once and featurization on a worker
3.3x slower (measured here before tasks/cluster.py unset it); it should read None.

    python -m benchmarks.dask_scaling [--quick]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

from atomistic.data import Dataset, write_dataset
from benchmarks.common import load_frames, module_main, table

PARAMS = {"cutoff": 6.5}


def _fresh_store(root: Path, ds: Dataset, tag: str) -> tuple[str, str]:
    url = str(root / f"{tag}-{time.perf_counter_ns()}.zarr")
    key, _ = write_dataset(ds, url)
    return url, key


def _warm_worker() -> int:
    """Import and run the featurizer once on a worker (torch, vesin, atompipe)."""
    import torch

    from atomistic.features import Gaussian
    from benchmarks.common import cu_supercell, flat

    torch.set_num_threads(1)
    return len(Gaussian(elements=["Cu"]).featurize_arrays(*flat([cu_supercell(2)])))


def _timed(root: Path, ds: Dataset, client, repeat: int, tag: str) -> tuple[float, float, int]:
    """(median seconds, spread max / min, chunks) of ``repeat`` featurizations into fresh
    stores."""
    from tasks.featurize import featurize_dataset

    times, chunks = [], 0
    for _ in range(repeat):
        url, key = _fresh_store(root, ds, tag)
        t = time.perf_counter()
        ref = featurize_dataset(url, key, "gaussian", PARAMS, client=client)
        times.append(time.perf_counter() - t)
        assert ref["computed_chunks"] == ref["n_chunks"]
        chunks = ref["n_chunks"]
    return float(np.median(times)), max(times) / min(times), chunks


def _worker_trim() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Featurization wall time with no Dask, 1 worker and 2 workers; speed-up and efficiency."""
    from tasks.cluster import dask_client

    n_frames, repeat = (60, 1) if quick else (500, 5)
    ds = Dataset.from_atoms(load_frames("cu", n_frames), require_energy=True)
    out: dict = {
        "structures": ds.n_structures,
        "atoms": ds.n_atoms,
        "repeat": repeat,
        "cpu_count": os.cpu_count(),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="atompipe-bench-dask-") as tmp:
        root = Path(tmp)
        _warm_worker()
        out["serial_s"], out["serial_spread"], out["chunks_serial"] = _timed(
            root, ds, None, repeat, "serial"
        )
        rows.append(
            (
                "serial (no Dask)",
                "-",
                out["chunks_serial"],
                out["serial_s"],
                out["serial_spread"],
                ds.n_atoms / out["serial_s"],
            )
        )
        for n in (1, 2):
            t0 = time.perf_counter()
            with dask_client(n_workers=n) as client:
                out[f"start_{n}_s"] = time.perf_counter() - t0
                client.run(_warm_worker)
                trim = sorted({str(v) for v in client.run(_worker_trim).values()})
                t, spread, chunks = _timed(root, ds, client, repeat, f"w{n}")
                out[f"workers_{n}_s"], out[f"chunks_{n}"] = t, chunks
                out[f"workers_{n}_spread"] = spread
            out["worker_trim_threshold"] = trim
            label = f"{n} worker{'s' if n > 1 else ''}"
            rows.append((label, ",".join(trim), chunks, t, spread, ds.n_atoms / t))
    out["speedup_2_vs_1"] = out["workers_1_s"] / out["workers_2_s"]
    out["efficiency_2"] = out["speedup_2_vs_1"] / 2
    out["dask_1_over_serial"] = out["workers_1_s"] / out["serial_s"]
    print(
        table(
            f"Dask strong scaling: {ds.n_structures} Cu structures ({ds.n_atoms} atoms), "
            "Gaussian G2+G3 into a fresh Zarr store",
            ["run", "worker MALLOC_TRIM_THRESHOLD_", "chunks", "median s", "spread", "atoms/s"],
            rows,
            f"speed-up 2 workers / 1: {out['speedup_2_vs_1']:.2f}x (efficiency "
            f"{out['efficiency_2']:.2f}) on {os.cpu_count()} CPUs; 1 worker / serial: "
            f"{out['dask_1_over_serial']:.2f}x the time; cluster start "
            f"{out['start_1_s']:.1f} s and {out['start_2_s']:.1f} s.",
        ),
        flush=True,
    )
    return out


def main(argv=None) -> None:
    module_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
