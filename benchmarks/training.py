"""NN training throughput: atompipe's NeuralNetwork against a plain TorchANI training loop.

Same data (ethanol, data/ethanol_gfn2.extxyz), same features (ANI-1x AEVs, 384 columns for H, C,
N, O), same per-element networks (384 -> 64 -> 64 -> 1, SiLU, biases), float64, Adam, batches
of 32 structures, one thread. Structures per second per epoch = training structures / median
epoch time (the first epoch is not counted). No validation pass in either loop.

* energies only. atompipe trains on precomputed, scaled features (its fast path). The plain loop
  is shown twice: AEVs recomputed every step (TorchANI's own training example:
  ``model = Sequential(aev_computer, networks)``) and AEVs computed once (the same work as ours).
* energies + forces (loss = energy MSE per atom + force MSE). Both compute features every step,
  with forces as -dE/dR by autograd (create_graph=True).

    python -m benchmarks.training [--quick] [--device cuda]

With ``--device cuda`` the plain TorchANI loop runs on the GPU (absolute times);
atompipe's NeuralNetwork trains on the CPU only.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from atomistic.data import Dataset
from atomistic.features import AEV
from atomistic.features.scaling import Scaler
from atomistic.models import AtomicData, NeuralNetwork, TrainingConfig
from benchmarks.common import load_frames, module_main, sync, table

HIDDEN = (64, 64)
BATCH = 32
SPECIES = (1, 6, 7, 8)  # ANI-1x element order


def _plain_loop(frames, epochs: int, forces: bool, precompute: bool, device: str) -> list[float]:
    """Epoch times (s) of a plain PyTorch loop over TorchANI's AEVComputer and networks."""
    import torchani
    from torchani.nn import ANINetworks, AtomicNetwork

    torch.manual_seed(0)
    dt = torch.float64
    aev = torchani.aev.AEVComputer.like_1x(num_species=4).to(dt).to(device)
    n_feat = aev.out_dim
    nets = (
        ANINetworks(
            {
                s: AtomicNetwork([n_feat, *HIDDEN, 1], torch.nn.SiLU(), bias=True)
                for s in ("H", "C", "N", "O")
            }
        )
        .to(dt)
        .to(device)
    )
    index = {z: k for k, z in enumerate(SPECIES)}
    species = torch.tensor([[index[z] for z in a.numbers] for a in frames], device=device)
    coords = torch.tensor(np.stack([a.positions for a in frames]), dtype=dt, device=device)
    energy = torch.tensor([a.get_potential_energy() for a in frames], dtype=dt, device=device)
    force = torch.tensor(np.stack([a.get_forces() for a in frames]), dtype=dt, device=device)
    n_atoms = species.shape[1]
    energy = energy - energy.mean()
    opt = torch.optim.Adam(nets.parameters(), lr=1e-3)
    cached = None
    if precompute:
        with torch.no_grad():
            cached = aev(species, coords)
    gen = torch.Generator().manual_seed(0)
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for idx in torch.split(torch.randperm(len(frames), generator=gen), BATCH):
            idx = idx.to(device)
            sp = species[idx]
            opt.zero_grad()
            if forces:
                xyz = coords[idx].clone().requires_grad_(True)
                e = nets(sp, aev(sp, xyz))
                (g,) = torch.autograd.grad(e.sum(), xyz, create_graph=True)
                loss = (((e - energy[idx]) / n_atoms) ** 2).mean() + ((-g - force[idx]) ** 2).mean()
            else:
                x = cached[idx] if precompute else aev(sp, coords[idx])
                e = nets(sp, x)
                loss = (((e - energy[idx]) / n_atoms) ** 2).mean()
            loss.backward()
            opt.step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def _atompipe(frames, epochs: int, forces: bool) -> list[float]:
    ds = Dataset.from_atoms(frames, require_energy=True)
    f = AEV.like_ani1x()
    cfg = TrainingConfig(epochs=epochs, batch_size=BATCH, lr=1e-3, seed=0, scheduler=None)
    if forces:
        X = f.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
        data = AtomicData(ds, None, f, Scaler().fit(X))
    else:
        X = f.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
        scaler = Scaler().fit(X)
        data = AtomicData(ds, scaler.transform(X), f, scaler)
    model = NeuralNetwork(HIDDEN, "silu", force_weight=1.0 if forces else 0.0, training=cfg)
    model.fit(data)
    return list(model.history_.metrics["epoch_time"])


def _rate(n: int, times: list[float]) -> float:
    steady = times[1:] if len(times) > 1 else times
    return n / statistics.median(steady)


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Structures per second per epoch, atompipe against a plain TorchANI loop."""
    n_e, n_f, ep_e, ep_f = (200, 64, 3, 2) if quick else (800, 200, 6, 3)
    rows = []
    for forces, n, epochs in ((False, n_e, ep_e), (True, n_f, ep_f)):
        frames = load_frames("ethanol", n)
        label = "energies + forces" if forces else "energies"
        plain = _rate(n, _plain_loop(frames, epochs, forces, False, device))
        ours = _rate(n, _atompipe(frames, epochs, forces)) if device == "cpu" else float("nan")
        rows.append(
            {
                "target": label,
                "structures": n,
                "epochs": epochs,
                "atompipe_per_s": ours,
                "torchani_loop_per_s": plain,
                "ratio": ours / plain,
                "variant": "AEV every step",
            }
        )
        if not forces:
            pre = _rate(n, _plain_loop(frames, epochs, False, True, device))
            rows.append(
                {
                    "target": label,
                    "structures": n,
                    "epochs": epochs,
                    "atompipe_per_s": ours,
                    "torchani_loop_per_s": pre,
                    "ratio": ours / pre,
                    "variant": "AEV precomputed",
                }
            )
    printed = [
        (
            r["target"],
            r["variant"],
            r["structures"],
            r["atompipe_per_s"],
            r["torchani_loop_per_s"],
            r["ratio"],
        )
        for r in rows
    ]
    print(
        table(
            f"NN training throughput, structures/s per epoch, ethanol, AEV 384 -> "
            f"{HIDDEN} -> 1 ({device})",
            ["target", "plain loop", "structures", "atompipe/s", "TorchANI loop/s", "ratio"],
            printed,
            "ratio = atompipe / plain loop (>1: atompipe faster). atompipe energies-only "
            "training uses precomputed features.",
        ),
        flush=True,
    )
    return {"device": device, "hidden": list(HIDDEN), "batch_size": BATCH, "rows": rows}


def main(argv=None) -> None:
    module_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
