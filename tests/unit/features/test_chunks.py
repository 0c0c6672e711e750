"""How a feature group is cut into work chunks (atomistic.features.store)."""

from __future__ import annotations

import numpy as np
from ase.build import bulk

from atomistic.data import Dataset, write_dataset
from atomistic.features import Gaussian
from atomistic.features.store import plan_feature_group
from atomistic.storage import Store


def _cu_dataset(n: int) -> Dataset:
    frames = []
    for s in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)  # 32 atoms
        atoms.rattle(0.05, seed=s)
        frames.append(atoms)
    return Dataset.from_atoms(frames)


def test_default_chunks_leave_every_worker_a_few(tmp_path):
    """8 columns of 16000 atoms are one 4 MiB chunk; with 2 workers the default cuts them into
    one chunk a worker (8000 rows: whole 32-atom structures), with 1 it keeps one chunk."""
    ds = _cu_dataset(500)
    url = str(tmp_path / "store.zarr")
    write_dataset(ds, url)
    f = Gaussian(elements=["Cu"])
    assert f.n_features == 8 and ds.n_atoms == 16000
    one = plan_feature_group(Store(url), ds, f, key="one")
    assert (one.rows_per_chunk, one.n_chunks) == (65536, 1)  # 4 MiB / (8 columns x 8 bytes)
    two = plan_feature_group(Store(url), ds, f, key="two", workers=2)
    assert (two.rows_per_chunk, two.n_chunks) == (8000, 2)  # 250 structures each
    small = _cu_dataset(20)  # 640 atoms: chunks of at least 512 rows (512 = 16 structures)
    write_dataset(small, url)
    few = plan_feature_group(Store(url), small, f, key="few", workers=2)
    assert (few.rows_per_chunk, few.n_chunks) == (512, 2)
    assert np.all(np.diff(small.offsets) == 32)
