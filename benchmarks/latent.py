"""Latent features from an autoencoder: how well they reconstruct, and what they are worth.

For each dataset (data/cu_emt.extxyz, data/ethanol_gfn2.extxyz; rattled ase-built structures with
EMT labels when a file is missing): Gaussian symmetry functions, MinMax-scaled to (-1, 1) on the
training structures; an AutoEncoder and a VAE trained on the training atoms. Printed:

- held-out reconstruction MSE of each against the variance of the scaled held-out features
  (the MSE of predicting the mean), and the VAE's KL per atom;
- generative use of the VAE: codes drawn from the prior N(0, I), decoded per element; the mean
  squared distance of each decoded sample to its nearest held-out atom, against the same distance
  for held-out atoms to the training atoms (real data) and for uniform noise in the box;
- kernel ridge regression (and, with --nn, a Behler–Parrinello network) on latent vs on Gaussian
  features: test energy MAE per structure, sigma chosen on the validation split.

    python -m benchmarks.latent [--structures 300] [--epochs 150] [--nn] [--plots DIR]

Single-threaded torch by default (the machine is shared); a few minutes in all.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.data import atomic_numbers
from ase.io import read

from atomistic.data import Dataset, make_split
from atomistic.features import Gaussian
from atomistic.features.latent import latent_features
from atomistic.features.scaling import Scaler
from atomistic.models.autoencoders import VAE, AutoEncoder
from atomistic.models.training import TrainingConfig

ROOT = Path(__file__).resolve().parents[1]
DATASETS = {"cu": ROOT / "data" / "cu_emt.extxyz", "ethanol": ROOT / "data" / "ethanol_gfn2.extxyz"}


def _fallback(name: str, n: int) -> list:
    """Rattled copies labelled with EMT (Cu bulk; for 'ethanol' a Cu cluster stands in)."""
    rng = np.random.default_rng(0)
    base = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    images = []
    for s in range(n):
        a = base.copy()
        a.rattle(stdev=0.05 + 0.1 * rng.random(), seed=s)
        a.calc = EMT()
        a.get_potential_energy()
        images.append(a)
    print(f"  ({name}: file missing, using {n} rattled EMT Cu supercells)")
    return images


def _images(name: str, n: int) -> list:
    path = DATASETS[name]
    if not path.exists():
        return _fallback(name, n)
    images = read(path, ":")
    idx = np.random.default_rng(0).permutation(len(images))[:n]
    return [images[i] for i in np.sort(idx)]


def _rows(ds: Dataset, structures: np.ndarray) -> np.ndarray:
    return np.concatenate([np.arange(ds.offsets[s], ds.offsets[s + 1]) for s in structures])


def _nn_msd(A: np.ndarray, B: np.ndarray) -> float:
    """Mean over rows of A of the squared distance to the nearest row of B, per feature."""
    d = (A**2).sum(1)[:, None] - 2 * A @ B.T + (B**2).sum(1)[None, :]
    return float(np.maximum(d.min(1), 0).mean() / A.shape[1])


def _krr_mae(ds, split, X, sigmas) -> tuple[float, float]:
    from atomistic.models import AtomicData, KernelRidge

    parts = {k: AtomicData(ds.subset(v), features=X[_rows(ds, v)]) for k, v in split.items()}
    best = None
    for sigma in sigmas:
        model = KernelRidge(kernel="rbf", sigma=sigma, lamda=1e-6).fit(parts["train"])
        val = np.mean(
            np.abs(
                model.predict(parts["validation"])["energy"] - parts["validation"].dataset.energy
            )
        )
        if best is None or val < best[0]:
            best = (val, sigma, model)
    _, sigma, model = best
    test = parts["test"]
    return float(np.mean(np.abs(model.predict(test)["energy"] - test.dataset.energy))), sigma


def _nn_mae(ds, split, X, epochs: int) -> float:
    from atomistic.models import AtomicData, NeuralNetwork

    parts = {k: AtomicData(ds.subset(v), features=X[_rows(ds, v)]) for k, v in split.items()}
    config = TrainingConfig(epochs=epochs, batch_size=16, lr=5e-3, patience=30, seed=0)
    model = NeuralNetwork(hiddenlayers=(10, 10), activation="tanh", training=config)
    model.fit(parts["train"], parts["validation"])
    test = parts["test"]
    return float(np.mean(np.abs(model.predict(test)["energy"] - test.dataset.energy)))


def run(name: str, args: argparse.Namespace) -> None:
    print(f"\n== {name} ==")
    images = _images(name, args.structures)
    ds = Dataset.from_atoms(images)
    symbols = sorted({s for a in images for s in a.get_chemical_symbols()})
    t0 = time.perf_counter()
    X_raw = np.concatenate(Gaussian(elements=symbols).featurize(images))
    print(
        f"  {ds.n_structures} structures, {ds.n_atoms} atoms, {X_raw.shape[1]} Gaussian features "
        f"({time.perf_counter() - t0:.1f} s)"
    )
    split = make_split(ds.n_structures, (0.7, 0.1, 0.2), seed=0)
    tr, va, te = (_rows(ds, split[k]) for k in ("train", "validation", "test"))
    scaler = Scaler("minmax", (-1.0, 1.0)).fit(X_raw[tr])
    X = scaler.transform(X_raw)
    z = ds.numbers
    var = float(X[te].var())
    print(f"  variance of the scaled held-out features: {var:.4g}")

    config = TrainingConfig(epochs=args.epochs, batch_size=256, lr=5e-3, patience=30, seed=0)
    models = {
        "AutoEncoder": AutoEncoder(),
        "VAE": VAE(annealing={"kind": "cyclical", "cycles": 4, "ratio": 0.5}),
    }
    for label, model in models.items():
        t0 = time.perf_counter()
        model.fit(X[tr], z[tr], X[va], z[va], config=config, feature_key=f"{name}-gaussian")
        mse = model.reconstruction_error(X[te], z[te])
        line = (
            f"  {label:11s} held-out reconstruction MSE {mse:.4g} = {mse / var:.3%} of the "
            f"variance; {model.history_.epochs_completed} epochs, {time.perf_counter() - t0:.1f} s"
        )
        if isinstance(model, VAE):
            line += f"; KL {model.kl_divergence(X[te], z[te]):.3f} nats/atom"
        print(line)

    vae = models["VAE"]
    real, noise = _nn_msd(X[te], X[tr]), 0.0
    gen = []
    rng = np.random.default_rng(0)
    for k, sym in enumerate(vae.elements_):
        mask_te = z[te] == atomic_numbers[sym]
        n = min(500, int(mask_te.sum()))
        samples = vae.sample(n, sym, seed=k)
        gen.append(_nn_msd(samples, X[te][mask_te]))
        lo, hi = X[tr].min(0), X[tr].max(0)
        noise = max(noise, _nn_msd(rng.uniform(lo, hi, size=(n, X.shape[1])), X[te][mask_te]))
    print(
        f"  VAE prior samples: nearest-held-out MSD {np.mean(gen):.4g} per feature "
        f"(held-out to train {real:.4g}; uniform noise {noise:.4g})"
    )

    L = {label: latent_features(m, X, z) for label, m in models.items()}
    sigmas = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
    units = "eV/structure"
    for label, feats in [
        ("Gaussian", X),
        ("AE latent", L["AutoEncoder"]),
        ("VAE latent", L["VAE"]),
    ]:
        mae, sigma = _krr_mae(ds, split, feats, sigmas)
        msg = (
            f"  KRR on {label:10s} ({feats.shape[1]:2d} features): "
            f"test MAE {mae:.4f} {units} (sigma {sigma})"
        )
        if args.nn:
            msg += f"; NN test MAE {_nn_mae(ds, split, feats, args.epochs):.4f} {units}"
        print(msg)

    if args.plots:
        from atomistic.plots import latent_map, learning_curve

        out = Path(args.plots)
        print(
            "  plots:",
            latent_map(L["VAE"][te], z[te], path=out / f"{name}_vae_latent.png"),
            learning_curve(vae.history_.to_dict(), out / f"{name}_vae_curve.png"),
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--structures", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--nn", action="store_true", help="also train a NeuralNetwork on each")
    parser.add_argument("--plots", default=None, help="folder for a latent map and learning curve")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.datasets:
        run(name, args)


if __name__ == "__main__":
    main()
