"""Small labelled structures (EMT), fitted featurizer/scaler pairs and finite-difference forces,
shared by the model, calculator and stress tests (importable by name: tests/ is on the path)."""

import numpy as np
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from atomistic.data import Dataset
from atomistic.features import Gaussian
from atomistic.features.scaling import Scaler
from atomistic.models import AtomicData

torch.set_num_threads(1)


def _label(images):
    out = []
    for a in images:
        a.calc = EMT()
        e, f = a.get_potential_energy(), a.get_forces()
        a.calc = SinglePointCalculator(a, energy=e, forces=f)
        out.append(a)
    return out


def cu_images(n, seed=0, size=(1, 1, 1), rattle=0.08):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Cu", "fcc", a=3.6 * rng.uniform(0.98, 1.02), cubic=True).repeat(size)
        a.positions += rng.normal(0, rattle, a.positions.shape)
        out.append(a)
    return _label(out)


def molecule_images(n, seed=0, rattle=0.05):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = molecule("CH3CH2OH")
        a.positions += rng.normal(0, rattle, a.positions.shape)
        out.append(a)
    return _label(out)


def make_data(images, cutoff=4.0, angular_type="G3", features=True):
    """AtomicData with a Gaussian featurizer and a min-max scaler fitted on ``images``."""
    ds = Dataset.from_atoms(images)
    f = Gaussian(cutoff=cutoff, elements=ds.elements, angular_type=angular_type)
    X = f.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
    sc = Scaler().fit(X)
    return AtomicData(ds, sc.transform(X) if features else None, f, sc)


def finite_difference_forces(model, atoms, h=2e-5):
    """-dE/dR by central differences of model.predict_atoms energies, (n, 3) eV/Å."""
    F = np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for c in range(3):
            es = []
            for d in (h, -h):
                b = atoms.copy()
                b.positions[i, c] += d
                es.append(model.predict_atoms([b], forces=False)["energy"][0])
            F[i, c] = -(es[0] - es[1]) / (2 * h)
    return F
