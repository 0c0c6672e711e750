"""The benchmark suite: every benchmark in one process run, with ratios against peers.

    python -m benchmarks [--quick] [--only NAME ...] [--out DIR] [--device cpu|cuda]

Prints the machine (CPUs, load average, torch threads), then each benchmark's table; writes the
results as JSON (``benchmarks.json``) and the scaling plots (PNG) into ``--out`` (default
benchmarks/results/, or benchmarks/results/quick/ with --quick). A benchmark that fails is
reported and the others still run; the exit status is then 1.

Benchmarks (each also runs alone: ``python -m benchmarks.<name>``):
  featurize     atompipe Gaussian/AEV against DScribe ACSF and TorchANI AEVComputer
  cellsize      featurization time against atoms per cell (Cu supercells 32..864 atoms)
  forces        the cost of forces: features+gradients, model energies+forces vs energies
  training      NN training throughput against a plain TorchANI loop (energies; +forces)
  kernels       KRR and GP fit time against N, beside scipy's Cholesky
  dask_scaling  Dask strong scaling (1 and 2 workers) of featurization into Zarr
  incremental   a +2 % dataset version's features (active learning's grow) vs featurizing it all
  cache         the cached-rerun ratio of a small campaign, and Prefect start-up
  memory        peak memory of featurization as the dataset grows 1x..8x
  accuracy      held-out errors and training times of NN, KRR, GP on the shipped datasets
  kernel_forces sparse KRR/GP on energies + forces vs energy-only KRR; fit-time/memory scaling
  nn_accuracy   force-trained NN against a plain TorchANI loop, same data and wall clock; committee
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path

from benchmarks.common import RESULTS, _jsonable, header, machine, single_thread

BENCHMARKS = (
    "featurize",
    "cellsize",
    "forces",
    "training",
    "kernels",
    "dask_scaling",
    "incremental",
    "cache",
    "memory",
    "accuracy",
    "kernel_forces",
    "nn_accuracy",
)
GPU_CAPABLE = ("featurize", "cellsize", "training")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks", description=__doc__.strip().splitlines()[0]
    )
    p.add_argument("--quick", action="store_true", help="small sizes, about 2 minutes in all")
    p.add_argument(
        "--only",
        nargs="+",
        choices=BENCHMARKS,
        metavar="NAME",
        help=f"run only these: {', '.join(BENCHMARKS)}",
    )
    p.add_argument("--out", type=Path, default=None, help="where the JSON and the PNGs go")
    p.add_argument(
        "--device",
        default="cpu",
        help="cuda: the GPU-capable benchmarks on the GPU (absolute times)",
    )
    p.add_argument("--no-plots", action="store_true")
    args = p.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            p.error(f"--device {args.device}: no CUDA device is available on this machine")
    names = list(args.only or (BENCHMARKS if args.device == "cpu" else GPU_CAPABLE))
    if args.device != "cpu" and (bad := [n for n in names if n not in GPU_CAPABLE]):
        p.error(f"--device {args.device}: {bad} run on the CPU only; choose from {GPU_CAPABLE}")
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    if args.device != "cpu" and args.out is None:
        out = out / args.device.replace(":", "")
    out.mkdir(parents=True, exist_ok=True)
    with single_thread():
        return _run_suite(names, args, out, argv)


def _run_suite(names: list[str], args: argparse.Namespace, out: Path, argv) -> int:
    info = machine()
    print(header(info), flush=True)
    report = {
        "machine": info,
        "quick": args.quick,
        "device": args.device,
        "command": "python -m benchmarks " + " ".join(argv or sys.argv[1:]),
        "results": {},
        "seconds": {},
        "errors": {},
    }
    t_all = time.perf_counter()
    for name in names:
        print(f"\n### {name}", flush=True)
        t0 = time.perf_counter()
        environ = dict(os.environ)  # e.g. a LocalCluster exports MALLOC_TRIM_THRESHOLD_
        try:
            module = importlib.import_module(f"benchmarks.{name}")
            report["results"][name] = module.run(quick=args.quick, device=args.device)
        except Exception:  # noqa: BLE001 - report it and go on with the other benchmarks
            report["errors"][name] = traceback.format_exc()
            print(f"{name} FAILED:\n{report['errors'][name]}", file=sys.stderr, flush=True)
        finally:
            os.environ.clear()
            os.environ.update(environ)
        report["seconds"][name] = time.perf_counter() - t0
        print(f"({name}: {report['seconds'][name]:.0f} s)", flush=True)
    report["total_seconds"] = time.perf_counter() - t_all
    report["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    path = out / "benchmarks.json"
    path.write_text(json.dumps(report, indent=1, default=_jsonable))
    print(
        f"\nresults: {path} ({report['total_seconds']:.0f} s in all; load average at the end "
        f"{', '.join(map(str, report['loadavg_end']))})"
    )
    if not args.no_plots:
        from benchmarks.plots import draw_all

        for png in draw_all(report, out):
            print(f"plot: {png}")
    if report["errors"]:
        print(f"FAILED: {', '.join(report['errors'])}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
