"""Dataset versions that share their parent's structures: a grown version stores only what it
appended, reads back equal to the whole, and a missing or damaged parent is detected."""

from __future__ import annotations

import shutil
from pathlib import Path

import ase.io
import numpy as np
import pytest

from atomistic.data import Dataset, neighbour_estimate, read_dataset, write_dataset
from atomistic.data.store import read_atom_range, read_structure_range
from atomistic.storage import CorruptionError, Store

DATA = Path(__file__).resolve().parents[3] / "data"


@pytest.fixture(scope="module")
def cu() -> list:
    return ase.io.read(DATA / "cu_emt.extxyz", ":")


def _same(a: Dataset, b: Dataset) -> None:
    for name in ("numbers", "positions", "cell", "pbc", "offsets", "energy", "forces"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)
            assert x.dtype == y.dtype, name


def _versions(tmp_path: Path, images: list, n_parent: int, n_grown: int):
    store = Store(str(tmp_path / "store.zarr"))
    parent = Dataset.from_atoms(images[:n_parent])
    grown = Dataset.from_atoms(images[:n_grown])
    pkey, _ = write_dataset(parent, store)
    gkey, written = write_dataset(grown, store, parent=pkey)
    assert written and gkey == grown.key
    return store, pkey, gkey, grown


def test_a_grown_version_stores_only_its_new_structures(tmp_path, cu):
    store, pkey, gkey, grown = _versions(tmp_path, cu, 30, 33)
    group = store.open("datasets", gkey)
    assert group.attrs["appends"] == {"parent": pkey, "structures": 30, "atoms": 30 * 32}
    assert group["offsets"].shape == (4,) and group["positions"].shape == (3 * 32, 3)
    assert group["energy"].shape == (3,) and group["cell"].shape == (3, 3, 3)
    # the whole reads back exactly, and so does any range of structures across the boundary
    _same(read_dataset(store, gkey), grown)
    for lo, hi in [(0, 33 * 32), (950, 970), (960, 1000), (10, 20)]:  # atoms
        part, first = read_atom_range(store, gkey, lo, hi)
        s0, s1 = lo // 32, -(-hi // 32)
        assert first == grown.offsets[s0]
        np.testing.assert_array_equal(part["positions"], grown.positions[s0 * 32 : s1 * 32])
        np.testing.assert_array_equal(part["offsets"], grown.offsets[s0 : s1 + 1] - first)
    for s0, s1 in [(0, 33), (28, 32), (30, 33), (31, 32), (5, 9)]:
        part = read_structure_range(store, gkey, s0, s1)
        sub = grown.subset(range(s0, s1))
        for name in ("numbers", "positions", "cell", "pbc", "offsets"):
            np.testing.assert_array_equal(part[name], getattr(sub, name), err_msg=f"{s0}:{s1}")
    # the split covers the whole version
    split = {k: v.tolist() for k, v in _split(store, gkey).items()}
    assert sorted(sum(split.values(), [])) == list(range(33))
    assert neighbour_estimate(store, gkey, 4.5) == neighbour_estimate(
        Store(str(tmp_path / "whole.zarr")),
        write_dataset(grown, str(tmp_path / "whole.zarr"))[0],
        4.5,
    )


def _split(store, key):
    from atomistic.data import read_split

    return read_split(store, key)


def test_a_chain_of_versions_reads_back_whole(tmp_path, cu):
    store = Store(str(tmp_path / "store.zarr"))
    key = write_dataset(Dataset.from_atoms(cu[:10]), store)[0]
    for n in (12, 15, 20):
        key = write_dataset(Dataset.from_atoms(cu[:n]), store, parent=key)[0]
    assert store.open("datasets", key)["offsets"].shape == (6,)
    _same(read_dataset(store, key), Dataset.from_atoms(cu[:20]))


def test_a_dataset_that_does_not_extend_the_parent_is_stored_whole(tmp_path, cu):
    store = Store(str(tmp_path / "store.zarr"))
    pkey = write_dataset(Dataset.from_atoms(cu[:10]), store)[0]
    other = Dataset.from_atoms(cu[1:14])  # the parent's first structure left out
    key = write_dataset(other, store, parent=pkey)[0]
    assert "appends" not in store.open("datasets", key).attrs
    assert store.open("datasets", key)["offsets"].shape == (14,)
    _same(read_dataset(store, key), other)


def test_a_missing_parent_is_named(tmp_path, cu):
    store, pkey, gkey, _ = _versions(tmp_path, cu, 30, 33)
    shutil.rmtree(Path(store.url) / "datasets" / pkey)
    with pytest.raises(CorruptionError, match=f"parent datasets/{pkey} is missing"):
        read_dataset(store, gkey)


def test_a_damaged_parent_is_detected_through_the_version(tmp_path, cu):
    store, pkey, gkey, _ = _versions(tmp_path, cu, 30, 33)
    folder = Path(store.url) / "datasets" / pkey / "positions" / "c"
    chunk = next(p for p in folder.rglob("*") if p.is_file())
    chunk.write_bytes(chunk.read_bytes()[:-7])  # truncated: no longer decodes
    with pytest.raises(CorruptionError, match=f"datasets/{pkey}"):
        read_dataset(store, gkey)
