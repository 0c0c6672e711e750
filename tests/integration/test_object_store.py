"""The Zarr store on object storage (fsspec URLs): ``memory://`` always, and a real S3 API
(a moto server on 127.0.0.1, through s3fs) when moto and s3fs are installed.

Object stores have no rename, so ``Store.writing`` stages a group and copies it into place
with its ``zarr.json`` last. These tests check what that must guarantee: what is read back
equals what ASE read from the file; two writers of one key never publish a torn group; an
error or a killed copy publishes nothing and blocks nothing; featurization on Dask workers
writes to the object store values equal to the featurizer run directly on the structures.
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import ase.io
import fsspec
import numpy as np
import pytest

from atomistic.data import load_files, read_dataset, write_dataset
from atomistic.features import Gaussian
from atomistic.features.store import read_features
from atomistic.storage import Store

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "docs" / "examples" / "ethanol_tiny.extxyz"


def _memory_url() -> str:
    return f"memory://atompipe-{uuid.uuid4().hex}/store.zarr"


def _check_roundtrip(store: Store, key: str) -> None:
    """The stored arrays equal what ASE reads from the file (an independent reader)."""
    images = ase.io.read(TINY, ":")
    back = read_dataset(store, key)
    np.testing.assert_array_equal(back.numbers, np.concatenate([a.numbers for a in images]))
    np.testing.assert_array_equal(back.positions, np.concatenate([a.positions for a in images]))
    np.testing.assert_array_equal(back.energy, [a.get_potential_energy() for a in images])
    np.testing.assert_array_equal(back.forces, np.concatenate([a.get_forces() for a in images]))


def test_memory_store_roundtrip_and_no_staging_left():
    store = Store(_memory_url())
    key, written = write_dataset(load_files([TINY]), store)
    assert written and store.keys("datasets") == [key]
    _check_roundtrip(store, key)
    fs, root = fsspec.url_to_fs(store.url)
    assert fs.find(f"{root}/.staging") == [f"{root}/.staging/zarr.json"]  # the empty group
    assert write_dataset(load_files([TINY]), store) == (key, False)


def test_two_writers_of_one_key_never_publish_a_torn_group():
    store = Store(_memory_url())
    key = "k" * 64
    with store.writing("datasets", key) as first:
        first.create_array("a", data=np.arange(4))
        with store.writing("datasets", key) as second:  # e.g. two campaigns, same files
            second.create_array("a", data=np.arange(4))
            second.create_array("b", data=np.arange(5))
            assert not store.has("datasets", key)  # nothing visible before a publish
        assert store.has("datasets", key)
        first.create_array("b", data=np.arange(5))
    group = store.open("datasets", key)
    assert sorted(group.array_keys()) == ["a", "b"]
    np.testing.assert_array_equal(group["a"][...], np.arange(4))
    np.testing.assert_array_equal(group["b"][...], np.arange(5))


def test_an_error_publishes_nothing_and_a_killed_copy_blocks_nothing():
    store = Store(_memory_url())
    with pytest.raises(RuntimeError, match="boom"):
        with store.writing("datasets", "e" * 64) as group:
            group.create_array("a", data=np.arange(3))
            raise RuntimeError("boom")
    assert not store.has("datasets", "e" * 64) and store.keys("datasets") == []

    ds = load_files([TINY])
    key, _ = write_dataset(ds, store)
    # a copy killed before the group's zarr.json: arrays in place, one of them wrong
    fs, root = fsspec.url_to_fs(store.url)
    fs.rm(f"{root}/datasets/{key}/zarr.json")
    fs.pipe(f"{root}/datasets/{key}/energy/c/0", b"not a chunk")
    assert not store.has("datasets", key)
    assert write_dataset(ds, store) == (key, True)
    _check_roundtrip(store, key)


# -- a real S3 API: moto's server on 127.0.0.1 (tests/conftest.py), s3fs as the client -----
@pytest.fixture
def s3_bucket(s3_env, monkeypatch):
    """A fresh bucket; credentials and endpoint in the environment (inherited by workers)."""
    for name, value in s3_env.items():
        monkeypatch.setenv(name, value)
    import s3fs

    endpoint = s3_env["AWS_ENDPOINT_URL"]
    bucket = f"atompipe-{uuid.uuid4().hex[:12]}"
    s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True).mkdir(bucket)
    return bucket


def test_s3_ingest_cli_and_dask_featurization(s3_bucket, tmp_path):
    from tasks.cluster import dask_client
    from tasks.featurize import featurize_dataset

    url = f"s3://{s3_bucket}/store.zarr"
    cmd = [sys.executable, "-m", "flows.cli", "ingest", str(TINY), "--store", url, "--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    store = Store(url)
    (key,) = store.keys("datasets")
    _check_roundtrip(store, key)

    with dask_client(n_workers=1) as client:  # a worker process reads and writes S3 itself
        ref = featurize_dataset(url, key, "gaussian", {}, client=client, rows_per_chunk=90)
    assert ref["n_chunks"] == 5 and ref["computed_chunks"] == 5
    values, offsets = read_features(url, ref["key"])
    images = ase.io.read(TINY, ":")
    direct = Gaussian(elements=("H", "C", "O"))
    expected = np.concatenate(direct.featurize(images))
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(offsets, np.arange(0, 9 * len(images) + 1, 9))


def test_s3_without_credentials_is_one_clear_error(s3_bucket, monkeypatch, tmp_path):
    import s3fs

    from atomistic.storage import StoreError

    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookup
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    s3fs.S3FileSystem.clear_instance_cache()  # forget the clients that had credentials
    url = f"s3://{s3_bucket}/store.zarr"
    with pytest.raises(StoreError, match=rf"cannot open the store {url}: NoCredentialsError"):
        Store(url)
    s3fs.S3FileSystem.clear_instance_cache()


def test_campaign_with_its_store_on_s3(s3_bucket, tmp_path, prefect_harness):
    """The campaign's ``store:`` key puts datasets and features on S3; models stay local."""
    import yaml

    from flows.campaign import run_campaign
    from flows.config import load_campaign

    (tmp_path / "tiny.extxyz").write_bytes(TINY.read_bytes())
    url = f"s3://{s3_bucket}/campaign.zarr"
    campaign = {
        "name": "on-s3",
        "store": url,
        "datasets": {"tiny": {"paths": ["tiny.extxyz"]}},
        "features": {"g": {"type": "gaussian", "dataset": "tiny", "cutoff": 4.0}},
        "dask": {"n_workers": 1, "rows_per_chunk": 90},
        "models": {"krr": {"type": "kernelridge", "features": "g", "lamda": 1e-6}},
        "evaluation": {"plots": False},
    }
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(campaign))
    cfg = load_campaign(tmp_path / "c.yaml")
    assert cfg.store_url == url

    first = run_campaign(cfg, show_progress=False)
    assert set(first["states"].values()) == {"Completed"}, first["states"]
    store = Store(url)
    assert store.keys("datasets") == [first["datasets"]["tiny"]]
    assert store.keys("features") == [first["features"]["g"]]
    assert not (tmp_path / "workspace" / "store.zarr").exists()
    values, _ = read_features(url, first["features"]["g"])
    direct = Gaussian(cutoff=4.0, elements=("H", "C", "O"))
    expected = np.concatenate(direct.featurize(ase.io.read(TINY, ":")))
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
    assert (Path(first["models"]["krr"]["dir"]) / "card.json").exists()

    again = run_campaign(cfg, show_progress=False)
    assert set(again["states"].values()) == {"Cached"}, again["states"]
