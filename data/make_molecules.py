"""Generate ``data/{ethanol,malonaldehyde}_gfn2.extxyz``: GFN2-xTB-labelled MD of two molecules.

Protocol (defaults reproduce the shipped files exactly):

* ethanol: ``ase.build.molecule("CH3CH2OH")`` (C2H6O, 9 atoms)
* malonaldehyde: (Z)-3-hydroxyprop-2-enal (C3H4O2, 9 atoms, the intramolecularly H-bonded enol
  form; not in ``ase.collections.g2``), built from the planar guess ``MALONALDEHYDE_GUESS`` below
  and relaxed with GFN2-xTB (BFGS, fmax 0.01 eV/Å) before the MD
* labels: GFN2-xTB from tblite's ASE calculator, ``TBLite(method="GFN2-xTB", verbosity=0)``; it
  returns eV and eV/Å already (checked here against tblite's Hartree/Bohr interface)
* dynamics: Langevin (``fixcm=False`` + ``FixCom`` constraint), 500 K, timestep 0.5 fs, friction
  0.02 / fs, Maxwell-Boltzmann initial velocities at 500 K (centre-of-mass motion and rotation
  removed)
* equilibration: 1000 steps (0.5 ps, not written); production: ``--frames`` frames, one every
  10 steps (5 fs)
* seeds: ``numpy.random.default_rng(seed)`` for ethanol, ``default_rng(seed + 1)`` for
  malonaldehyde; each drives the initial velocities and the Langevin noise of its run
* non-periodic: pbc False, zero cell
* single-threaded (``OMP_NUM_THREADS=1``, set by the script): threaded tblite is not bitwise
  reproducible

Positions are rounded to the 8 decimals that the extxyz writer keeps *before* labelling, so the
stored labels belong exactly to the stored geometry (the script asserts this by reading the files
back).

Needs tblite (``pip install tblite``, or the package's optional extra ``labels``); only for
regeneration.

Run: ``python data/make_molecules.py`` (from the repository root).
"""

from __future__ import annotations

import os

# tblite parallelises with OpenMP; threaded reductions change the last bits from run to run, and MD
# amplifies them, so the trajectory is bitwise reproducible only single-threaded. Set this before
# tblite/numpy load.
os.environ["OMP_NUM_THREADS"] = "1"

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from ase import Atoms, units  # noqa: E402
from ase.build import molecule  # noqa: E402
from ase.calculators.singlepoint import SinglePointCalculator  # noqa: E402
from ase.constraints import FixCom  # noqa: E402
from ase.io import read, write  # noqa: E402
from ase.md.langevin import Langevin  # noqa: E402
from ase.md.velocitydistribution import Stationary, ZeroRotation  # noqa: E402
from ase.optimize import BFGS  # noqa: E402

try:  # ase >= 3.29
    from ase.md.velocitydistribution import thermalize_momenta
except ImportError:  # older ase: same distribution under the older name
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    def thermalize_momenta(atoms, temperature_K, *, rng=None):
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


HERE = Path(__file__).resolve().parent
DEFAULT_FRAMES = 1000
DEFAULT_SEED = 20240602
MOLECULES = ("ethanol", "malonaldehyde")

TEMPERATURE_K = 500.0
TIMESTEP_FS = 0.5
FRICTION_PER_FS = 0.02
EQUIL_STEPS = 1000
SAMPLE_EVERY = 10
DECIMALS = 8  # what ase's extxyz writer keeps for positions (format %16.8f)

# Planar starting guess (Å) for the H-bonded enol: O=C1H-C2H=C3H-O-H...O=C1.
MALONALDEHYDE_GUESS = [
    ("C", (-1.23, 0.55, 0.0)),  # carbonyl C
    ("C", (0.00, 1.25, 0.0)),  # central C
    ("C", (1.21, 0.60, 0.0)),  # enol C
    ("O", (-1.30, -0.70, 0.0)),  # carbonyl O
    ("O", (1.30, -0.72, 0.0)),  # hydroxyl O
    ("H", (0.40, -1.05, 0.0)),  # hydroxyl H, bridging to the carbonyl O
    ("H", (-2.18, 1.10, 0.0)),
    ("H", (0.00, 2.33, 0.0)),
    ("H", (2.17, 1.11, 0.0)),
]


def tblite_calc():
    from tblite.ase import TBLite  # optional dependency, only needed to regenerate

    return TBLite(method="GFN2-xTB", verbosity=0)


def tblite_version() -> str:
    from importlib.metadata import version

    return version("tblite")


def round_like_writer(x: np.ndarray) -> np.ndarray:
    """Round to the decimal string the extxyz writer emits, then parse back (exact round trip)."""
    return np.array([float(f"{v:.{DECIMALS}f}") for v in np.asarray(x, float).ravel()]).reshape(
        np.shape(x)
    )


def min_distance(atoms) -> float:
    d = atoms.get_all_distances()
    return float(d[np.triu_indices(len(atoms), 1)].min())


def build(name: str) -> Atoms:
    if name == "ethanol":
        atoms = molecule("CH3CH2OH")
    elif name == "malonaldehyde":
        atoms = Atoms(
            [s for s, _ in MALONALDEHYDE_GUESS], positions=[p for _, p in MALONALDEHYDE_GUESS]
        )
        atoms.calc = tblite_calc()
        BFGS(atoms, logfile=None).run(fmax=0.01, steps=500)
        assert np.abs(atoms.get_forces()).max() < 0.01, "malonaldehyde relaxation did not converge"
        atoms.calc = None
    else:
        raise ValueError(name)
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    atoms.positions -= atoms.get_center_of_mass()
    return atoms


def check_units() -> None:
    """tblite's ASE calculator must return eV and eV/Å (compare with its Hartree/Bohr API)."""
    from tblite.interface import Calculator

    atoms = molecule("CH3CH2OH")
    atoms.calc = tblite_calc()
    e_ase = atoms.get_potential_energy()
    f_ase = atoms.get_forces()
    calc = Calculator("GFN2-xTB", atoms.numbers, atoms.positions / units.Bohr)
    calc.set("verbosity", 0)
    res = calc.singlepoint()
    e_ha = res.get("energy")
    g_ha_bohr = res.get("gradient")
    assert abs(e_ase - e_ha * units.Hartree) < 1e-6, (e_ase, e_ha)
    assert np.allclose(f_ase, -g_ha_bohr * units.Hartree / units.Bohr, atol=1e-6)


def generate(name: str, n_frames: int, seed: int) -> list:
    rng = np.random.default_rng(seed)
    atoms = build(name)
    atoms.calc = tblite_calc()
    thermalize_momenta(atoms, TEMPERATURE_K, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(
        atoms,
        timestep=TIMESTEP_FS * units.fs,
        temperature_K=TEMPERATURE_K,
        friction=FRICTION_PER_FS / units.fs,
        fixcm=False,
        rng=rng,
    )
    dyn.run(EQUIL_STEPS)

    label_calc = tblite_calc()
    frames = []
    step = EQUIL_STEPS
    for _ in range(n_frames):
        dyn.run(SAMPLE_EVERY)
        step += SAMPLE_EVERY
        frame = atoms.copy()
        frame.calc = None
        frame.set_constraint()
        frame.arrays.pop("momenta", None)  # velocities are not stored
        frame.positions = round_like_writer(frame.positions)
        frame.info = {"md_step": int(step)}
        work = frame.copy()
        work.calc = label_calc
        energy = float(work.get_potential_energy())
        forces = np.array(work.get_forces())
        frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
        frames.append(frame)
    return frames


def check(frames, path: Path) -> dict:
    energies = np.array([f.get_potential_energy() for f in frames])
    forces = [f.get_forces() for f in frames]
    for f, F in zip(frames, forces, strict=True):
        assert F.shape == (len(f), 3)
        assert np.all(np.isfinite(F))
        assert min_distance(f) > 0.5
        assert not f.pbc.any()
    assert np.all(np.isfinite(energies))

    back = read(path, ":")
    assert len(back) == len(frames)
    for a, b in zip(frames, back, strict=True):
        assert np.array_equal(a.positions, b.positions), "positions do not round-trip"
        assert not b.pbc.any() and not b.cell.any()
        assert abs(b.get_potential_energy() - a.get_potential_energy()) < 1e-9
        assert np.allclose(b.get_forces(), a.get_forces(), atol=1e-7, rtol=0)
    return {
        "frames": len(frames),
        "atoms": len(frames[0]),
        "formula": frames[0].get_chemical_formula(),
        "e_min": energies.min(),
        "e_max": energies.max(),
        "e_mean": energies.mean(),
        "max_abs_force": max(np.abs(F).max() for F in forces),
        "min_dist": min(min_distance(f) for f in frames),
    }


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--outdir", type=Path, default=HERE, help="output folder (files <molecule>_gfn2.extxyz)"
    )
    p.add_argument("--molecules", nargs="+", choices=MOLECULES, default=list(MOLECULES))
    p.add_argument(
        "--frames", type=int, default=DEFAULT_FRAMES, help="number of frames per molecule"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help="RNG seed (ethanol: seed, malonaldehyde: seed+1)",
    )
    args = p.parse_args(argv)

    check_units()
    print(f"tblite {tblite_version()}, GFN2-xTB; energies eV, forces eV/A (checked)")
    args.outdir.mkdir(parents=True, exist_ok=True)
    for name in args.molecules:
        t0 = time.perf_counter()
        seed = args.seed + MOLECULES.index(name)
        frames = generate(name, args.frames, seed)
        out = args.outdir / f"{name}_gfn2.extxyz"
        write(out, frames, format="extxyz")
        s = check(frames, out)
        wall = time.perf_counter() - t0
        n = s["atoms"]
        print(
            f"{out}: {s['formula']}, {s['frames']} frames x {n} atoms, seed {seed},"
            f" {out.stat().st_size / 1e6:.2f} MB"
        )
        print(
            f"  energy [eV]: min {s['e_min']:.4f} max {s['e_max']:.4f} mean {s['e_mean']:.4f}"
            f"  (per atom: {s['e_min'] / n:.4f} / {s['e_max'] / n:.4f} / {s['e_mean'] / n:.4f})"
        )
        print(
            f"  max |F| component: {s['max_abs_force']:.3f} eV/A,"
            f" min distance {s['min_dist']:.3f} A"
        )
        print(f"  wall time: {wall:.1f} s")


if __name__ == "__main__":
    main()
