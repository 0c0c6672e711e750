"""Featurization speed: atompipe against DScribe (ACSF) and TorchANI (AEVComputer).

Run ``python -m benchmarks.featurize [--quick]``. One thread everywhere (torch.set_num_threads(1),
DScribe n_jobs=1), float64 everywhere. Prints atoms per second and ratios (ours / theirs) for
features alone and for features with gradients:

* ours: forward, then backward of a feature-weighted sum (sum_i w . X_i), which is what forces
  and stress need (a vector-Jacobian product);
* DScribe: ``ACSF.derivatives()`` (the full Jacobian dX/dR, numerical; measured on a few frames);
* TorchANI: backward of the sum of the AEV.

Data: data/cu_emt.extxyz and data/ethanol_gfn2.extxyz when present, otherwise rattled frames built
here (32-atom fcc Cu, ethanol).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from atomistic.features import AEV, Gaussian
from atomistic.features.aev import ANI1X

os.environ.setdefault("TORCHANI_NO_WARN_EXTENSIONS", "1")
DATA = Path(__file__).resolve().parents[1] / "data"
RC = 6.5
ETAS = list(np.logspace(np.log10(0.05), np.log10(5.0), 4))
ANG = {"etas": [0.005], "zetas": [1, 4], "gammas": [1.0, -1.0]}


def load(name: str, n: int):
    import ase.io
    from ase.build import bulk, molecule

    path = DATA / name
    if path.exists():
        frames = ase.io.read(path, index=":")
        source = str(path.relative_to(DATA.parent))
    else:
        base = (bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2) if name.startswith("cu")
                else molecule("CH3CH2OH"))
        frames = []
        for k in range(200):
            atoms = base.copy()
            atoms.rattle(0.1 if name.startswith("cu") else 0.05, seed=k)
            frames.append(atoms)
        source = f"generated ({len(base)} atoms x 200 rattled frames)"
    return frames[:n], source


def best_of(fn, repeat: int) -> float:
    fn()  # warm up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def flat(frames):
    offsets = np.cumsum([0] + [len(a) for a in frames])
    return (np.concatenate([a.numbers for a in frames]),
            np.concatenate([a.positions for a in frames]),
            np.stack([a.cell.array for a in frames]), np.stack([a.pbc for a in frames]), offsets)


def ours_features(f, frames):
    args = flat(frames)
    return lambda: f.featurize_arrays(*args)


def ours_gradients(f, frames):
    numbers, positions, cells, pbcs, offsets = flat(frames)
    weights = torch.randn(f.n_features, dtype=torch.float64)
    batch = torch.from_numpy(np.repeat(np.arange(len(frames)), np.diff(offsets)))

    def run():
        nl = f.neighbors(numbers, positions, cells, pbcs, offsets)
        pos = torch.tensor(positions, requires_grad=True)
        x = f(torch.from_numpy(numbers), pos, torch.from_numpy(cells), batch, nl)
        (x * weights).sum().backward()
        return pos.grad

    return run


def dscribe_acsf(elements, periodic, angular_type):
    from dscribe.descriptors import ACSF

    g2 = [[e / RC**2, 0.0] for e in ETAS]
    ang = [[e / RC**2, z, g] for e in ANG["etas"] for z in ANG["zetas"] for g in ANG["gammas"]]
    key = "g4_params" if angular_type == "G3" else "g5_params"
    return ACSF(r_cut=RC, species=elements, periodic=periodic, g2_params=g2, **{key: ang})


def torchani_runs(frames, elements, grad: bool):
    import torchani

    computer = torchani.aev.AEVComputer.like_1x(num_species=len(elements)).double()
    index = {z: k for k, z in enumerate(elements)}
    periodic = bool(frames[0].pbc.any())
    same_cell = all(np.array_equal(a.cell.array, frames[0].cell.array) for a in frames)
    same_size = all(len(a) == len(frames[0]) for a in frames)
    if same_size and (same_cell or not periodic):
        groups = [frames]
    else:
        groups = [[a] for a in frames]
    prepared = []
    for g in groups:
        species = torch.tensor([[index[z] for z in a.numbers] for a in g])
        coords = torch.tensor(np.stack([a.positions for a in g]))
        cell = torch.tensor(g[0].cell.array) if periodic else None
        pbc = torch.tensor(g[0].pbc) if periodic else None
        prepared.append((species, coords, cell, pbc))

    def run():
        for species, coords, cell, pbc in prepared:
            c = coords.clone().requires_grad_(grad)
            aev = computer(species, c, cell=cell, pbc=pbc)
            if grad:
                aev.sum().backward()

    return run


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a small subset (seconds)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    n_frames, n_deriv, repeat = (20, 2, 1) if args.quick else (100, 4, 3)
    rows = []

    for data, label in (("cu_emt.extxyz", "Cu"), ("ethanol_gfn2.extxyz", "ethanol")):
        frames, source = load(data, n_frames)
        n_atoms = sum(len(a) for a in frames)
        symbols = sorted(set(frames[0].get_chemical_symbols()),
                         key=lambda s: frames[0].numbers[frames[0].get_chemical_symbols().index(s)])
        periodic = bool(frames[0].pbc.any())
        print(f"\n{label}: {len(frames)} frames, {n_atoms} atoms, from {source}")
        for angular_type in ("G3", "G4"):
            f = Gaussian(cutoff=RC, angular_type=angular_type, elements=symbols,
                         custom={"G2": {"etas": ETAS}, angular_type: ANG})
            t_ours = best_of(ours_features(f, frames), repeat)
            t_ours_g = best_of(ours_gradients(f, frames), repeat)
            acsf = dscribe_acsf(list(f.elements), periodic, angular_type)
            t_ds = best_of(lambda acsf=acsf, frames=frames: acsf.create(frames, n_jobs=1), repeat)
            sub = frames[:n_deriv]
            n_sub = sum(len(a) for a in sub)
            t_ds_g = best_of(
                lambda acsf=acsf, sub=sub: acsf.derivatives(sub, n_jobs=1, attach=True), 1)
            t_ds_g *= n_atoms / n_sub
            rows.append((label, f"G2+{angular_type} vs DScribe", n_atoms, t_ours, t_ds,
                         t_ours_g, t_ds_g))
        zs = sorted(set(np.concatenate([a.numbers for a in frames])))
        f = AEV(elements=zs, **ANI1X) if label == "Cu" else AEV.like_ani1x()
        elements = [int(z) for z in (zs if label == "Cu" else (1, 6, 7, 8))]
        t_ours = best_of(ours_features(f, frames), repeat)
        t_ours_g = best_of(ours_gradients(f, frames), repeat)
        t_ani = best_of(torchani_runs(frames, elements, grad=False), repeat)
        t_ani_g = best_of(torchani_runs(frames, elements, grad=True), repeat)
        rows.append((label, "AEV ANI-1x vs TorchANI", n_atoms, t_ours, t_ani, t_ours_g, t_ani_g))

    print(f"\n{'data':8} {'featurizer':24} {'ours atoms/s':>13} {'theirs':>10} {'ratio':>7} | "
          f"{'ours+grad':>10} {'theirs+grad':>11} {'ratio':>7} | {'grad/feat':>9}")
    for label, name, n, t_o, t_t, t_og, t_tg in rows:
        print(f"{label:8} {name:24} {n / t_o:13.0f} {n / t_t:10.0f} {t_t / t_o:7.2f} | "
              f"{n / t_og:10.0f} {n / t_tg:11.0f} {t_tg / t_og:7.2f} | {t_og / t_o:9.2f}")
    print("\nratio = their time / our time (>1: atompipe faster); grad/feat = our cost of "
          "features with gradients over features alone. DScribe derivatives are the full Jacobian.")


if __name__ == "__main__":
    main()
