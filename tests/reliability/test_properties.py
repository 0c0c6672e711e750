"""Property-based tests (hypothesis): featurizer invariances and exact ingestion round trips.

Structures are drawn as jittered grid sites (so no two atoms are closer than 0.9 Å) of H, C
and O, molecular or in a periodic triclinic cell. The features must not change under rotation,
translation, permutation of atoms of one element (rows permute with them) and the choice of
periodic image; a Dataset written to Zarr, or to an ASE trajectory file and read back, must
come back bit for bit.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from atomistic.data import Dataset, load_files, read_dataset, write_dataset
from atomistic.features import featurizer_from_params

SETTINGS = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
ELEMENTS = ("H", "C", "O")
FEATURIZERS = {
    "gaussian-G3": featurizer_from_params("gaussian", {"elements": ELEMENTS, "cutoff": 4.0}),
    "gaussian-G4": featurizer_from_params(
        "gaussian", {"elements": ELEMENTS, "cutoff": 4.0, "angular_type": "G4"}
    ),
    "aev": featurizer_from_params("aev", {"elements": ELEMENTS}),
}
TOL = {"rtol": 1e-9, "atol": 1e-10}


@st.composite
def structures(draw, periodic: bool | None = None) -> Atoms:
    n = draw(st.integers(2, 7))
    sites = draw(st.lists(st.integers(0, 26), min_size=n, max_size=n, unique=True))
    grid = np.array([[s % 3, (s // 3) % 3, s // 9] for s in sites], dtype=float) * 1.5
    jitter = np.array(draw(st.lists(st.floats(-0.3, 0.3), min_size=3 * n, max_size=3 * n)))
    symbols = draw(st.lists(st.sampled_from(ELEMENTS), min_size=n, max_size=n))
    atoms = Atoms(symbols, positions=grid + jitter.reshape(n, 3))
    if periodic if periodic is not None else draw(st.booleans()):
        tilt = draw(st.lists(st.floats(-0.8, 0.8), min_size=3, max_size=3))
        cell = np.diag([4.5, 4.5, 4.5]) + np.array(
            [[0, 0, 0], [tilt[0], 0, 0], [tilt[1], tilt[2], 0]]
        )
        atoms.set_cell(cell)
        atoms.pbc = draw(st.sampled_from([(True, True, True), (True, True, False)]))
    return atoms


def _rotation(q: list[float]) -> np.ndarray:
    w, x, y, z = np.asarray(q) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


quaternions = st.lists(st.floats(-1, 1), min_size=4, max_size=4).filter(
    lambda q: np.linalg.norm(q) > 0.1
)
vectors = st.lists(st.floats(-20, 20), min_size=3, max_size=3)


@pytest.mark.parametrize("name", sorted(FEATURIZERS))
@SETTINGS
@given(atoms=structures(), q=quaternions, shift=vectors)
def test_features_invariant_to_rotation_and_translation(name, atoms, q, shift):
    f = FEATURIZERS[name]
    (ref,) = f.featurize([atoms])
    moved = atoms.copy()
    R = _rotation(q)
    moved.positions = atoms.positions @ R.T + np.asarray(shift)
    if atoms.pbc.any():
        moved.set_cell(atoms.cell.array @ R.T)  # the cell rotates with the atoms
    (got,) = f.featurize([moved])
    np.testing.assert_allclose(got, ref, **TOL)


@pytest.mark.parametrize("name", sorted(FEATURIZERS))
@SETTINGS
@given(atoms=structures(), data=st.data())
def test_features_permute_with_atoms_of_one_element(name, atoms, data):
    f = FEATURIZERS[name]
    (ref,) = f.featurize([atoms])
    order = np.arange(len(atoms))
    symbols = np.array(atoms.get_chemical_symbols())
    for sym in set(symbols):  # shuffle the atoms of each element among themselves
        idx = np.flatnonzero(symbols == sym)
        order[idx] = idx[data.draw(st.permutations(range(len(idx))))]
    (got,) = f.featurize([atoms[order]])
    np.testing.assert_allclose(got, ref[order], **TOL)


@pytest.mark.parametrize("name", ["gaussian-G3", "aev"])
@SETTINGS
@given(atoms=structures(periodic=True), data=st.data())
def test_features_independent_of_periodic_image(name, atoms, data):
    f = FEATURIZERS[name]
    (ref,) = f.featurize([atoms])
    moved = atoms.copy()
    for i in range(len(atoms)):  # each atom replaced by one of its periodic images
        k = np.array(data.draw(st.lists(st.integers(-2, 2), min_size=3, max_size=3)))
        moved.positions[i] += (k * atoms.pbc) @ atoms.cell.array
    (got,) = f.featurize([moved])
    np.testing.assert_allclose(got, ref, **TOL)


@st.composite
def labelled(draw) -> list[Atoms]:
    images = draw(st.lists(structures(), min_size=1, max_size=4))
    for a in images:
        e = draw(st.floats(-1e3, 1e3, allow_nan=False))
        forces = np.array(
            draw(st.lists(st.floats(-50, 50), min_size=3 * len(a), max_size=3 * len(a)))
        ).reshape(-1, 3)
        a.calc = SinglePointCalculator(a, energy=e, forces=forces)
    return images


def _same(ds: Dataset, other: Dataset) -> None:
    for name in ("numbers", "positions", "cell", "pbc", "offsets", "energy", "forces"):
        a, b = getattr(ds, name), getattr(other, name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        assert a.tobytes() == b.tobytes(), name


@SETTINGS
@given(images=labelled())
def test_zarr_and_trajectory_round_trips_are_bit_exact(images):
    ds = Dataset.from_atoms(images, require_energy=True)
    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "store.zarr"
        key, written = write_dataset(ds, store)
        assert written and key == ds.key
        back = read_dataset(store, key)
        _same(back, ds)
        assert back.key == key
        assert write_dataset(back, store) == (key, False)  # same content: nothing written

        traj = Path(tmp) / "images.traj"
        ase.io.write(traj, images)
        from_file = load_files([traj])
        _same(from_file, ds)
        assert from_file.key == key
