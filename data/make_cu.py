"""Generate ``data/cu_emt.extxyz``: periodic fcc Cu (32 atoms) from Langevin MD with ASE's EMT.

Protocol (defaults reproduce the shipped file exactly):

* cell: ``bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)`` (2x2x2 conventional cubic supercell,
  32 atoms, pbc)
* potential: ASE EMT (built-in Cu parameters)
* dynamics: Langevin (``fixcm=False`` + ``FixCom`` constraint), timestep 2 fs, friction 0.02 / fs,
  Maxwell-Boltzmann initial velocities at 300 K (centre-of-mass motion removed)
* equilibration: 500 steps at 300 K (not written)
* production: ``--frames`` frames, one every 10 steps; the thermostat target is raised in 8 equal
  steps 300, 400, ..., 1000 K (frame ``i`` uses level ``floor(8 i / frames)``)
* seed: one ``numpy.random.default_rng(seed)`` drives the initial velocities and the Langevin noise

Each written frame carries ``info["T_target"]`` (K) and ``info["md_step"]``, and a
SinglePointCalculator with the EMT energy (eV) and forces (eV/Å). Positions are rounded to the
8 decimals that the extxyz writer keeps *before* labelling, so the stored labels belong exactly to
the stored geometry (the script asserts this by reading the file back).

Run: ``python data/make_cu.py`` (from the repository root).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixCom
from ase.io import read, write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary

try:  # ase >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ase: same distribution under the older name
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    def thermalize_momenta(atoms, temperature_K, *, rng=None):
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "cu_emt.extxyz"
DEFAULT_FRAMES = 500
DEFAULT_SEED = 20240601

TIMESTEP_FS = 2.0
FRICTION_PER_FS = 0.02
EQUIL_STEPS = 500
SAMPLE_EVERY = 10
T_START, T_END, N_LEVELS = 300.0, 1000.0, 8
DECIMALS = 8  # what ase's extxyz writer keeps for positions (format %16.8f)


def round_like_writer(x: np.ndarray) -> np.ndarray:
    """Round to the decimal string the extxyz writer emits, then parse back (exact round trip)."""
    return np.array([float(f"{v:.{DECIMALS}f}") for v in np.asarray(x, float).ravel()]).reshape(
        np.shape(x)
    )


def t_target(i: int, n: int) -> float:
    level = min(N_LEVELS - 1, (N_LEVELS * i) // n)
    return T_START + (T_END - T_START) * level / (N_LEVELS - 1)


def min_distance(atoms) -> float:
    d = atoms.get_all_distances(mic=atoms.pbc.any())
    return float(d[np.triu_indices(len(atoms), 1)].min())


def label(frame, calc) -> None:
    """Attach EMT energy/forces of exactly this (rounded) geometry as a SinglePointCalculator."""
    work = frame.copy()
    work.calc = calc
    energy = float(work.get_potential_energy())
    forces = np.array(work.get_forces())
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)


def generate(n_frames: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.calc = EMT()
    thermalize_momenta(atoms, T_START, rng=rng)
    Stationary(atoms)
    atoms.set_constraint(FixCom())  # no centre-of-mass drift (instead of the deprecated fixcm=True)
    dyn = Langevin(
        atoms,
        timestep=TIMESTEP_FS * units.fs,
        temperature_K=T_START,
        friction=FRICTION_PER_FS / units.fs,
        fixcm=False,
        rng=rng,
    )
    dyn.run(EQUIL_STEPS)

    label_calc = EMT()
    frames = []
    step = EQUIL_STEPS
    for i in range(n_frames):
        temp = t_target(i, n_frames)
        dyn.set_temperature(temperature_K=temp)
        dyn.run(SAMPLE_EVERY)
        step += SAMPLE_EVERY
        frame = atoms.copy()
        frame.calc = None
        frame.set_constraint()
        frame.arrays.pop("momenta", None)  # velocities are not stored
        frame.positions = round_like_writer(frame.positions)
        frame.info = {"T_target": float(temp), "md_step": int(step)}
        label(frame, label_calc)
        frames.append(frame)
    return frames


def check(frames, path: Path) -> dict:
    energies = np.array([f.get_potential_energy() for f in frames])
    forces = [f.get_forces() for f in frames]
    n_atoms = len(frames[0])
    for f, F in zip(frames, forces, strict=True):
        assert F.shape == (len(f), 3)
        assert np.all(np.isfinite(F))
        assert min_distance(f) > 0.5
    assert np.all(np.isfinite(energies))

    back = read(path, ":")
    assert len(back) == len(frames)
    for a, b in zip(frames, back, strict=True):
        assert np.array_equal(a.positions, b.positions), "positions do not round-trip"
        assert np.array_equal(a.cell.array, b.cell.array)
        assert abs(b.get_potential_energy() - a.get_potential_energy()) < 1e-9
        assert np.allclose(b.get_forces(), a.get_forces(), atol=1e-7, rtol=0)
    return {
        "frames": len(frames),
        "atoms": n_atoms,
        "e_min": energies.min(),
        "e_max": energies.max(),
        "e_mean": energies.mean(),
        "max_abs_force": max(np.abs(F).max() for F in forces),
        "min_dist": min(min_distance(f) for f in frames),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output extxyz path")
    p.add_argument("--frames", type=int, default=DEFAULT_FRAMES, help="number of frames to write")
    p.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="RNG seed (velocities and Langevin noise)"
    )
    args = p.parse_args(argv)

    t0 = time.perf_counter()
    frames = generate(args.frames, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write(args.out, frames, format="extxyz")
    s = check(frames, args.out)
    wall = time.perf_counter() - t0
    n = s["atoms"]
    print(f"{args.out}: {s['frames']} frames x {n} atoms, {args.out.stat().st_size / 1e6:.2f} MB")
    print(
        f"  energy [eV]: min {s['e_min']:.4f} max {s['e_max']:.4f} mean {s['e_mean']:.4f}"
        f"  (per atom: {s['e_min'] / n:.4f} / {s['e_max'] / n:.4f} / {s['e_mean'] / n:.4f})"
    )
    print(f"  max |F| component: {s['max_abs_force']:.3f} eV/A, min distance {s['min_dist']:.3f} A")
    print(f"  wall time: {wall:.1f} s")


if __name__ == "__main__":
    main()
