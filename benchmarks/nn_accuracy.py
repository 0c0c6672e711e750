"""Force-trained network potentials side by side: atompipe's NeuralNetwork against a plain
TorchANI training loop, same data, split, features, network sizes, dtype, threads and wall clock.

Data: the first 600 frames of a shipped GFN2-xTB set (ethanol, malonaldehyde), atompipe's seeded
80/10/10 split (480 training, 60 validation, 60 test structures).

Both sides: ANI-1x AEVs (TorchANI's ``AEVComputer.like_1x``; atompipe's ``AEV.like_ani1x``, equal
to it), per-element networks H [160, 128, 96], C [144, 112, 96], N and O [128, 112, 96], CELU(0.1),
float32, AdamW, batches of 32, energies and forces in the loss, validation after every epoch and
the best validation weights kept, ``--threads`` torch threads, one process at a time, and the
same budget of ``--budget`` seconds of wall clock from raw structures to a trained model.

* TorchANI loop (its force-training example): per-element reference energies by least squares
  (its ``EnergyShifter``), loss = (dE)^2/sqrt(N) + 0.1 sum_(i,c) (dF)^2 / N, AdamW lr 1e-3 (weight
  decay 1e-4, 1e-5, 1e-6, 0 by layer as in the example), ReduceLROnPlateau(0.5, patience 25) on
  the validation loss, AEVs recomputed at every step as ``Sequential(aev_computer, networks)``.
* atompipe: ``NeuralNetwork`` with the settings of data/campaigns/molecules.yaml's ``nn_forces``
  (per-element min-max scaling, precomputed feature Jacobians, warm-up, cosine decay over the
  budget, EMA of the weights; docs/training.md).

Prints the test energy MAE (meV per structure) and force MAE (meV/Å) of both, their ratios
(atompipe / TorchANI, < 1 is better), and the training throughput (structures per second of
epochs, validation included, on both sides). Several ``--repeats`` give medians and the spread
(max - min).

    python -m benchmarks.nn_accuracy                      # 300 s per side and molecule
    python -m benchmarks.nn_accuracy --budget 60 --molecules ethanol --committee 0

With ``--committee N`` (default 4) a committee of N networks then trains on the first molecule
within the same budget, and its force standard deviation is compared with its force errors on the
test split (Spearman correlation, fraction of errors within 1, 2, 3 sigma).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from benchmarks.common import RESULTS, load_frames, table

ANI_LAYERS = {
    "H": (160, 128, 96),
    "C": (144, 112, 96),
    "N": (128, 112, 96),
    "O": (128, 112, 96),
}
SPECIES = ("H", "C", "N", "O")
BATCH = 32
MEMBERS = 4  # atompipe's use of a fixed budget on a small set: a committee (docs/training.md)

# atompipe's settings (data/campaigns/molecules.yaml, nn_forces)
ATOMPIPE = {
    "activation": "celu0.1",
    "force_weight": 1.0,
    "energy_weight": 1.0,
    "energy_normalization": "atoms",
    "dtype": "float32",
    "scaler": {"kind": "minmax", "per_element": True},
}
ATOMPIPE_TRAINING = {
    "epochs": 100000,
    "batch_size": BATCH,
    "optimizer": "adamw",
    "lr": 2e-3,
    "weight_decay": 1e-5,
    "scheduler": "cosine",
    "min_lr": 1e-5,
    "warmup_epochs": 5,
    "ema_decay": 0.99,
    "grad_clip": 10.0,
    "patience": None,
    "seed": 0,
}


def split_frames(name: str, n: int = 600, seed: int = 0):
    from atomistic.data import make_split

    frames = load_frames(name, n)
    split = make_split(len(frames), (0.8, 0.1, 0.1), seed)
    return {k: [frames[i] for i in v] for k, v in split.items()}


def _mae(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(pred) - np.asarray(ref))))


# -- the plain TorchANI loop ---------------------------------------------------------------------
def torchani_loop(parts: dict, budget: float, seed: int = 0, members: int = 1) -> dict:
    """Train TorchANI's AEVComputer + ANINetworks for ``budget`` s; test errors and throughput.

    ``members`` > 1: that many networks one after another (seeds ``seed + k``), each with an
    equal share of what is left of the budget, and the test predictions averaged (a committee,
    as TorchANI's own ANI models are)."""
    if members > 1:
        t_start = time.perf_counter()
        outs = []
        for k in range(members):
            left = budget - (time.perf_counter() - t_start)
            outs.append(torchani_loop(parts, left / (members - k), seed + k))
        e_ref = np.array([a.get_potential_energy() for a in parts["test"]])
        f_ref = np.stack([a.get_forces() for a in parts["test"]])
        e_pred = np.mean([o.pop("_energy") for o in outs], axis=0)
        f_pred = np.mean([o.pop("_forces") for o in outs], axis=0)
        return {
            "energy_mae_meV": 1e3 * _mae(e_pred, e_ref),
            "force_mae_meV_A": 1e3 * _mae(f_pred, f_ref),
            "epochs": sum(o["epochs"] for o in outs),
            "structures_per_s": statistics.mean(o["structures_per_s"] for o in outs),
            "wall_s": time.perf_counter() - t_start,
            "members": members,
        }
    import torchani
    from torchani.nn import ANINetworks, AtomicNetwork

    t_start = time.perf_counter()
    torch.manual_seed(seed)
    dt = torch.float32
    aev = torchani.aev.AEVComputer.like_1x(num_species=4).to(dt)
    n_feat = aev.out_dim

    def net(sym):
        return AtomicNetwork([n_feat, *ANI_LAYERS[sym], 1], torch.nn.CELU(0.1), bias=True)

    nets = ANINetworks({s: net(s) for s in SPECIES}).to(dt)
    index = {z: k for k, z in enumerate((1, 6, 7, 8))}

    def tensors(frames):
        sp = torch.tensor([[index[z] for z in a.numbers] for a in frames])
        xyz = torch.tensor(np.stack([a.positions for a in frames]), dtype=dt)
        e = np.array([a.get_potential_energy() for a in frames])
        f = torch.tensor(np.stack([a.get_forces() for a in frames]), dtype=dt)
        return sp, xyz, e, f

    tr, va, te = (tensors(parts[k]) for k in ("train", "validation", "test"))
    # per-element self energies by least squares (TorchANI's EnergyShifter)
    counts = np.stack([np.bincount(s.numpy(), minlength=4) for s in tr[0]]).astype(float)
    self_e, *_ = np.linalg.lstsq(counts, tr[2], rcond=None)

    def shifted(t):
        c = np.stack([np.bincount(s.numpy(), minlength=4) for s in t[0]]).astype(float)
        return torch.tensor(t[2] - c @ self_e, dtype=dt), c @ self_e

    (e_tr, _), (e_va, _), (e_te, base_te) = shifted(tr), shifted(va), shifted(te)
    decay = (1e-4, 1e-5, 1e-6, 0.0)  # per linear layer, as TorchANI's training example
    groups: list[dict] = [{"params": [], "weight_decay": d} for d in decay]
    for atomic in nets.atomics.values() if hasattr(nets, "atomics") else nets.children():
        linears = [m for m in atomic.modules() if isinstance(m, torch.nn.Linear)]
        for k, lin in enumerate(linears):
            groups[min(k, 3)]["params"].extend(lin.parameters())
    opt = torch.optim.AdamW(groups, lr=1e-3)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=25, threshold=0)
    n_atoms = tr[0].shape[1]

    def loss_of(sp, xyz, e, f, create_graph):
        xyz = xyz.clone().requires_grad_(True)
        pred = nets(sp, aev(sp, xyz))
        (g,) = torch.autograd.grad(pred.sum(), xyz, create_graph=create_graph)
        e_loss = (((pred - e) ** 2) / n_atoms**0.5).mean()
        f_loss = (((-g - f) ** 2).sum(dim=(1, 2)) / n_atoms).mean()
        return e_loss + 0.1 * f_loss, pred.detach(), -g.detach()

    gen = torch.Generator().manual_seed(seed)
    best, best_state = float("inf"), None
    steps, step_time, epochs = 0, 0.0, 0
    while time.perf_counter() - t_start < budget:
        t0 = time.perf_counter()
        for idx in torch.split(torch.randperm(len(e_tr), generator=gen), BATCH):
            opt.zero_grad()
            loss, _, _ = loss_of(tr[0][idx], tr[1][idx], e_tr[idx], tr[3][idx], True)
            loss.backward()
            opt.step()
            steps += len(idx)
            if time.perf_counter() - t_start >= budget:
                break
        epochs += 1
        val, _, _ = loss_of(va[0], va[1], e_va, va[3], False)
        val = float(val.detach())
        step_time += time.perf_counter() - t0  # training and validation, as atompipe's epochs
        sched.step(val)
        if val < best:
            best = val
            best_state = {k: v.detach().clone() for k, v in nets.state_dict().items()}
    nets.load_state_dict(best_state)
    _, e_pred, f_pred = loss_of(te[0], te[1], e_te, te[3], False)
    e_ref = np.array([a.get_potential_energy() for a in parts["test"]])
    f_ref = np.stack([a.get_forces() for a in parts["test"]])
    return {
        "energy_mae_meV": 1e3 * _mae(e_pred.double().numpy() + base_te, e_ref),
        "force_mae_meV_A": 1e3 * _mae(f_pred.double().numpy(), f_ref),
        "epochs": epochs,
        "structures_per_s": steps / step_time,
        "wall_s": time.perf_counter() - t_start,
        "_energy": e_pred.double().numpy() + base_te,
        "_forces": f_pred.double().numpy(),
    }


# -- atompipe ------------------------------------------------------------------------------------
def atompipe_fit(
    parts: dict, budget: float, settings: dict | None = None, members: int = 1
) -> dict:
    """Train atompipe's NeuralNetwork for ``budget`` s (all preparation included); ``members``
    > 1 trains a committee (``ensemble``) within the same budget and averages it."""
    from atomistic.data import Dataset
    from atomistic.features import AEV
    from atomistic.features.scaling import Scaler
    from atomistic.metrics import evaluate
    from atomistic.models import AtomicData, NeuralNetwork, TrainingConfig

    t_start = time.perf_counter()
    settings = {**ATOMPIPE, **(settings or {})}
    f = AEV.like_ani1x()
    ds = {k: Dataset.from_atoms(v, require_energy=True) for k, v in parts.items()}
    d = ds["train"]
    X = f.featurize_arrays(d.numbers, d.positions, d.cell, d.pbc, d.offsets)
    scaling = settings.pop("scaler", {})
    scaler = None if scaling is None else Scaler(**scaling).fit(X, d.numbers)
    data = {k: AtomicData(v, None, f, scaler) for k, v in ds.items()}
    training = {**ATOMPIPE_TRAINING, **settings.pop("training", {})}
    spent = time.perf_counter() - t_start
    training["max_time"] = budget - spent
    layers = {s: ANI_LAYERS[s] for s in d.elements}
    model = NeuralNetwork(layers, training=TrainingConfig(**training), ensemble=members, **settings)
    model.fit(data["train"], data["validation"])
    n_train = d.n_structures
    out = model.predict(data["test"], forces=True)
    errors = evaluate(ds["test"], out)
    hs = model.histories_
    return {
        **(_calibration(ds["test"], out) if members > 1 else {}),
        "energy_mae_meV": 1e3 * errors["energy_mae"],
        "force_mae_meV_A": 1e3 * errors["force_mae"],
        "epochs": sum(h.epochs_completed for h in hs),
        "best_epoch": hs[0].best_epoch,
        "structures_per_s": statistics.mean(
            n_train * h.epochs_completed / sum(h.metrics["epoch_time"]) for h in hs
        ),
        "wall_s": time.perf_counter() - t_start,
        "members": members,
    }


def _calibration(test, out: dict) -> dict:
    """How well a committee's spread tells the size of its errors on ``test``: Spearman
    correlation of the std with the absolute error, and the fraction of errors within 1, 2, 3
    standard deviations (forces per Cartesian component, energies per structure)."""
    from scipy.stats import spearmanr

    err = np.abs(out["forces"] - test.forces).ravel()
    std = out["forces_std"].ravel()
    e_err = np.abs(out["energy"] - test.energy)
    e_std = out["energy_std"]
    return {
        "force_std_error_spearman": float(spearmanr(std, err).statistic),
        **{f"force_within_{k}sigma": float(np.mean(err <= k * std)) for k in (1, 2, 3)},
        "energy_std_error_spearman": float(spearmanr(e_std, e_err).statistic),
        **{f"energy_within_{k}sigma": float(np.mean(e_err <= k * e_std)) for k in (1, 2, 3)},
    }


def _summary(values: list[float]) -> tuple[float, float]:
    return statistics.median(values), (max(values) - min(values)) if len(values) > 1 else 0.0


def run(
    quick: bool = False,
    device: str = "cpu",
    budget: float | None = None,
    molecules=("ethanol", "malonaldehyde"),
    repeats: int = 1,
    threads: int = 2,
    committee: int = 0,
    members: int = MEMBERS,
    torchani_members: int = 1,
) -> dict:
    """Both sides on each molecule, ``repeats`` times; medians, spreads and ratios. atompipe
    spends the budget on a committee of ``members`` networks, the TorchANI loop on
    ``torchani_members`` (1: its plain single network). ``committee`` > 0 adds a separate
    calibration run of a committee of that size when atompipe trains a single network."""
    if device != "cpu":
        raise SystemExit("nn_accuracy compares CPU training at equal threads; --device cpu only")
    if quick:  # the suite's smoke run: one molecule, a few seconds a side
        budget, molecules, committee = budget or 10.0, ("ethanol",), 0
    budget = budget if budget is not None else 300.0
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run(budget, molecules, repeats, threads, committee, members, torchani_members)
    finally:
        torch.set_num_threads(previous)


_CALIBRATION = (
    "force_std_error_spearman",
    "force_within_1sigma",
    "force_within_2sigma",
    "force_within_3sigma",
    "energy_std_error_spearman",
    "energy_within_1sigma",
    "energy_within_2sigma",
    "energy_within_3sigma",
)


def _run(
    budget: float,
    molecules,
    repeats: int,
    threads: int,
    committee: int,
    members: int,
    torchani_members: int,
) -> dict:
    rows, raw, calibration = [], {}, []
    for name in molecules:
        parts = split_frames(name)
        runs: dict[str, list[dict]] = {"atompipe": [], "torchani": []}
        for _ in range(repeats):
            t = torchani_loop(parts, budget, members=torchani_members)
            runs["torchani"].append({k: v for k, v in t.items() if not k.startswith("_")})
            runs["atompipe"].append(atompipe_fit(parts, budget, members=members))
        raw[name] = runs
        med = {
            side: {k: _summary([r[k] for r in rs]) for k in rs[0] if k != "best_epoch"}
            for side, rs in runs.items()
        }
        a, t = med["atompipe"], med["torchani"]
        rows.append(
            (
                name,
                f"{a['energy_mae_meV'][0]:.2f} ± {a['energy_mae_meV'][1]:.2f}",
                f"{t['energy_mae_meV'][0]:.2f} ± {t['energy_mae_meV'][1]:.2f}",
                a["energy_mae_meV"][0] / t["energy_mae_meV"][0],
                f"{a['force_mae_meV_A'][0]:.1f} ± {a['force_mae_meV_A'][1]:.1f}",
                f"{t['force_mae_meV_A'][0]:.1f} ± {t['force_mae_meV_A'][1]:.1f}",
                a["force_mae_meV_A"][0] / t["force_mae_meV_A"][0],
                f"{a['structures_per_s'][0]:.0f}",
                f"{t['structures_per_s'][0]:.0f}",
                a["structures_per_s"][0] / t["structures_per_s"][0],
            )
        )
        if members > 1:
            calibration.append((name, *(f"{a[k][0]:.2f} ± {a[k][1]:.2f}" for k in _CALIBRATION)))
    sides = f"atompipe: {_networks(members)}, TorchANI loop: {_networks(torchani_members)}"
    print(
        table(
            f"Force-trained NN ({sides}), test errors after {budget:.0f} s each ({threads}"
            f" threads, float32, median of {repeats}, ± = max - min)",
            [
                "molecule",
                "E MAE atompipe (meV)",
                "E MAE TorchANI (meV)",
                "E ratio",
                "F MAE atompipe (meV/Å)",
                "F MAE TorchANI (meV/Å)",
                "F ratio",
                "atompipe structures/s",
                "TorchANI structures/s",
                "speed ratio",
            ],
            rows,
            "ratios = atompipe / TorchANI loop: < 1 is better for errors, > 1 faster for speed",
        ),
        flush=True,
    )
    result = {
        "budget_s": budget,
        "threads": threads,
        "repeats": repeats,
        "members": members,
        "torchani_members": torchani_members,
        "runs": raw,
        "table": rows,
    }
    if calibration:
        result["calibration"] = calibration
        print(
            table(
                f"atompipe's committee of {members}: std against error on the test split"
                f" (median of {repeats}, ± = max - min)",
                ["molecule", "F Spearman", "F 1σ", "F 2σ", "F 3σ"]
                + ["E Spearman", "E 1σ", "E 2σ", "E 3σ"],
                calibration,
                "fractions of errors within k sigma; Gaussian errors: 0.683 / 0.954 / 0.997",
            ),
            flush=True,
        )
    elif committee:
        cal = atompipe_fit(split_frames(molecules[0]), budget, members=committee)
        result["committee"] = cal
        print(
            table(
                f"Committee of {committee} on {molecules[0]} ({budget:.0f} s in all): std "
                "against error on the test split",
                ["quantity", "value"],
                [(k, f"{v:.3f}") for k, v in cal.items()],
                "Gaussian errors would give 0.683 / 0.954 / 0.997 within 1 / 2 / 3 sigma",
            ),
            flush=True,
        )
    return result


def _networks(n: int) -> str:
    return "one network" if n == 1 else f"a committee of {n}"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.nn_accuracy", description=__doc__)
    p.add_argument("--budget", type=float, default=300.0, help="seconds per side and molecule")
    p.add_argument("--molecules", nargs="+", default=["ethanol", "malonaldehyde"])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--members",
        type=int,
        default=MEMBERS,
        help="atompipe trains a committee of this many networks within the budget (1: one)",
    )
    p.add_argument(
        "--torchani-members",
        type=int,
        default=1,
        help="the TorchANI loop trains this many networks within the budget (1: its plain loop)",
    )
    p.add_argument(
        "--committee",
        type=int,
        default=0,
        help="with --members 1: a separate calibration run of a committee of this size",
    )
    p.add_argument("--out", default=str(RESULTS / "nn_accuracy.json"))
    args = p.parse_args(argv)
    result = run(
        False,
        "cpu",
        args.budget,
        args.molecules,
        args.repeats,
        args.threads,
        args.committee,
        args.members,
        args.torchani_members,
    )
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
