"""KRR and GP fit time against the number of training structures, beside scipy's Cholesky.

Cu structures (32 atoms each, ML4Chem's default Gaussian features, MinMax-scaled), N = 25 to 400
training structures. Fit time of atompipe's KernelRidge (structure kernel over all atom pairs +
Cholesky + solves), GaussianProcess with fixed hyperparameters (the same plus the stored factor),
and GaussianProcess with its default marginal-likelihood search, beside
``scipy.linalg.cho_factor`` of a random symmetric positive definite N x N matrix (the
factorisation alone). The fitted exponent p of time ~ N^p is printed for each. Then the demo
campaign's GP fit (400 structures) with and without the search's distance cache.

The kernel costs O(atoms^2 * features) and the factorisation O(N^3): at these sizes the kernel
dominates, so expect p near 2 for the models and near 3 for the bare Cholesky only at large N.

    python -m benchmarks.kernels [--quick]
"""

from __future__ import annotations

import time

import numpy as np
import scipy.linalg

from atomistic.data import Dataset
from atomistic.features import Gaussian
from atomistic.features.scaling import Scaler
from atomistic.models import AtomicData, GaussianProcess, KernelRidge
from benchmarks.common import best_of, load_frames, loglog_slope, module_main, table


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


def _demo_search(quick: bool) -> dict:
    """The demo campaign's GP fit (data/campaigns/demo.yaml: rbf, sigma 1, noise 1e-4, its
    default search on 300 of the training structures), with the distance cache of the search
    (atomistic.models.kernels.DistanceBlocks) and without it (every width rebuilds the kernel),
    in turn: seconds, hyperparameters and log marginal likelihood of each."""
    import atomistic.models.gaussian_process as gp_module

    n = 100 if quick else 400  # the demo: 80 % of the 500 shipped structures
    frames = load_frames("cu", 500)
    keep = np.sort(np.random.default_rng(0).permutation(len(frames))[:n])
    ds = Dataset.from_atoms([frames[k] for k in keep], require_energy=True)
    f = Gaussian(elements=ds.elements)
    X = f.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
    data = AtomicData(ds, Scaler().fit(X).transform(X), f, None)
    out = {}
    default = gp_module.CACHE_BYTES
    try:
        for label, cache in (("distance cache", default), ("no cache", 0)):
            gp_module.CACHE_BYTES = cache
            t = time.perf_counter()
            gp = GaussianProcess(kernel="rbf", sigma=1.0, noise=1e-4).fit(data)
            out[label] = {
                "seconds": time.perf_counter() - t,
                "sigma": gp.sigma_,
                "noise": gp.noise_,
                "log_marginal_likelihood": gp.log_marginal_likelihood_,
            }
    finally:
        gp_module.CACHE_BYTES = default
    print(
        table(
            f"GP fit of the demo campaign ({n} Cu training structures, search on "
            f"{min(n, 300)}): with and without the search's distance cache",
            ["search", "seconds", "sigma", "noise", "log ML"],
            [
                (k, v["seconds"], v["sigma"], v["noise"], v["log_marginal_likelihood"])
                for k, v in out.items()
            ],
            f"speed-up {out['no cache']['seconds'] / out['distance cache']['seconds']:.2f}x; "
            "the likelihood is flat near its maximum, so L-BFGS-B may stop at slightly "
            "different points.",
        ),
        flush=True,
    )
    return out


def main(argv=None) -> None:
    module_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
