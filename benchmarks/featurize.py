"""Featurization speed: atompipe against DScribe (ACSF) and TorchANI (AEVComputer).

Run ``python -m benchmarks.featurize [--quick] [--device cuda]``. One thread everywhere
(torch.set_num_threads(1), DScribe n_jobs=1), float64 everywhere. Prints atoms per second and
ratios (their time / our time) for features alone and for features with gradients:

* features alone: ours is ``featurize_arrays`` (the pipeline's path: neighbour search and the
  fused CPU kernels of atomistic/features/fused.py, compiled once before timing), DScribe's
  ``ACSF.create``, TorchANI's ``AEVComputer`` forward;
* ours with gradients: the torch forward, then backward of a feature-weighted sum
  (sum_i w . X_i), which is what forces and stress need (a vector-Jacobian product);
* DScribe: ``ACSF.derivatives()`` (the full Jacobian dX/dR, numerical; measured on a few frames);
* TorchANI: backward of the sum of the AEV.

With ``--device cuda`` our featurizers and TorchANI run on the GPU (neighbour lists on the CPU
for ours, as in the pipeline); DScribe is CPU-only and left out. GPU figures are absolute times.

Data: the first frames of data/cu_emt.extxyz (32-atom periodic Cu) and data/ethanol_gfn2.extxyz,
and dense rattled fcc Cu supercells of 108 and 500 atoms (features only: DScribe's numerical
Jacobian of a 500-atom cell takes minutes).

Timing: ours and the peer's call alternate, five times each after one untimed call, so that a
change in the machine's load hits both alike; each figure is the median, and ``spread`` is the
largest over the smallest of the five times of one call.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from atomistic.features import AEV, Gaussian
from atomistic.features.aev import ANI1X
from benchmarks.common import best_of, cu_supercell, flat, load_frames, module_main, sync, table

RC = 6.5
ETAS = list(np.logspace(np.log10(0.05), np.log10(5.0), 4))
ANG = {"etas": [0.005], "zetas": [1, 4], "gammas": [1.0, -1.0]}


def ours_features(f, frames, device: str = "cpu"):
    """Features alone: neighbour lists + forward (no autograd graph)."""
    args = flat(frames)
    if device == "cpu":
        return lambda: f.featurize_arrays(*args)
    numbers, positions, cells, pbcs, offsets = args
    f = f.to(device)
    z, cell_t = torch.from_numpy(numbers).to(device), torch.from_numpy(cells).to(device)
    pos = torch.from_numpy(positions).to(device)
    batch = torch.from_numpy(np.repeat(np.arange(len(frames)), np.diff(offsets))).to(device)

    def run():
        nl = f.neighbors(numbers, positions, cells, pbcs, offsets)
        with torch.no_grad():
            x = f(z, pos, cell_t, batch, nl)
        sync(device)
        return x

    return run


def ours_gradients(f, frames, device: str = "cpu"):
    """Features and the gradient of a weighted sum of them with respect to positions."""
    numbers, positions, cells, pbcs, offsets = flat(frames)
    f = f.to(device)
    weights = torch.randn(f.n_features, dtype=torch.float64, device=device)
    batch = torch.from_numpy(np.repeat(np.arange(len(frames)), np.diff(offsets))).to(device)
    z, cell_t = torch.from_numpy(numbers).to(device), torch.from_numpy(cells).to(device)

    def run():
        nl = f.neighbors(numbers, positions, cells, pbcs, offsets)
        pos = torch.tensor(positions, requires_grad=True, device=device)
        x = f(z, pos, cell_t, batch, nl)
        (x * weights).sum().backward()
        sync(device)
        return pos.grad

    return run


def dscribe_acsf(elements, periodic, angular_type):
    from dscribe.descriptors import ACSF

    g2 = [[e / RC**2, 0.0] for e in ETAS]
    ang = [[e / RC**2, z, g] for e in ANG["etas"] for z in ANG["zetas"] for g in ANG["gammas"]]
    key = "g4_params" if angular_type == "G3" else "g5_params"
    return ACSF(r_cut=RC, species=elements, periodic=periodic, g2_params=g2, **{key: ang})


def torchani_runs(frames, elements, grad: bool, device: str = "cpu"):
    import torchani

    computer = torchani.aev.AEVComputer.like_1x(num_species=len(elements)).double().to(device)
    index = {z: k for k, z in enumerate(elements)}
    periodic = bool(frames[0].pbc.any())
    same_size = all(len(a) == len(frames[0]) for a in frames)
    # TorchANI 2.9 batches periodic frames wrongly (3 Cu frames sharing a cell: its AEVs sum to
    # 283.6 against 850.8 frame by frame, which agrees with ours): periodic frames go one a call
    groups = [frames] if same_size and not periodic else [[a] for a in frames]
    prepared = []
    for g in groups:
        species = torch.tensor([[index[z] for z in a.numbers] for a in g], device=device)
        coords = torch.tensor(np.stack([a.positions for a in g]), device=device)
        cell = torch.tensor(g[0].cell.array, device=device) if periodic else None
        pbc = torch.tensor(g[0].pbc, device=device) if periodic else None
        prepared.append((species, coords, cell, pbc))

    def run():
        for species, coords, cell, pbc in prepared:
            c = coords.clone().requires_grad_(grad)
            aev = computer(species, c, cell=cell, pbc=pbc)
            if grad:
                aev.sum().backward()
        sync(device)

    return run


def _symbols(frames) -> list[str]:
    zs = sorted(set(np.concatenate([a.numbers for a in frames]).tolist()))
    from ase.data import chemical_symbols

    return [chemical_symbols[z] for z in zs]


def interleaved(
    fns: dict[str, Callable[[], object]], repeat: int
) -> dict[str, tuple[float, float]]:
    """(median seconds, spread = max/min) of each callable: one untimed call each, then
    ``repeat`` rounds in which each is called once in turn."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {n: (float(np.median(t)), max(t) / min(t)) for n, t in times.items()}


def _datasets(quick: bool) -> list[tuple[str, list, bool]]:
    """(label, frames, with gradients) of every data set."""
    if quick:
        sizes = {"Cu": 20, "ethanol": 60, "Cu 108": 2, "Cu 500": 1}
    else:
        sizes = {"Cu": 100, "ethanol": 300, "Cu 108": 8, "Cu 500": 2}
    return [
        ("Cu", load_frames("cu", sizes["Cu"]), True),
        ("Cu 108", [cu_supercell(3, seed=s) for s in range(sizes["Cu 108"])], False),
        ("Cu 500", [cu_supercell(5, seed=s) for s in range(sizes["Cu 500"])], False),
        ("ethanol", load_frames("ethanol", sizes["ethanol"]), True),
    ]


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Features and features+gradients per second, ours against DScribe and TorchANI."""
    n_deriv, repeat = (1, 3) if quick else (4, 5)
    rows = []
    for label, frames, grads in _datasets(quick):
        n_atoms = sum(len(a) for a in frames)
        symbols = _symbols(frames)
        periodic = bool(frames[0].pbc.any())
        for angular_type in ("G3", "G4"):
            f = Gaussian(
                cutoff=RC,
                angular_type=angular_type,
                elements=symbols,
                custom={"G2": {"etas": ETAS}, angular_type: ANG},
            )
            fns = {"ours": ours_features(f, frames, device)}
            if device == "cpu":
                acsf = dscribe_acsf(list(f.elements), periodic, angular_type)
                fns["peer"] = lambda acsf=acsf, fr=frames: acsf.create(fr, n_jobs=1)
            timed = interleaved(fns, repeat)
            (t_ours, s_ours), (t_ds, s_ds) = timed["ours"], timed.get("peer", (np.nan, np.nan))
            t_ours_g = t_ds_g = float("nan")
            if grads:
                t_ours_g = best_of(ours_gradients(f, frames, device), repeat)
            if device == "cpu" and grads:
                sub = frames[:n_deriv]
                t_ds_g = best_of(
                    lambda acsf=acsf, sub=sub: acsf.derivatives(sub, n_jobs=1, attach=True),
                    1,
                    warmup=False,
                )
                t_ds_g *= n_atoms / sum(len(a) for a in sub)
            rows.append(
                _row(
                    label,
                    f"G2+{angular_type}",
                    "DScribe ACSF",
                    n_atoms,
                    t_ours,
                    t_ds,
                    t_ours_g,
                    t_ds_g,
                    s_ours,
                    s_ds,
                )
            )
        zs = sorted(set(np.concatenate([a.numbers for a in frames]).tolist()))
        f = AEV(elements=zs, **ANI1X) if periodic else AEV.like_ani1x()
        elements = [int(z) for z in (zs if periodic else (1, 6, 7, 8))]
        timed = interleaved(
            {
                "ours": ours_features(f, frames, device),
                "peer": torchani_runs(frames, elements, False, device),
            },
            repeat,
        )
        (t_ours, s_ours), (t_ani, s_ani) = timed["ours"], timed["peer"]
        t_ours_g = t_ani_g = float("nan")
        if grads:
            t_ours_g = best_of(ours_gradients(f, frames, device), repeat)
            t_ani_g = best_of(torchani_runs(frames, elements, True, device), repeat)
        rows.append(
            _row(
                label,
                "AEV ANI-1x",
                "TorchANI AEVComputer",
                n_atoms,
                t_ours,
                t_ani,
                t_ours_g,
                t_ani_g,
                s_ours,
                s_ani,
            )
        )

    printed = [
        (
            r["data"],
            r["featurizer"],
            r["peer"],
            r["ours_atoms_per_s"],
            r["peer_atoms_per_s"],
            r["ratio"],
            r["ours_spread"],
            r["peer_spread"],
            r["ours_grad_atoms_per_s"],
            r["peer_grad_atoms_per_s"],
            r["ratio_grad"],
            r["grad_over_features"],
        )
        for r in rows
    ]
    print(
        table(
            f"featurize ({device}): atoms/s (medians of {repeat} interleaved calls), ratio = "
            "their time / our time (>1: atompipe faster)",
            [
                "data",
                "features",
                "peer",
                "ours/s",
                "peer/s",
                "ratio",
                "spread",
                "peer spread",
                "ours+grad/s",
                "peer+grad/s",
                "ratio",
                "grad/feat",
            ],
            printed,
            "DScribe gradients are its full numerical Jacobian (derivatives()); ours and "
            "TorchANI's are one backward pass.\n"
            "grad/feat: our cost of features+gradient over features alone. spread: max/min of "
            f"the {repeat} times of one call. Cu 108 / Cu 500: rattled fcc supercells.",
        ),
        flush=True,
    )
    atoms = {row["data"]: row["atoms"] for row in rows}
    return {"device": device, "atoms": atoms, "repeat": repeat, "rows": rows}


def _row(data, features, peer, n, t_o, t_p, t_og, t_pg, s_o, s_p) -> dict:
    return {
        "ours_spread": s_o,
        "peer_spread": s_p,
        "data": data,
        "featurizer": features,
        "peer": peer,
        "atoms": n,
        "ours_s": t_o,
        "peer_s": t_p,
        "ours_grad_s": t_og,
        "peer_grad_s": t_pg,
        "ours_atoms_per_s": n / t_o,
        "peer_atoms_per_s": n / t_p,
        "ratio": t_p / t_o,
        "ours_grad_atoms_per_s": n / t_og,
        "peer_grad_atoms_per_s": n / t_pg,
        "ratio_grad": t_pg / t_og,
        "grad_over_features": t_og / t_o,
    }


def main(argv=None) -> None:
    module_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
