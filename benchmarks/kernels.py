"""KRR and GP fit time against the number of training structures, beside scipy's Cholesky.

Cu structures (32 atoms each, ML4Chem's default Gaussian features, MinMax-scaled), N = 25 to 400
training structures. Fit time of atompipe's KernelRidge (structure kernel over all atom pairs +
Cholesky + solves), GaussianProcess with fixed hyperparameters (the same plus the stored factor),
and GaussianProcess with its default marginal-likelihood search, beside
``scipy.linalg.cho_factor`` of a random symmetric positive definite N x N matrix (the
factorisation alone). The fitted exponent p of time ~ N^p is printed for each. Then the demo
campaign's GP fit (400 training structures, search on 300), median of 3 fits each in a new
process, against the 10 s target of issue #19.

The kernel costs O(atoms^2 * features) and the factorisation O(N^3): at these sizes the kernel
dominates, so expect p near 2 for the models and near 3 for the bare Cholesky only at large N.

    python -m benchmarks.kernels [--quick]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg

from atomistic.data import Dataset
from atomistic.data.store import make_split
from atomistic.features import Gaussian
from atomistic.features.scaling import Scaler
from atomistic.models import AtomicData, GaussianProcess, KernelRidge
from benchmarks.common import (
    best_of,
    child_env,
    load_frames,
    loglog_slope,
    module_main,
    table,
)


def _spd(n: int) -> np.ndarray:
    a = np.random.default_rng(n).standard_normal((n, n))
    return a @ a.T + n * np.eye(n)


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Fit seconds against N training structures and the fitted exponents."""
    sizes = [25, 50, 100] if quick else [25, 50, 100, 200, 400]
    gp_opt_max = 25 if quick else 100
    repeat = 1 if quick else 3
    frames = load_frames("cu", max(sizes))
    full = Dataset.from_atoms(frames, require_energy=True)
    f = Gaussian(elements=full.elements)
    X = f.featurize_arrays(full.numbers, full.positions, full.cell, full.pbc, full.offsets)
    X = Scaler().fit(X).transform(X)
    names = ["KRR", "GP fixed", "GP optimised", "scipy cho_factor"]
    times: dict[str, list[float]] = {n: [] for n in names}
    atoms = []
    for n in sizes:
        ds = full.subset(range(n))
        data = AtomicData(ds, X[: ds.n_atoms], f, None)
        atoms.append(ds.n_atoms)
        times["KRR"].append(
            best_of(lambda d=data: KernelRidge(sigma=2.0, lamda=1e-6).fit(d), repeat)
        )
        times["GP fixed"].append(
            best_of(
                lambda d=data: GaussianProcess(sigma=2.0, noise=1e-4, optimize=False).fit(d), repeat
            )
        )
        if n <= gp_opt_max:
            times["GP optimised"].append(
                best_of(
                    lambda d=data: GaussianProcess(sigma=2.0, noise=1e-4).fit(d), 1, warmup=False
                )
            )
        else:
            times["GP optimised"].append(float("nan"))
        A = _spd(n)
        times["scipy cho_factor"].append(
            best_of(lambda A=A: scipy.linalg.cho_factor(A, lower=True), max(repeat, 5))
        )
    exponents = {}
    for name in names:
        ok = [k for k, t in enumerate(times[name]) if np.isfinite(t)]
        exponents[name] = (
            loglog_slope([sizes[k] for k in ok], [times[name][k] for k in ok])
            if len(ok) > 1
            else float("nan")
        )
    rows = [(name, *[1e3 * t for t in times[name]], exponents[name]) for name in names]
    print(
        table(
            "kernel models: fit time (ms) against N training structures (Cu, 32 atoms each)",
            ["fit", *[f"N={n}" for n in sizes], "exponent p"],
            rows,
            f"training atoms: {atoms}; p: slope of log time against log N (3 = cubic). "
            f"cho_factor: a random SPD N x N matrix; one thread.",
        ),
        flush=True,
    )
    search = _demo_search(quick)
    return {
        "sizes": sizes,
        "atoms": atoms,
        "seconds": times,
        "exponent": exponents,
        "repeat": repeat,
        "demo_search": search,
    }


TARGET_S = 10.0  # issue #19: the demo campaign's GP fit, seconds


def _demo_search(quick: bool) -> dict:
    """The demo campaign's GP fit (data/campaigns/demo.yaml: rbf, sigma 1, noise 1e-4, its
    default marginal-likelihood search on 300 of the 400 training structures, validation
    metrics on the 50 validation structures), each fit in a new process (imports and
    allocations of a fresh interpreter, as the campaign's task sees them): median seconds of 3
    (1 with ``quick``, on 100 training structures) against :data:`TARGET_S`, with the fitted
    hyperparameters."""
    env = {**child_env(), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    runs = []
    for _ in range(1 if quick else 3):
        code = f"from benchmarks.kernels import _fit_demo; _fit_demo({quick!r})"
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            check=True,
            env=env,
            cwd=Path(__file__).resolve().parents[1],
        )
        runs.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    n = runs[0]["train_structures"]
    seconds = float(np.median([r["seconds"] for r in runs]))
    each = ", ".join(f"{r['seconds']:.2f}" for r in runs)
    out = {"seconds": seconds, "runs": runs, "target_s": TARGET_S, "train_structures": n}
    print(
        table(
            f"GP fit of the demo campaign ({n} Cu training structures, search on "
            f"{min(n, 300)}), new process each, median of {len(runs)}",
            ["fit", "seconds", "target", "sigma", "noise", "log ML", "kernels"],
            [
                (
                    "GP optimised",
                    seconds,
                    TARGET_S,
                    runs[0]["sigma"],
                    runs[0]["noise"],
                    runs[0]["log_marginal_likelihood"],
                    runs[0]["kernels"],
                )
            ],
            f"{'within' if seconds <= TARGET_S else 'OVER'} the {TARGET_S:.0f} s target; "
            f"runs {each} s. Before the distance "
            "cache and the one-dimensional search: 25-57 s (docs/kernels.md).",
        ),
        flush=True,
    )
    return out


def _fit_demo(quick: bool) -> None:
    """Child process of :func:`_demo_search`: the demo's split, features and scaling (not
    timed), then one timed fit; prints a JSON line."""
    frames = load_frames("cu")
    ds = Dataset.from_atoms(frames, require_energy=True)
    parts = make_split(ds.n_structures, (0.8, 0.1, 0.1), 0, ds.structure_groups())
    if quick:
        parts = {k: v[: len(v) // 4] for k, v in parts.items()}
    f = Gaussian(elements=ds.elements, cutoff=6.5)
    X = f.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
    rows = {
        k: np.concatenate([np.arange(*ds.offsets[s : s + 2]) for s in v]) for k, v in parts.items()
    }
    scaler = Scaler().fit(X[rows["train"]])
    tr, Xtr = ds.subset(parts["train"]), scaler.transform(X[rows["train"]])
    va, Xva = ds.subset(parts["validation"]), scaler.transform(X[rows["validation"]])
    kernels = []
    t = time.perf_counter()
    gp = GaussianProcess(kernel="rbf", sigma=1.0, noise=1e-4).fit(
        AtomicData(tr, Xtr, f, None),
        AtomicData(va, Xva, f, None),
        callback=lambda step, info: kernels.append(step),
    )
    seconds = time.perf_counter() - t
    print(
        json.dumps(
            {
                "seconds": seconds,
                "sigma": gp.sigma_,
                "noise": gp.noise_,
                "log_marginal_likelihood": gp.log_marginal_likelihood_,
                "kernels": len(kernels),
                "train_structures": len(parts["train"]),
            }
        )
    )


def main(argv=None) -> None:
    module_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
