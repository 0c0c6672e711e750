"""Kernel models that learn from forces: sparse (GAP-style) KRR and GP on energies and forces
against energy-only KRR, fit-time and memory scaling, and the GP's force calibration.

Data: the first 600 frames of the shipped GFN2-xTB ethanol and malonaldehyde sets, atompipe's
seeded split ``make_split(600, (0.8, 0.1, 0.1), seed=0)``: 480 training, 60 validation and 60
test structures, the same as benchmarks/nn_accuracy.py's. Features: ANI-1x AEVs
(``AEV.like_ani1x()``), MinMax-scaled on the training structures.

* energy-only KRR (the ML4Chem formulation, dense): sigma and lamda picked on the validation
  energies from a grid;
* force-trained KRR (``KernelRidge(forces=True)``): sigma, energy_noise, force_noise picked on
  the validation forces from a grid (for each sigma the M x M normal equations are accumulated
  once; each noise pair is then one M x M solve), n_sparse representatives per element by CUR;
* force-trained GP (``GaussianProcess(forces=True)``): hyperparameters by the marginal
  likelihood, starting from the KRR's, stds rescaled on the validation split; its force std
  against its force error on the test split (Spearman rank correlation, coverage of
  |error| <= k std for k = 1, 2, 3), also before the rescaling (the raw DTC variance).

Scaling: ``KernelRidge(forces=True, n_sparse=150)`` fit time and peak memory (the largest RSS
sampled every 2 ms during the fit, less the RSS just before it; features precomputed) for
N = 60 ... 960 training structures (the training splits of both molecules interleaved), each
size in its own process; the fitted exponent of time ~ N^p and memory ~ N^p.
Plot: benchmarks/results/kernel_forces_scaling.png.

Ratios printed: force MAE of the force-trained models over the energy-only KRR's (target
<= 0.2), energy MAE ratios (target <= 1), and, where ``benchmarks/results/nn_accuracy.json``
holds the force-trained network's test force MAE, the ratio to it.

    python -m benchmarks.kernel_forces [--quick]
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np

from benchmarks.common import DATA, RESULTS, child_env, loglog_slope, module_main, table

N_FRAMES, N_TRAIN = 600, 480  # 480 / 60 / 60 structures, as benchmarks/nn_accuracy.py
SIZES = (60, 120, 240, 480, 960)
QUICK_SIZES = (60, 120, 240)
SCALING_SPARSE = 150
# force-trained KRR: grid searched on the validation split (every training environment is a
# representative at n_sparse = 3000 for these molecules: 6 H per structure x 480 = 2880)
N_SPARSE = 3000
SIGMAS = (24.0, 32.0, 48.0)
ENERGY_NOISES = (3e-4, 1e-3)
FORCE_NOISES = (1e-3, 3e-3, 1e-2)


# -- data --------------------------------------------------------------------------------------
def prepare(name: str, n_train: int = N_TRAIN, features: str = "aev"):
    """{"train", "validation", "test"} AtomicData with scaled features, featurizer and scaler."""
    from atomistic.data import load_files, make_split
    from atomistic.features import AEV, Gaussian
    from atomistic.features.scaling import Scaler
    from atomistic.models import AtomicData

    ds = load_files([DATA / f"{name}_gfn2.extxyz"]).subset(range(N_FRAMES))
    split = make_split(ds.n_structures, (0.8, 0.1, 0.1), 0)
    idx = {"train": split["train"][:n_train], **{k: split[k] for k in ("validation", "test")}}
    f = AEV.like_ani1x() if features == "aev" else Gaussian(elements=ds.elements)
    parts = {k: ds.subset(v) for k, v in idx.items()}
    X = {
        k: f.featurize_arrays(p.numbers, p.positions, p.cell, p.pbc, p.offsets)
        for k, p in parts.items()
    }
    scaler = Scaler().fit(X["train"])
    return {k: AtomicData(parts[k], scaler.transform(X[k]), f, scaler) for k in parts}


def _errors(ds, energy, forces) -> tuple[float, float]:
    """(energy MAE meV/atom, force MAE meV/Å)."""
    e = 1000 * float(np.mean(np.abs(energy - ds.energy) / np.diff(ds.offsets)))
    return e, 1000 * float(np.mean(np.abs(forces - ds.forces)))


# -- models ------------------------------------------------------------------------------------
def energy_only_krr(data, sigmas=(2.0, 4.0, 8.0, 16.0, 32.0), lamdas=(1e-8, 1e-6, 1e-4)):
    """Dense energy-only KRR, sigma and lamda by validation energy MAE."""
    from atomistic.models import KernelRidge

    best = None
    for s, lam in product(sigmas, lamdas):
        m = KernelRidge(sigma=s, lamda=lam).fit(data["train"])
        va = data["validation"]
        e = float(np.mean(np.abs(m.predict(va)["energy"] - va.dataset.energy)))
        if best is None or e < best[0]:
            best = (e, s, lam)
    t0 = time.perf_counter()
    model = KernelRidge(sigma=best[1], lamda=best[2]).fit(data["train"])
    return model, time.perf_counter() - t0


def tune_force_krr(data, n_sparse, sigmas, energy_noises, force_noises, method="cur"):
    """Force-trained KRR hyperparameters by validation force MAE (ties: energy MAE).

    Returns (sigma, energy_noise, force_noise, validation table rows)."""
    import torch

    from atomistic.models import KernelRidge
    from atomistic.models.sparse_kernel import design_blocks, solve

    tr, va = data["train"], data["validation"]
    rows, best = [], None
    for s in sigmas:
        m = KernelRidge(sigma=s, forces=True, n_sparse=n_sparse, sparse_method=method)
        y = m._prepare(tr)
        m._choose_sparse(tr)
        ne = m._normal_equations(tr, y, s)
        with torch.no_grad():
            (d,) = list(design_blocks(va, m.X_train_, m.numbers_train_, s, budget=1 << 40))
        base = m._baseline(va.dataset)
        for en, fn in product(energy_noises, force_noises):
            w, _ = solve(ne, en, fn)
            e, f = _errors(va.dataset, d.KE.numpy() @ w + base, (d.KF.numpy() @ w).reshape(-1, 3))
            rows.append((s, en, fn, e, f))
            if best is None or (f, e) < (best[4], best[3]):
                best = (s, en, fn, e, f)
    return best[0], best[1], best[2], rows


# -- scaling (each size in a fresh process) ----------------------------------------------------
def _scaling_set(n: int):
    from atomistic.data import load_files, make_split

    sets = []
    for name in ("ethanol", "malonaldehyde"):
        ds = load_files([DATA / f"{name}_gfn2.extxyz"])
        sets.append(ds.subset(make_split(ds.n_structures, (0.8, 0.1, 0.1), 0)["train"]))
    from atomistic.data import Dataset

    # both molecules' training structures interleaved: ethanol 0, malonaldehyde 0, ethanol 1, ...
    return Dataset.from_atoms([_atoms(sets[i % 2], i // 2) for i in range(n)])


def _atoms(ds, s: int):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    r = slice(ds.offsets[s], ds.offsets[s + 1])
    atoms = Atoms(ds.numbers[r], positions=ds.positions[r], cell=ds.cell[s], pbc=ds.pbc[s])
    atoms.calc = SinglePointCalculator(atoms, energy=float(ds.energy[s]), forces=ds.forces[r])
    return atoms


def child(n: int) -> dict:
    """Fit KernelRidge(forces=True) on n structures; seconds and peak RSS growth (MiB)."""
    import torch

    from atomistic.features import AEV
    from atomistic.features.scaling import Scaler
    from atomistic.models import AtomicData, KernelRidge

    torch.set_num_threads(1)
    ds = _scaling_set(n)
    f = AEV.like_ani1x()
    X = f.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
    scaler = Scaler().fit(X)
    data = AtomicData(ds, scaler.transform(X), f, scaler)
    # warm-up on a small subset (imports, first forward-mode pass), not timed
    small = AtomicData(ds.subset(range(4)), None, f, scaler)
    KernelRidge(sigma=24.0, forces=True, n_sparse=4).fit(small)
    import gc
    import threading

    import psutil

    gc.collect()
    proc = psutil.Process()
    rss0 = proc.memory_info().rss / 2**20
    peak = [rss0]
    done = threading.Event()

    def sample() -> None:  # the RSS every 2 ms while the fit runs
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
            time.sleep(0.002)

    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    t0 = time.perf_counter()
    model = KernelRidge(sigma=24.0, forces=True, n_sparse=SCALING_SPARSE).fit(data)
    seconds = time.perf_counter() - t0
    done.set()
    watcher.join()
    peak[0] = max(peak[0], proc.memory_info().rss / 2**20)
    return {
        "n": n,
        "atoms": int(ds.n_atoms),
        "M": int(model.n_train_),
        "seconds": seconds,
        "peak_growth_mib": peak[0] - rss0,
        "rss_before_mib": rss0,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def scaling(sizes) -> list[dict]:
    out = []
    for n in sizes:
        code = f"import json, benchmarks.kernel_forces as k; print(json.dumps(k.child({n})))"
        res = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={**child_env(), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"},
            check=True,
        )
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    return out


def plot(points: list[dict], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = np.array([p["n"] for p in points], float)
    t = np.array([p["seconds"] for p in points])
    mem = np.array([p["peak_growth_mib"] for p in points])
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.6))
    ax[0].loglog(n, t, "o-", label="KernelRidge(forces=True)")
    ax[0].loglog(n, t[-1] * n / n[-1], "k--", lw=0.8, label="linear")
    ax[0].set(xlabel="training structures N", ylabel="fit time (s)")
    ax[1].loglog(n, mem, "o-", color="C1", label="peak RSS growth")
    ax[1].loglog(n, mem[-1] * n / n[-1], "k--", lw=0.8, label="linear")
    ax[1].set(xlabel="training structures N", ylabel="peak memory growth (MiB)")
    for a in ax:
        a.legend(fontsize=8)
    M = points[-1]["M"]
    fig.suptitle(f"sparse KRR on energies + forces, M = {M} representatives, AEV features")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# -- the benchmark -----------------------------------------------------------------------------
def _nn_reference() -> dict:
    path = RESULTS / "nn_accuracy.json"
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _nn_force_mae(ref: dict, name: str) -> float | None:
    """The best force-trained network's test force MAE (meV/Å) for ``name``: the lower median
    of atompipe's NeuralNetwork and the TorchANI loop in benchmarks/nn_accuracy.py's JSON."""
    runs = ref.get("runs", {}).get(name, {})
    best = None
    for side in runs.values():
        values = [r["force_mae_meV_A"] for r in side if "force_mae_meV_A" in r]
        if values:
            med = float(np.median(values))
            best = med if best is None else min(best, med)
    return best


def accuracy(name: str, quick: bool) -> dict:
    from scipy.stats import spearmanr

    from atomistic.metrics import calibration
    from atomistic.models import GaussianProcess, KernelRidge

    data = prepare(name, 120 if quick else N_TRAIN)
    te = data["test"]
    krr_e, t_e = energy_only_krr(data)
    p = krr_e.predict(te, forces=True)
    e_only = _errors(te.dataset, p["energy"], p["forces"])

    n_sparse = 300 if quick else N_SPARSE
    sigmas = (24.0,) if quick else SIGMAS
    sigma, en, fn, _ = tune_force_krr(data, n_sparse, sigmas, ENERGY_NOISES, FORCE_NOISES)
    t0 = time.perf_counter()
    krr_f = KernelRidge(
        sigma=sigma, forces=True, n_sparse=n_sparse, energy_noise=en, force_noise=fn
    ).fit(data["train"])
    t_f = time.perf_counter() - t0
    p = krr_f.predict(te, forces=True)
    f_krr = _errors(te.dataset, p["energy"], p["forces"])

    t0 = time.perf_counter()
    gp = GaussianProcess(
        sigma=sigma,
        forces=True,
        n_sparse=n_sparse,
        energy_noise=en,
        force_noise=fn,
        optimize=True,
        optimize_max_structures=60 if quick else 120,
    ).fit(data["train"], data["validation"])
    t_gp = time.perf_counter() - t0
    p = gp.predict(te, forces=True)
    f_gp = _errors(te.dataset, p["energy"], p["forces"])
    err = np.abs(p["forces"] - te.dataset.forces).ravel()
    std = p["forces_std"].ravel()
    cal = calibration(err / std)
    raw = calibration(err / (std / gp.force_std_scale_))
    return {
        "energy_only": {"energy_mae": e_only[0], "force_mae": e_only[1], "fit_s": t_e},
        "krr_forces": {
            "energy_mae": f_krr[0],
            "force_mae": f_krr[1],
            "fit_s": t_f,
            "sigma": sigma,
            "energy_noise": en,
            "force_noise": fn,
            "M": int(krr_f.n_train_),
        },
        "gp_forces": {
            "energy_mae": f_gp[0],
            "force_mae": f_gp[1],
            "fit_s": t_gp,
            "sigma": gp.sigma_,
            "energy_noise": gp.energy_noise_,
            "force_noise": gp.force_noise_,
            "amplitude": gp.amplitude_,
            "spearman": float(spearmanr(std, err).statistic),
            **{f"within_{k}sigma": cal[f"within_{k}sigma"] for k in (1, 2, 3)},
            "force_std_scale": gp.force_std_scale_,
            **{f"raw_within_{k}sigma": raw[f"within_{k}sigma"] for k in (1, 2, 3)},
        },
    }


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Accuracy on both molecules, GP calibration, and the fit-time/memory scaling."""
    result: dict = {"accuracy": {}, "table": []}
    nn = _nn_reference()
    rows = []
    for name in ("ethanol", "malonaldehyde"):
        acc = accuracy(name, quick)
        result["accuracy"][name] = acc
        base = acc["energy_only"]
        nn_f = _nn_force_mae(nn, name)
        for label, key in (("KRR energies", "energy_only"), ("KRR E+F", "krr_forces")):
            r = acc[key]
            rows.append(
                (
                    name,
                    label,
                    r["energy_mae"],
                    r["force_mae"],
                    r["force_mae"] / base["force_mae"],
                    r["energy_mae"] / base["energy_mae"],
                    None if nn_f is None else r["force_mae"] / nn_f,
                    r["fit_s"],
                )
            )
        r = acc["gp_forces"]
        rows.append(
            (
                name,
                "GP E+F",
                r["energy_mae"],
                r["force_mae"],
                r["force_mae"] / base["force_mae"],
                r["energy_mae"] / base["energy_mae"],
                None if nn_f is None else r["force_mae"] / nn_f,
                r["fit_s"],
            )
        )
    text = table(
        f"test errors, {N_TRAIN if not quick else 120} training structures, AEV ANI-1x",
        (
            "molecule",
            "model",
            "E MAE meV/atom",
            "F MAE meV/Å",
            "F / KRR-E",
            "E / KRR-E",
            "F / NN-EF",
            "fit s",
        ),
        rows,
        "F / KRR-E: force MAE over energy-only KRR's (target <= 0.2); F / NN-EF: over the "
        "force-trained network's (benchmarks/results/nn_accuracy.json; '-' when absent)",
    )
    print(text, flush=True)
    cal_rows = [
        (
            name,
            g["spearman"],
            g["within_1sigma"],
            g["within_2sigma"],
            g["within_3sigma"],
            g["force_std_scale"],
            f"{g['raw_within_1sigma']:.3f} / {g['raw_within_2sigma']:.3f}",
        )
        for name, g in ((n, a["gp_forces"]) for n, a in result["accuracy"].items())
    ]
    text2 = table(
        "GP force std against |force error|, test split (Gaussian: 0.683 / 0.954 / 0.997)",
        ("molecule", "Spearman", "within 1σ", "within 2σ", "within 3σ", "std scale", "raw 1σ / 2σ"),
        cal_rows,
        "std scale: the factor fitted on the validation split; raw: coverage of the DTC std "
        "before it",
    )
    print(text2, flush=True)
    points = scaling(QUICK_SIZES if quick else SIZES)
    n = [p["n"] for p in points]
    p_t = loglog_slope(n, [p["seconds"] for p in points])
    p_m = loglog_slope(n, [max(p["peak_growth_mib"], 1e-3) for p in points])
    srows = [
        (
            p["n"],
            p["atoms"],
            p["M"],
            p["seconds"],
            p["seconds"] / p["n"] * 1000,
            p["peak_growth_mib"],
            p["seconds"] / points[0]["seconds"],
        )
        for p in points
    ]
    text3 = table(
        f"fit time and peak memory against N (KernelRidge(forces=True, n_sparse={SCALING_SPARSE}))",
        ("N", "atoms", "M", "fit s", "ms / structure", "peak growth MiB", "time / time(N0)"),
        srows,
        f"exponents: time ~ N^{p_t:.2f}, peak memory growth ~ N^{p_m:.2f} (1 = linear)",
    )
    print(text3, flush=True)
    png = plot(points, (RESULTS / "quick" if quick else RESULTS) / "kernel_forces_scaling.png")
    print(f"plot: {png}")
    result.update(
        scaling=points,
        time_exponent=p_t,
        memory_exponent=p_m,
        plot=str(png),
        table=[text, text2, text3],
    )
    return result


def main(argv=None) -> dict:
    return module_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
