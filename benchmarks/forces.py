"""The cost of forces: what energies + forces cost over energies alone.

1. Features: ours with the gradient of a weighted feature sum (one backward pass, what forces
   need) over features alone, for ML4Chem's default Gaussian set (G2+G3) and ANI-1x AEVs.
2. Models: prediction from raw structures (featurization included) of a trained NN, KRR and GP:
   energies + forces (autograd through model, scaler and featurizer) over energies alone.

Cu (32-atom periodic cells) and ethanol frames from data/. Timings are best of several calls.

    python -m benchmarks.forces [--quick]
"""

from __future__ import annotations

from atomistic.data import Dataset
from atomistic.features import AEV, Gaussian
from atomistic.features.scaling import Scaler
from atomistic.models import AtomicData, GaussianProcess, KernelRidge, NeuralNetwork, TrainingConfig
from benchmarks.common import best_of, load_frames, module_main, table
from benchmarks.featurize import ours_features, ours_gradients


def _models(train: AtomicData) -> dict:
    cfg = TrainingConfig(epochs=2, batch_size=32, lr=1e-3, seed=0)
    return {
        "NN (10, 10) tanh": NeuralNetwork((10, 10), "tanh", training=cfg).fit(train),
        "KRR rbf": KernelRidge(sigma=2.0, lamda=1e-6).fit(train),
        "GP rbf": GaussianProcess(sigma=2.0, noise=1e-4, optimize=False).fit(train),
    }


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Time ratios (energies + forces) / energies, for featurizers and for trained models."""
    n_feat, n_train, n_pred, repeat = (20, 40, 20, 1) if quick else (100, 200, 100, 3)
    feat_rows = []
    for data in ("cu", "ethanol"):
        frames = load_frames(data, n_feat)
        n = sum(len(a) for a in frames)
        elements = sorted({s for a in frames for s in a.get_chemical_symbols()})
        for name, f in (
            ("Gaussian G2+G3 (default)", Gaussian(elements=elements)),
            ("AEV ANI-1x", AEV.like_ani1x() if data == "ethanol" else AEV(elements=["Cu"])),
        ):
            t = best_of(ours_features(f, frames, device), repeat)
            tg = best_of(ours_gradients(f, frames, device), repeat)
            feat_rows.append(
                {
                    "data": data,
                    "what": name,
                    "atoms": n,
                    "energy_s": t,
                    "forces_s": tg,
                    "ratio": tg / t,
                }
            )
    model_rows = []
    frames = load_frames("cu", n_train + n_pred)
    ds = Dataset.from_atoms(frames[:n_train], require_energy=True)
    test = Dataset.from_atoms(frames[n_train:])
    f = Gaussian(elements=ds.elements)
    X = f.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
    scaler = Scaler().fit(X)
    train = AtomicData(ds, scaler.transform(X), f, scaler)
    raw = AtomicData(test, None, f, scaler)
    for name, model in _models(train).items():
        t = best_of(lambda model=model: model.predict(raw), repeat)
        tg = best_of(lambda model=model: model.predict(raw, forces=True), repeat)
        model_rows.append(
            {
                "data": "cu",
                "what": name,
                "atoms": test.n_atoms,
                "train_structures": n_train,
                "energy_s": t,
                "forces_s": tg,
                "ratio": tg / t,
            }
        )
    rows = [
        (
            r["data"],
            r["what"],
            r["atoms"],
            1e6 * r["energy_s"] / r["atoms"],
            1e6 * r["forces_s"] / r["atoms"],
            r["ratio"],
        )
        for r in feat_rows + model_rows
    ]
    print(
        table(
            "cost of forces: µs per atom, energies (features) alone vs with forces (gradients)",
            ["data", "what", "atoms", "E µs/atom", "E+F µs/atom", "(E+F)/E"],
            rows,
            f"models: Gaussian default features computed from the structures in both "
            f"columns; KRR/GP trained on {n_train} Cu structures.",
        ),
        flush=True,
    )
    return {"device": device, "features": feat_rows, "models": model_rows, "repeat": repeat}


def main(argv=None) -> None:
    module_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
