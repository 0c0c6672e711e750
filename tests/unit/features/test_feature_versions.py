"""Feature groups that extend a parent group (a dataset version grown by active learning): a
version stores only its appended structures' rows, reads back, whole or by structure in any
order, equal to featurizing the whole dataset directly, and a missing parent is detected."""

from __future__ import annotations

import shutil
from pathlib import Path

import ase.io
import numpy as np
import pytest

from atomistic.data import Dataset
from atomistic.features import Gaussian
from atomistic.features.store import read_features, write_feature_array
from atomistic.storage import CorruptionError, Store, array

DATA = Path(__file__).resolve().parents[3] / "data"


def _featurize(images: list) -> tuple[np.ndarray, np.ndarray]:
    ds = Dataset.from_atoms(images)
    g = Gaussian(cutoff=4.0, elements=["Cu"], angular_type="G4")
    return g.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets), ds.offsets


@pytest.fixture(scope="module")
def cu() -> list:
    return ase.io.read(DATA / "cu_emt.extxyz", ":9")


@pytest.fixture
def versions(tmp_path: Path, cu: list):
    """A parent of 5 structures, a version appending 2, and one appending 2 more to it."""
    store = Store(str(tmp_path / "store.zarr"))
    attrs = {"complete": True}
    X, off = _featurize(cu[:5])
    write_feature_array(store, "p", X, off, attrs, kind="features")
    X, off = _featurize(cu[5:7])
    write_feature_array(store, "v1", X, off, attrs, kind="features", parent="p")
    X, off = _featurize(cu[7:9])
    write_feature_array(store, "v2", X, off, attrs, kind="features", parent="v1")
    return store


def test_a_version_stores_only_its_rows_and_reads_back_whole(versions, cu):
    store = versions
    assert array(store.open("features", "v2"), "values").shape[0] == 2 * 32
    assert store.open("features", "v2").attrs["appends"] == {"parent": "v1", "structures": 7}
    X_ref, off_ref = _featurize(cu)
    X, off = read_features(store, "v2")
    np.testing.assert_array_equal(off, off_ref)
    np.testing.assert_allclose(X, X_ref, rtol=1e-12, atol=1e-12)


def test_structures_of_a_version_in_any_order(versions, cu):
    picks = np.array([8, 0, 6, 3, 5, 8])  # across the three groups, out of order, repeated
    X_ref, off_ref = _featurize([cu[k] for k in picks])
    X, off = read_features(versions, "v2", picks)
    np.testing.assert_array_equal(off, off_ref)
    np.testing.assert_allclose(X, X_ref, rtol=1e-12, atol=1e-12)
    X, off = read_features(versions, "v2", np.array([], dtype=np.int64))
    assert X.shape[0] == 0 and off.tolist() == [0]
    with pytest.raises(IndexError, match="features/v2"):
        read_features(versions, "v2", np.array([9]))


def test_a_missing_parent_is_named(versions):
    shutil.rmtree(Path(versions.url) / "features" / "v1")
    with pytest.raises(CorruptionError, match="its parent features/v1 is missing"):
        read_features(versions, "v2")
    with pytest.raises(KeyError):  # the group asked for itself: the store's own message
        read_features(versions, "v1")
