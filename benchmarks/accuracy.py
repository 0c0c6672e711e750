"""Held-out accuracy and training time of NN (energies), NN (energies + forces), KRR and GP on the
shipped datasets, with Gaussian features (ML4Chem defaults) and a seeded 80/10/10 split.

    python -m benchmarks.accuracy                      # all models, all datasets present
    python -m benchmarks.accuracy --datasets ethanol --models nn_ef --epochs-ef 300

Errors: energy MAE/RMSE per atom (meV/atom), force MAE (meV/Å) on the test split. KRR's sigma is
picked on the validation split from a small grid; the GP fits its own by marginal likelihood.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from atomistic.data import Dataset, load_files, make_split
from atomistic.features import Gaussian
from atomistic.features.scaling import Scaler
from atomistic.metrics import evaluate
from atomistic.models import AtomicData, GaussianProcess, KernelRidge, NeuralNetwork, TrainingConfig

DATA = Path(__file__).resolve().parents[1] / "data"
DATASETS = {
    "cu": "cu_emt.extxyz",
    "ethanol": "ethanol_gfn2.extxyz",
    "malonaldehyde": "malonaldehyde_gfn2.extxyz",
}


def prepare(path: Path, seed: int = 0):
    ds: Dataset = load_files([path])
    split = make_split(ds.n_structures, (0.8, 0.1, 0.1), seed)
    f = Gaussian(elements=ds.elements)
    t0 = time.perf_counter()
    X = f.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
    t_feat = time.perf_counter() - t0
    parts = {k: ds.subset(v) for k, v in split.items()}
    rows = {
        k: np.concatenate([np.arange(ds.offsets[s], ds.offsets[s + 1]) for s in v])
        for k, v in split.items()
    }
    scaler = Scaler().fit(X[rows["train"]])
    data = {k: AtomicData(parts[k], scaler.transform(X[rows[k]]), f, scaler) for k in parts}
    return data, t_feat


def run_model(name: str, data: dict, args) -> tuple[dict, float]:
    tr, va, te = data["train"], data["validation"], data["test"]
    t0 = time.perf_counter()
    if name == "nn_e":
        cfg = TrainingConfig(
            epochs=args.epochs_e,
            batch_size=32,
            lr=5e-3,
            scheduler="plateau",
            plateau_patience=20,
            patience=60,
            seed=0,
        )
        model = NeuralNetwork(args.hidden, "silu", training=cfg).fit(tr, va)
    elif name == "nn_ef":
        cfg = TrainingConfig(
            epochs=args.epochs_ef,
            batch_size=16,
            lr=5e-3,
            scheduler="plateau",
            plateau_patience=10,
            patience=30,
            seed=0,
        )
        sub = (
            tr
            if args.max_train_ef is None
            else AtomicData(
                tr.dataset.subset(range(min(args.max_train_ef, tr.dataset.n_structures))),
                None,
                tr.featurizer,
                tr.scaler,
            )
        )
        model = NeuralNetwork(
            args.hidden, "silu", force_weight=args.force_weight, training=cfg
        ).fit(sub, va)
    elif name == "krr":
        best = None
        for sigma in (0.5, 1.0, 2.0, 4.0, 8.0):
            m = KernelRidge(sigma=sigma, lamda=1e-6).fit(tr, va)
            if best is None or m.metrics_["val_energy_mae_per_atom"] < best[0]:
                best = (m.metrics_["val_energy_mae_per_atom"], m)
        model = best[1]
    elif name == "gp":
        model = GaussianProcess(sigma=2.0, noise=1e-4, optimize_max_structures=args.gp_subset)
        model.fit(tr, va)
    else:
        raise ValueError(name)
    wall = time.perf_counter() - t0
    n_force = min(args.force_test, te.dataset.n_structures)
    test_f = AtomicData(te.dataset.subset(range(n_force)), None, te.featurizer, te.scaler)
    errs = evaluate(te.dataset, model.predict(te))
    errs.update(
        {
            k: v
            for k, v in evaluate(test_f.dataset, model.predict(test_f, forces=True)).items()
            if k.startswith("force")
        }
    )
    if name == "gp":
        errs["sigma"], errs["noise"] = model.sigma_, model.noise_
    if name == "krr":
        errs["sigma"] = model.sigma_
    if hasattr(model, "history_"):
        errs["epochs"] = model.history_.epochs_completed
    return errs, wall


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--models", nargs="+", default=["nn_e", "nn_ef", "krr", "gp"])
    p.add_argument("--epochs-e", type=int, default=1000)
    p.add_argument("--epochs-ef", type=int, default=150)
    p.add_argument("--hidden", type=int, nargs="+", default=[20, 20])
    p.add_argument("--force-weight", type=float, default=1.0)
    p.add_argument(
        "--max-train-ef",
        type=int,
        default=None,
        help="train the force NN on at most this many structures",
    )
    p.add_argument("--gp-subset", type=int, default=150)
    p.add_argument(
        "--force-test", type=int, default=50, help="test structures used for force errors"
    )
    p.add_argument("--threads", type=int, default=1)
    return p


def evaluate_all(args: argparse.Namespace) -> list[dict]:
    """Train and test every requested model on every requested dataset; print and return rows
    {dataset, model, energy_mae_per_atom, energy_rmse_per_atom, force_mae (eV, eV/Å),
    train_s, ...}."""
    args.hidden = tuple(args.hidden)
    print(
        f"{'dataset':14s} {'model':6s} {'E MAE':>8s} {'E RMSE':>8s} {'F MAE':>8s} "
        f"{'train s':>8s}  (meV/atom, meV/atom, meV/Å)"
    )
    rows = []
    for key in args.datasets:
        path = DATA / DATASETS[key]
        if not path.exists():
            print(f"{key}: {path} not present, skipped")
            continue
        data, t_feat = prepare(path)
        print(
            f"# {key}: {data['train'].dataset.n_structures}/"
            f"{data['validation'].dataset.n_structures}/{data['test'].dataset.n_structures} "
            f"structures, {data['train'].features.shape[1]} features, featurized in "
            f"{t_feat:.1f} s",
            flush=True,
        )
        for name in args.models:
            errs, wall = run_model(name, data, args)
            extra = {
                k: round(v, 4)
                for k, v in errs.items()
                if k in ("sigma", "noise", "epochs") or k.startswith("calibration_within")
            }
            print(
                f"{key:14s} {name:6s} {1e3 * errs['energy_mae_per_atom']:8.2f} "
                f"{1e3 * errs['energy_rmse_per_atom']:8.2f} {1e3 * errs['force_mae']:8.1f} "
                f"{wall:8.1f}  {extra}",
                flush=True,
            )
            rows.append(
                {
                    "dataset": key,
                    "model": name,
                    "train_s": wall,
                    "train_structures": data["train"].dataset.n_structures,
                    **{k: float(v) for k, v in errs.items() if np.isscalar(v) and np.isfinite(v)},
                }
            )
    return rows


# The suite's passes: every model but the force-trained NN on every dataset, and that one on
# ethanol only (on Cu it alone takes about 25 min on one core: 10 s an epoch).
SUITE = (
    ["--models", "nn_e", "krr", "gp"],
    ["--datasets", "ethanol", "--models", "nn_ef"],
)
QUICK = (["--datasets", "cu", "--models", "nn_e", "--epochs-e", "30", "--force-test", "10"],)


def run(quick: bool = False, device: str = "cpu") -> dict:
    """The suite's entry (see ``SUITE``; ``quick``: the Cu set's energy-trained NN for 30
    epochs, forces on 10 test structures)."""
    out: dict = {"commands": [], "rows": []}
    for argv in QUICK if quick else SUITE:
        args = _parser().parse_args(argv)
        out["commands"].append("python -m benchmarks.accuracy " + " ".join(argv))
        out["rows"] += evaluate_all(args)
    out["settings"] = {k: v for k, v in vars(_parser().parse_args([])).items()}
    return out


def main() -> None:
    args = _parser().parse_args()
    torch.set_num_threads(args.threads)
    evaluate_all(args)


if __name__ == "__main__":
    main()
