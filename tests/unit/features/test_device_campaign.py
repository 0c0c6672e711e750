"""A campaign's feature set computes on the device it names (``device: cpu | cuda``): the device is
where, not what, so it enters neither the featurizer's parameters nor the features' key, and on a
machine without a GPU ``cuda`` falls back to the CPU with the same numbers, which the featurizer
itself computes independently of the store (a fresh process with CUDA hidden, so the fallback is
taken on GPU machines too)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from atomistic.data import load_files, write_dataset
from atomistic.features.store import read_features
from flows.config_stages import AEVFeatures, GaussianFeatures
from tasks.featurize import build_featurizer

ROOT = Path(__file__).resolve().parents[3]
CU = ROOT / "data" / "cu_emt.extxyz"

CHILD = textwrap.dedent(
    """
    import json, sys
    from tasks.featurize import featurize_dataset
    ref = featurize_dataset(sys.argv[1], sys.argv[2], "gaussian", json.loads(sys.argv[3]),
                            rows_per_chunk=64, device="cuda")
    print("KEY", ref["key"])
    """
)


@pytest.mark.parametrize("cls", [GaussianFeatures, AEVFeatures])
def test_device_is_not_a_feature_parameter(cls):
    on_gpu = cls(dataset="d", device="cuda")
    assert on_gpu.device == "cuda"
    assert "device" not in on_gpu.featurizer_params()
    assert on_gpu.featurizer_params() == cls(dataset="d").featurizer_params()
    with pytest.raises(ValueError, match="device"):
        cls(dataset="d", device="tpu")


def test_cuda_feature_set_without_gpu_falls_back_with_equal_numbers(tmp_path):
    ds = load_files([CU]).subset(range(4))
    store = str(tmp_path / "s.zarr")
    dataset_key, _ = write_dataset(ds, store)
    params = GaussianFeatures(dataset="cu", device="cuda").featurizer_params()
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, store, dataset_key, json.dumps(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    key = proc.stdout.split("KEY ")[1].split()[0]
    fallbacks = [line for line in proc.stderr.splitlines() if "cuda" in line.lower()]
    assert len(fallbacks) == 1, proc.stderr[-2000:]  # one message, not one per chunk

    featurizer = build_featurizer("gaussian", params, ds.elements)
    expected = featurizer.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
    values, _ = read_features(store, key)
    np.testing.assert_allclose(values, expected, rtol=0, atol=1e-12)
