"""Active learning against random selection: test force error against labels used.

Cu (ASE's EMT), bulk fcc cells of 32 atoms (``bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)``,
as data/cu_emt.extxyz):

* seed: 20 labelled structures from EMT Langevin MD at 300 K (one every 50 steps of 2 fs after
  200 steps of equilibration): 16 train the first committee, 4 validate it (early stopping and
  the calibrated threshold) and stay in the validation set;
* test: 40 structures from an independent EMT trajectory at 1200 K (another seed, one every 40
  steps), hotter than anything in the seed data;
* model: a committee of ``--committee`` (3) networks, hidden layers (32, 32), celu0.1,
  force_weight 1.0, AdamW + cosine + EMA, ``--epochs`` (200) epochs, on Gaussian symmetry
  functions G2 + G4 with cutoff 4.5 Å (``--features dense``: 16 columns on shifted grids, see
  :func:`make_featurizer`; ``ml4chem``: ML4Chem's default 8), the scaler fitted once on the seed
  structures;
* each iteration: Langevin MD with the current committee from ``--starts`` (2) labelled
  structures at 800 and 1400 K, 150 steps of 2 fs each, a snapshot every 5 steps (120
  candidates); pick
  ``--per-iteration`` (20) of them; label them with EMT; retrain, warm-started from the previous
  weights, with the same epoch budget; measure the test force MAE (eV/Å).
* active learning picks snapshots whose committee force uncertainty u = max_i |σ_F,i| exceeds the
  threshold calibrated on the validation structures (the 0.9 quantile of their u), diverse by
  farthest-point sampling on structure descriptors among the ``--pool`` (2) × ``--per-iteration``
  most uncertain of them; random selection
  runs the same loop (its own model drives its own, equally long exploration) and picks the same
  number of snapshots uniformly at random. Neither picks a snapshot above
  ``--max-uncertainty`` (2 eV/Å), where a trajectory is stopped as unphysical.
* ``--methods oracle`` (not run by default): the bound of any uncertainty measure, the same
  selection with u replaced by the model's true largest force error on each snapshot (every
  candidate labelled to know it). If even the oracle does not reach random selection's error
  with half the labels, no uncertainty can on this exploration.

* ``--model gp``: the sparse GP on energies and forces (``GaussianProcess(forces=True)``,
  ``--n-sparse`` representatives per element) drives the same loop in place of the committee.
  Its sigma, amplitude and noises come from the marginal likelihood on the seed structures
  (the search on at most 40 of them) and are kept for the later fits (``--gp-reoptimize``:
  searched at every fit); its stds are recalibrated on the validation structures at every
  fit. The exploration computes u at the snapshots only (``explore(check_every=interval)``:
  a GP's force stds cost a forward-mode pass per atom and direction, its means one reverse
  pass). Its outputs are named ``active_learning_<system>_gp*``.

Prints both curves (force MAE against labels added), the labels active learning needs to reach
random selection's error at the full budget (linear interpolation between iterations), and the
uncertainty calibration on the test set at each iteration; draws
benchmarks/results/active_learning_cu.png and writes active_learning_cu.json.

With ``--system ethanol`` the same protocol runs on ethanol with GFN2-xTB (tblite) labels: 0.5 fs
steps, seed data at 300 K (one frame every 100 steps), test data at 800 K (every 80 steps),
exploration at 500 and 1000 K (300 steps, a snapshot every 10).

    python -m benchmarks.active_learning                          # Cu, budget 100
    python -m benchmarks.active_learning --methods active --seed 1 --out runs/s1   # one curve
    python -m benchmarks.active_learning --methods random --seed 1 --out runs/s1   # (side by side)
    python -m benchmarks.active_learning --combine runs/*/active_learning_cu_*.json
    python -m benchmarks.active_learning --system ethanol --model gp --steps 1000 \
        --temperatures 300 500 800 1000        # the GP, longer exploration (README figures)
    python -m benchmarks.active_learning --model gp --n-sparse 500 \
        --temperatures 300 700 1100 1500       # Cu, the GP, a temperature ladder (README)

``--combine`` reads runs of several seeds and methods: the median curve of each method over its
seeds, with the min-max band, at every ``--per-iteration`` labels (a run whose iterations added
fewer, untrusted snapshots left out, is interpolated between its iterations); the JSON keeps the
runs.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


# -- data -----------------------------------------------------------------------------------------
def cu_cell():
    from ase.build import bulk

    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)


SYSTEMS: dict[str, dict[str, Any]] = {
    # 32-atom fcc cell, EMT; 2 fs steps
    "cu": {
        "title": "Cu (EMT)",
        "calculator": "emt",
        "timestep_fs": 2.0,
        "seed": (300.0, 50),  # temperature (K), steps between frames
        "test": (1200.0, 40),
        "temperatures": [800.0, 1400.0],
        "steps": 150,
        "interval": 5,
    },
    # ethanol, GFN2-xTB through tblite; 0.5 fs steps (hydrogens)
    "ethanol": {
        "title": "ethanol (GFN2-xTB)",
        "calculator": "tblite",
        "timestep_fs": 0.5,
        "seed": (300.0, 100),
        "test": (800.0, 80),
        "temperatures": [500.0, 1000.0],
        "steps": 300,
        "interval": 10,
    },
}


def start_structure(system: str):
    if system == "cu":
        return cu_cell()
    import ase.io

    ethanol = ase.io.read(Path(__file__).resolve().parents[1] / "data" / "ethanol_gfn2.extxyz", 0)
    return ase.Atoms(ethanol.numbers, ethanol.positions)


def reference_md(
    system: str, n_frames: int, temperature: float, every: int, seed: int, equil: int = 200
) -> list:
    """Reference-labelled snapshots of Langevin MD (friction 0.02/fs) of the system's start."""
    from ase import Atoms, units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from atomistic.active import label_structures, reference_calculator

    spec = SYSTEMS[system]
    rng = np.random.default_rng(seed)
    atoms = start_structure(system)
    atoms.set_constraint(FixCom())
    atoms.calc = reference_calculator(spec["calculator"])
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    dyn = Langevin(
        atoms,
        spec["timestep_fs"] * units.fs,
        temperature_K=temperature,
        friction=0.02 / units.fs,
        fixcm=False,
        rng=rng,
    )
    dyn.run(equil)
    frames = []
    for _ in range(n_frames):
        dyn.run(every)
        frames.append(Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc))
    labelled, _ = label_structures(frames, lambda: reference_calculator(spec["calculator"]))
    return labelled


def make_featurizer(name: str):
    """Gaussian symmetry functions, cutoff 4.5 Å, G2 + G4: ``dense`` (the default) is
    :func:`~atomistic.features.gaussian.dense_parameters` with 8 shifted radial Gaussians,
    angular widths 0.005 and 0.05 Å^-2 and zeta 1, 4 (16 columns); ``ml4chem`` is ML4Chem's
    default set (8 columns)."""
    from atomistic.features import Gaussian
    from atomistic.features.gaussian import dense_parameters

    if name == "ml4chem":
        return Gaussian(cutoff=4.5, angular_type="G4")
    p = dense_parameters(4.5, n_radial=8, angular_etas=(0.005, 0.05), zetas=(1, 4))
    return Gaussian(cutoff=4.5, angular_type="G4", custom={"G2": p["G2"], "G4": p["G3"]})


# -- model ----------------------------------------------------------------------------------------
def make_model(args) -> Any:
    from atomistic.models import NeuralNetwork

    return NeuralNetwork(
        hiddenlayers=(32, 32),
        activation="celu0.1",
        force_weight=1.0,
        ensemble=args.committee,
        training={
            "epochs": args.epochs,
            "max_time": args.max_time,
            "optimizer": "adamw",
            "lr": 3e-3,
            "weight_decay": 1e-5,
            "scheduler": "cosine",
            "min_lr": 1e-5,
            "warmup_epochs": 2,
            "ema_decay": 0.99,
            "grad_clip": 10.0,
            "batch_size": 8,
        },
    )


def make_gp(args, previous=None) -> Any:
    """The sparse GP on energies and forces: its hyperparameters by the marginal likelihood on
    the seed structures, then kept (``previous``'s) unless ``--gp-reoptimize``; the stds are
    recalibrated on the validation structures at every fit."""
    from atomistic.models import GaussianProcess

    common = {"forces": True, "n_sparse": args.n_sparse, "seed": args.seed}
    if previous is None or args.gp_reoptimize:
        return GaussianProcess(sigma=4.0, optimize=True, optimize_max_structures=40, **common)
    return GaussianProcess(
        sigma=previous.sigma_,
        amplitude=previous.amplitude_,
        energy_noise=previous.energy_noise_,
        force_noise=previous.force_noise_,
        optimize=False,
        **common,
    )


def fit(args, train: list, val: list, featurizer, scaler, previous=None):
    from atomistic.active import warm_start
    from atomistic.models import AtomicData

    if args.model == "gp":
        model = make_gp(args, previous)
        model.fit(
            AtomicData.from_atoms(train, featurizer, scaler),
            AtomicData.from_atoms(val, featurizer, scaler),
        )
        return model
    model = make_model(args)
    if previous is not None and args.warm_start:
        warm_start(model, previous)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.fit(
            AtomicData.from_atoms(train, featurizer, scaler),
            AtomicData.from_atoms(val, featurizer, scaler),
        )
    return model


def test_errors(model, test: list) -> dict[str, float]:
    from atomistic.active import force_calibration

    out = model.predict_atoms(test, forces=True)
    F = np.concatenate([a.get_forces() for a in test])
    P = np.concatenate(out["forces"])
    res = {"force_mae": float(np.abs(F - P).mean())}
    if "forces_std" in out:
        res.update({f"cal_{k}": v for k, v in force_calibration(F, P, out["forces_std"]).items()})
    return res


def oracle_errors(model, frames: list, calculator: str) -> np.ndarray:
    """(S,) the largest, over its atoms, of the norm of the model's true force error on each
    snapshot (the reference method run on every candidate); -inf where the reference failed
    (never picked)."""
    from atomistic.active import label_structures, reference_calculator

    failed: list[tuple[int, str]] = []
    labelled, _ = label_structures(frames, lambda: reference_calculator(calculator), failed=failed)
    bad = {k for k, _ in failed}
    ok = [k for k in range(len(frames)) if k not in bad]
    pred = model.predict_atoms([frames[k] for k in ok], forces=True)["forces"]
    err = np.full(len(frames), -np.inf)
    for k, atoms, f in zip(ok, labelled, pred, strict=True):
        err[k] = float(np.linalg.norm(atoms.get_forces() - f, axis=1).max())
    return err


# -- the loop -------------------------------------------------------------------------------------
def run_loop(args, method: str, seed_train, seed_val, test, featurizer, scaler) -> list[dict]:
    from atomistic.active import (
        calibrate_threshold,
        explore,
        label_structures,
        reference_calculator,
        select,
        stop_reason,
        structure_descriptors,
        structure_uncertainty,
        variance_reduction_order,
    )
    from atomistic.models import AtomicData

    if args.select == "variance" and args.model != "gp":
        raise SystemExit("--select variance needs --model gp")
    rng = np.random.default_rng(args.seed)
    train = list(seed_train)
    t0 = time.perf_counter()
    model = fit(args, train, seed_val, featurizer, scaler)
    curve = [{"labels": 0, **test_errors(model, test), "time_s": time.perf_counter() - t0}]
    print(
        f"  {method:11s} labels {0:4d}  test F MAE {curve[-1]['force_mae'] * 1000:7.1f} meV/Å",
        flush=True,
    )
    added = 0
    it = 0
    while stop_reason(added, args.budget) is None:
        it += 1
        starts = [train[i] for i in rng.choice(len(train), size=args.starts, replace=False)]
        frames = explore(
            model,
            starts,
            temperatures=args.temperatures,
            steps=args.steps,
            interval=args.interval,
            timestep_fs=SYSTEMS[args.system]["timestep_fs"],
            seed=int(rng.integers(2**31)),
            max_uncertainty=args.max_uncertainty,
            check_every=args.interval if args.model == "gp" else 1,
        )
        u = np.array([f.info["uncertainty"] for f in frames])
        n_pick = min(args.per_iteration, args.budget - added)
        if method == "active":
            val_pred = model.predict(AtomicData.from_atoms(seed_val, featurizer, scaler), True)
            off = np.concatenate([[0], np.cumsum([len(a) for a in seed_val])])
            threshold = calibrate_threshold(
                structure_uncertainty(val_pred["forces_std"], off, args.criterion), args.quantile
            )
            key = "uncertainty" if args.criterion == "max" else "uncertainty_mean"
            ranked = np.array([f.info[key] for f in frames])
            ranked[u > args.max_uncertainty] = -np.inf  # the trust bound is on the largest
            if args.upper_factor is not None:  # DP-GEN's trust window, from the calibration
                ranked[u > args.upper_factor * threshold] = -np.inf
            if args.select == "variance":
                cand = AtomicData.from_atoms(frames, featurizer, scaler)
                V, rest = model.force_variance_terms(cand)
                picks = np.sort(
                    variance_reduction_order(
                        V,
                        rest,
                        cand.dataset.offsets,
                        n_pick,
                        model.amplitude_,
                        model.force_noise_,
                        eligible=np.isfinite(ranked),  # the trust bound; the score weighs the rest
                        shortlist=args.shortlist,
                        scale=model.force_std_scale_,
                        seed=int(rng.integers(2**31)),
                    )
                )
            else:
                picks = select(
                    ranked,
                    threshold,
                    n_pick,
                    diversity="fps",
                    descriptors=structure_descriptors(frames, featurizer, scaler),
                    pool=args.pool,
                )
        elif method == "oracle":
            # the upper bound of any uncertainty: every candidate labelled, the largest true
            # force error per structure in place of u (same pool and diversity as "active")
            threshold = 0.0
            err = oracle_errors(model, frames, SYSTEMS[args.system]["calculator"])
            err[u > args.max_uncertainty] = -np.inf  # the same trust window as the others
            picks = select(
                err,
                threshold,
                n_pick,
                diversity="fps",
                descriptors=structure_descriptors(frames, featurizer, scaler),
                pool=args.pool,
            )
        else:
            threshold = float("nan")
            picks = select(
                u,
                0.0,
                n_pick,
                method="random",
                upper=args.max_uncertainty,
                seed=int(rng.integers(2**31)),
            )
        if method == "active":
            n_uncertain = int((ranked > threshold).sum())
        else:
            n_uncertain = int((u > threshold).sum()) if method != "random" else len(u)
        if len(picks) == 0:
            print(f"  {method}: nothing uncertain left", flush=True)
            break
        failed: list[tuple[int, str]] = []
        labelled, _ = label_structures(
            [frames[i] for i in picks],
            lambda: reference_calculator(SYSTEMS[args.system]["calculator"]),
            failed=failed,
        )
        for k, message in failed:
            print(f"  {method}: reference failed on snapshot {picks[k]}, left out: {message}")
        train += labelled
        added += len(labelled)
        model = fit(args, train, seed_val, featurizer, scaler, previous=model)
        row = {
            "labels": added,
            "iteration": it,
            "candidates": len(frames),
            "uncertain": n_uncertain,
            "threshold": threshold,
            "picked_u_mean": float(u[picks].mean()),
            "candidates_u_mean": float(u.mean()),
            **test_errors(model, test),
            "time_s": time.perf_counter() - t0,
        }
        curve.append(row)
        print(
            f"  {method:11s} labels {added:4d}  test F MAE {row['force_mae'] * 1000:7.1f} meV/Å"
            f"  ({len(frames)} candidates, {n_uncertain} above {threshold:.3f} eV/Å, "
            f"picked u {row['picked_u_mean']:.3f} vs mean {row['candidates_u_mean']:.3f}; "
            f"Spearman {row.get('cal_spearman', float('nan')):.2f}; {row['time_s']:.0f} s)",
            flush=True,
        )
    return curve


def labels_to_reach(curve: list[dict], target: float) -> float | None:
    """Labels at which ``curve`` first reaches ``target`` (linear between points); None if never."""
    prev = None
    for row in curve:
        if row["force_mae"] <= target:
            if prev is None:
                return float(row["labels"])
            x0, y0, x1, y1 = prev["labels"], prev["force_mae"], row["labels"], row["force_mae"]
            return float(x0 + (y0 - target) / (y0 - y1) * (x1 - x0))
        prev = row
    return None


def median_curve(curves: list[list[dict]], step: int) -> list[dict]:
    """Over runs (seeds) of one method, at every ``step`` labels up to the fewest any run
    reached: the median force MAE, its min and max (``mae_min``, ``mae_max``) and the number of
    runs. A run whose iterations added fewer labels (snapshots left out as untrusted) is
    interpolated linearly between its iterations."""
    last = min(c[-1]["labels"] for c in curves)
    out = []
    for labels in range(0, last + 1, step):
        mae = [
            float(np.interp(labels, [r["labels"] for r in c], [r["force_mae"] for r in c]))
            for c in curves
        ]
        out.append(
            {
                "labels": labels,
                "force_mae": float(np.median(mae)),
                "mae_min": min(mae),
                "mae_max": max(mae),
                "runs": len(mae),
            }
        )
    return out


def plot(curves: dict[str, list[dict]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    several = any(c[0].get("runs", 1) > 1 for c in curves.values())
    for name, curve in curves.items():
        x = [r["labels"] for r in curve]
        runs = curve[0].get("runs", 1)
        label = f"{name} (median of {runs} seeds, min-max shaded)" if runs > 1 else name
        (line,) = ax.plot(
            x,
            [r["force_mae"] * 1000 for r in curve],
            "o-",
            label=f"{name} (one seed)" if several and runs == 1 else label,
        )
        if runs > 1:
            lo = [r["mae_min"] * 1000 for r in curve]
            hi = [r["mae_max"] * 1000 for r in curve]
            ax.fill_between(x, lo, hi, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("labels added to the 20 seed structures")
    ax.set_ylabel("test force MAE (meV/Å)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=int, default=100)
    p.add_argument("--per-iteration", type=int, default=20)
    p.add_argument(
        "--model",
        choices=["committee", "gp"],
        default="committee",
        help="the model that drives the loop: a committee of networks or the sparse GP",
    )
    p.add_argument("--n-sparse", type=int, default=1000, help="gp: representatives per element")
    p.add_argument("--gp-reoptimize", action="store_true", help="gp: hyperparameters every fit")
    p.add_argument("--committee", type=int, default=3)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--max-time", type=float, default=None)
    p.add_argument("--system", choices=sorted(SYSTEMS), default="cu")
    p.add_argument("--steps", type=int, default=None, help="default: the system's")
    p.add_argument("--interval", type=int, default=None, help="default: the system's")
    p.add_argument("--temperatures", type=float, nargs="+", default=None)
    p.add_argument(
        "--starts", type=int, default=2, help="starting structures per iteration (labelled ones)"
    )
    p.add_argument(
        "--criterion",
        choices=["max", "mean"],
        default="max",
        help="active: rank snapshots by the largest or the mean atomic force std",
    )
    p.add_argument(
        "--select",
        choices=["fps", "variance"],
        default="fps",
        help="active: farthest points among the most uncertain, or (GP) the batch of largest "
        "expected variance reduction over all candidates (variance_reduction_order)",
    )
    p.add_argument(
        "--shortlist",
        type=int,
        default=100,
        help="--select variance: score only this many most uncertain candidates per pick",
    )
    p.add_argument("--quantile", type=float, default=0.9)
    p.add_argument("--max-uncertainty", type=float, default=2.0)
    p.add_argument(
        "--upper-factor",
        type=float,
        default=None,
        help="active: pick nothing above this × the calibrated threshold (DP-GEN's trust_hi "
        "over trust_lo); the exploration still runs to --max-uncertainty",
    )
    p.add_argument(
        "--pool",
        type=float,
        default=2.0,
        help="active: farthest-point sampling among the pool x per-iteration most uncertain",
    )
    p.add_argument("--no-warm-start", dest="warm_start", action="store_false")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--features", choices=["dense", "ml4chem"], default="dense")
    p.add_argument("--methods", nargs="+", default=["active", "random"])
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        help="only report: merge the curves of earlier runs' JSON files (e.g. one per method)",
    )
    args = p.parse_args(argv)
    spec = SYSTEMS[args.system]
    for name in ("steps", "interval", "temperatures"):
        if getattr(args, name) is None:
            setattr(args, name, spec[name])
    if args.combine:
        runs: dict[str, list[list[dict]]] = {}
        loaded = [json.loads(path.read_text()) for path in args.combine]
        for one in sorted(loaded, key=lambda r: int(r["args"].get("seed", 0))):  # paired by seed
            for name, curve in one["curves"].items():
                runs.setdefault(name, []).append(curve)
        medians = {name: median_curve(c, args.per_iteration) for name, c in runs.items()}
        return report(medians, args, runs)

    import torch

    torch.set_num_threads(1)
    from atomistic.data import Dataset
    from atomistic.features.scaling import Scaler

    t0 = time.perf_counter()
    (t_seed, every_seed), (t_test, every_test) = spec["seed"], spec["test"]
    seed = reference_md(args.system, 20, t_seed, every_seed, seed=1)
    seed_train, seed_val = seed[:16], seed[16:]
    test = reference_md(args.system, 40, t_test, every_test, seed=2)
    featurizer = make_featurizer(args.features)
    ds = Dataset.from_atoms(seed)
    scaler = Scaler().fit(
        featurizer.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
    )
    print(
        f"data: 20 seed structures at {t_seed:g} K, 40 test structures at {t_test:g} K "
        f"({time.perf_counter() - t0:.1f} s)",
        flush=True,
    )
    curves = {}
    for method in args.methods:
        curves[method] = run_loop(args, method, seed_train, seed_val, test, featurizer, scaler)
    return report(curves, args)


def _cell(row: dict | None) -> str:
    """A table cell: the force MAE in meV/Å, with the min-max over seeds where there are some."""
    if row is None:
        return f"{'':22s}"
    text = f"{row['force_mae'] * 1000:.1f}"
    if row.get("runs", 1) > 1:
        text += f" ({row['mae_min'] * 1000:.1f}-{row['mae_max'] * 1000:.1f})"
    return f"{text:>22s}"


def report(curves: dict[str, list[dict]], args, runs: dict | None = None) -> dict:
    """Print the table and the labels-to-match figure; write the JSON and the plot. ``runs``:
    the separate runs (seeds) behind median ``curves``, kept in the JSON."""
    settings = {k: str(v) for k, v in vars(args).items() if k not in ("out", "combine")}
    if args.combine:  # the runs' files by name: a results file names no folder of this machine
        settings["combine"] = str([f"{p.parent.name}/{p.name}" for p in args.combine])
    result: dict[str, Any] = {"args": settings, "curves": curves}
    if runs is not None:
        result["runs"] = runs
        result["labels_to_match_per_seed"] = {
            name: [
                labels_to_reach(c, r[-1]["force_mae"])
                for c, r in zip(runs[name], runs.get("random", []), strict=False)
            ]
            for name in runs
            if name != "random"
        }
    print("\nlabels  " + "  ".join(f"{m:>22s}" for m in curves) + "   (test force MAE, meV/Å)")
    n = max(len(c) for c in curves.values())
    for k in range(n):
        row = [c[k] if k < len(c) else None for c in curves.values()]
        lab = next(r["labels"] for r in row if r is not None)
        print(f"{lab:6d}  " + "  ".join(_cell(r) for r in row))
    if "random" in curves:
        target = curves["random"][-1]["force_mae"]
        result["random_final_mae"] = target
        for name in [m for m in curves if m != "random"]:
            need = labels_to_reach(curves[name], target)
            result[f"{name}_labels_to_match"] = need
            print(
                f"random selection at {curves['random'][-1]['labels']} labels: "
                f"{target * 1000:.1f} meV/Å; {name} "
                + (f"reaches it with {need:.0f} labels" if need is not None else "never does")
            )
    args.out.mkdir(parents=True, exist_ok=True)
    stem = f"active_learning_{args.system}" + ("_gp" if args.model == "gp" else "")
    stem += "" if len(curves) > 1 else f"_{next(iter(curves))}"
    png = args.out / f"{stem}.png"
    driver = "sparse GP" if args.model == "gp" else f"committee of {args.committee}"
    plot(curves, png, f"{SYSTEMS[args.system]['title']}, {driver}: active vs random")
    (args.out / f"{stem}.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {png}")
    return result


if __name__ == "__main__":
    main()
