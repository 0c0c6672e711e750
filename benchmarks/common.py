"""Shared helpers of the benchmark suite: data, timing, the machine header, tables, fits.

Every benchmark module exposes ``run(quick: bool = False, device: str = "cpu") -> dict`` (JSON-able,
with a ``"table"`` of printed rows) and a ``main()`` built by :func:`module_main`, so that both
``python -m benchmarks`` (the suite) and ``python -m benchmarks.<name>`` (one benchmark) work.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
for _name, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GIT_PYTHON_REFRESH": "quiet",
}.items():
    os.environ.setdefault(_name, _value)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data"
RESULTS = Path(__file__).resolve().parent / "results"


# -- data ------------------------------------------------------------------------------------
def load_frames(name: str, n: int | None = None) -> list:
    """The first ``n`` frames of a shipped dataset (``cu``, ``ethanol`` or ``malonaldehyde``)."""
    import ase.io

    files = {
        "cu": "cu_emt.extxyz",
        "ethanol": "ethanol_gfn2.extxyz",
        "malonaldehyde": "malonaldehyde_gfn2.extxyz",
    }
    path = DATA / files[name]
    if not path.exists():
        raise FileNotFoundError(f"{path}: shipped dataset missing (see data/README or git)")
    return ase.io.read(path, index=f":{n}" if n else ":")


def cu_supercell(repeat: int, seed: int = 0, rattle: float = 0.05):
    """A rattled fcc Cu cubic supercell of 4 * repeat**3 atoms (a = 3.61 Å)."""
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(repeat)
    atoms.rattle(rattle, seed=seed)
    return atoms


def flat(frames: Sequence) -> tuple[np.ndarray, ...]:
    """(numbers, positions, cells, pbcs, offsets) of a list of ase.Atoms."""
    offsets = np.cumsum([0] + [len(a) for a in frames])
    return (
        np.concatenate([a.numbers for a in frames]),
        np.concatenate([a.positions for a in frames]),
        np.stack([a.cell.array for a in frames]),
        np.stack([a.pbc for a in frames]),
        offsets,
    )


# -- timing ----------------------------------------------------------------------------------
def best_of(fn: Callable[[], Any], repeat: int, warmup: bool = True) -> float:
    """Smallest wall time of ``repeat`` calls (after one untimed call when ``warmup``), s."""
    if warmup:
        fn()
    times = []
    for _ in range(max(repeat, 1)):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def sync(device: str) -> None:
    """Wait for queued GPU work (a no-op on the CPU)."""
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


@contextmanager
def single_thread() -> Iterator[None]:
    """One thread for torch and for the BLAS behind numpy/scipy (the machine is shared, and
    peers are run single-threaded too), warnings off; all restored on exit."""
    import scipy.linalg  # noqa: F401  (load scipy's own OpenBLAS now: only loaded ones are limited)
    import torch
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        torch.set_num_threads(before)


def child_env() -> dict[str, str]:
    """The environment for a measuring subprocess: this one's, less what an earlier Dask
    LocalCluster left in it (its nanny exports MALLOC_TRIM_THRESHOLD_ into the parent)."""
    env = dict(os.environ)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    import torch

    info = {
        "cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    try:
        import subprocess

        info["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        info["git"] = None
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def header(info: dict[str, Any]) -> str:
    load = ", ".join(f"{x:.2f}" for x in info["loadavg"])
    return (
        f"machine: {info['cpu_count']} CPUs ({info['processor']}), load average {load}, "
        f"torch {info['torch']} with {info['torch_threads']} thread(s), "
        f"GPU: {info['cuda'] or 'none'}; git {info.get('git') or '?'}; {info['time_utc']}"
    )


# -- output ----------------------------------------------------------------------------------
def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], note: str = "") -> str:
    """A plain-text table (numbers formatted to 3 significant digits)."""

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            if not np.isfinite(v):
                return "-"
            return f"{v:.3g}" if abs(v) < 1e3 else f"{v:.0f}"
        return "-" if v is None else str(v)

    cells = [[fmt(v) for v in r] for r in rows]
    widths = [
        max(len(c), *(len(r[k]) for r in cells)) if cells else len(c) for k, c in enumerate(columns)
    ]
    lines = [f"\n== {title}"]
    left = [all(isinstance(r[k], str) for r in rows) for k in range(len(columns))]
    for r in [list(columns), *cells]:
        lines.append(
            "  ".join(
                v.ljust(w) if lft else v.rjust(w) for v, w, lft in zip(r, widths, left, strict=True)
            ).rstrip()
        )
    if note:
        lines.append(note)
    return "\n".join(lines)


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of log y against log x (the exponent p of y ~ x^p)."""
    lx, ly = np.log(np.asarray(x, float)), np.log(np.asarray(y, float))
    return float(np.polyfit(lx, ly, 1)[0])


def module_main(
    run: Callable[..., dict[str, Any]], doc: str | None, argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """The command line of one benchmark module: ``[--quick] [--device D] [--json PATH]``."""
    parser = argparse.ArgumentParser(description=(doc or "").strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small subset (seconds)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (where it makes sense)")
    parser.add_argument("--json", type=Path, default=None, help="write the result here")
    args = parser.parse_args(argv)
    with single_thread():
        print(header(machine()), flush=True)
        result = run(quick=args.quick, device=args.device)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, default=_jsonable))
    return result


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-able: {type(obj).__name__}")
