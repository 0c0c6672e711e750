"""Featurization on a requested device (``cpu`` or ``cuda``).

Without a GPU, ``device="cuda"`` falls back to the CPU with one message per process and gives the
CPU path's numbers exactly (checked in a fresh Python with CUDA hidden, so it runs everywhere).
With a GPU, the features and their position Jacobians computed on it equal the CPU's to rounding,
and the featurizer itself stays on the CPU for the callers that run ``forward`` on CPU tensors."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from atomistic.device import fallback_message
from atomistic.features import AEV, Gaussian
from atomistic.features.jacobian import feature_jacobians

CUDA = torch.cuda.is_available()
ROOT = Path(__file__).resolve().parents[3]


def _featurizers(device: str = "cpu") -> dict:
    return {
        "gaussian_g3": Gaussian(cutoff=5.0, elements=["C", "H", "O", "Cu"], device=device),
        "gaussian_g4": Gaussian(  # integer zetas: the separable (per-atom moments) path
            cutoff=5.0, angular_type="G4", elements=["C", "H", "O", "Cu"], device=device
        ),
        "wacsf": Gaussian(cutoff=4.0, weighted=True, elements=["C", "H", "O", "Cu"], device=device),
        "aev": AEV(elements=["C", "H", "O", "Cu"], device=device),
    }


def _batch(structures) -> list:
    return [structures[k] for k in ("ethanol", "cu_bulk", "triclinic", "slab")]


def test_device_is_where_not_what(structures):
    """The device is not a parameter of the features: same get_params and state_dict, and a
    featurizer pickles (to Dask workers) without any copy made for another device."""
    cpu, other = Gaussian(cutoff=4.0), Gaussian(cutoff=4.0, device="cuda")
    assert cpu.get_params() == other.get_params()
    assert cpu.device == "cpu" and other.device == ("cuda" if CUDA else "cpu")
    f = Gaussian(cutoff=4.0, elements=["Cu"])
    x = f.featurize(structures["cu_bulk"], device="cpu")[0]
    keys = sorted(f.state_dict())
    g = pickle.loads(pickle.dumps(f))
    assert sorted(g.state_dict()) == keys and g._replicas == {}
    np.testing.assert_array_equal(copy.deepcopy(g).featurize(structures["cu_bulk"])[0], x)
    with pytest.raises(ValueError, match="expected one of cpu, cuda"):
        Gaussian(cutoff=4.0, device="tpu")


def test_cuda_request_without_gpu_falls_back_once(structures, tmp_path):
    """A fresh Python with CUDA hidden: ``device="cuda"`` featurizers (and their Jacobians)
    report the fallback once, on stderr, and give exactly the CPU path's numbers."""
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        from ase.io import read
        from atomistic.features import AEV, Gaussian
        from atomistic.features.jacobian import feature_jacobians

        images = read(sys.argv[1], ":")
        out = {}
        for name, f in {
            "gaussian": Gaussian(cutoff=5.0, elements=["C", "H", "O", "Cu"], device="cuda"),
            "aev": AEV(elements=["C", "H", "O", "Cu"], device="cuda"),
        }.items():
            assert f.device == "cpu", f.device
            out[name] = np.concatenate(f.featurize(images))
            out[name + "_cuda_arg"] = np.concatenate(f.featurize(images, device="cuda"))
        a = images[1]
        X, J = feature_jacobians(
            Gaussian(cutoff=5.0, elements=["Cu"], device="cuda"),
            a.numbers, a.positions, a.cell.array[None], a.pbc[None], [0, len(a)],
        )
        out["jacobian"] = J.numpy()
        np.savez(sys.argv[2], **out)
        """
    )
    from ase.io import read, write

    images = [structures[k] for k in ("ethanol", "triclinic", "slab")]  # small: a fresh Python
    write(tmp_path / "batch.extxyz", images)
    images = read(tmp_path / "batch.extxyz", ":")  # the positions the child reads (8 decimals)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "batch.extxyz"), str(tmp_path / "x.npz")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,  # a fresh Python imports torch: seconds, minutes on a crowded machine
    )
    assert run.returncode == 0, run.stderr
    assert run.stderr.count(fallback_message("cuda")) == 1, run.stderr
    got = np.load(tmp_path / "x.npz")
    cpu = {
        "gaussian": Gaussian(cutoff=5.0, elements=["C", "H", "O", "Cu"]),
        "aev": AEV(elements=["C", "H", "O", "Cu"]),
    }
    for name, f in cpu.items():
        x = np.concatenate(f.featurize(images))
        np.testing.assert_array_equal(got[name], x)
        np.testing.assert_array_equal(got[name + "_cuda_arg"], x)
    a = images[1]
    _, J = feature_jacobians(
        Gaussian(cutoff=5.0, elements=["Cu"]),
        a.numbers,
        a.positions,
        a.cell.array[None],
        a.pbc[None],
        [0, len(a)],
    )
    np.testing.assert_array_equal(got["jacobian"], J.numpy())


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", list(_featurizers()))
def test_features_on_cuda_equal_cpu(structures, name):
    images = _batch(structures)
    cpu = _featurizers()[name]
    gpu = _featurizers("cuda")[name]
    assert gpu.device.startswith("cuda")
    x_cpu = np.concatenate(cpu.featurize(images))
    x_gpu = np.concatenate(gpu.featurize(images))
    np.testing.assert_allclose(x_gpu, x_cpu, rtol=1e-10, atol=1e-12)
    # the featurizer itself stays on the CPU; its CUDA copy did the work
    assert gpu.species_bin.device.type == "cpu" and "cuda" in gpu._replicas
    assert next(iter(gpu._replicas["cuda"].buffers())).device.type == "cuda"
    # the explicit argument overrides the featurizer's device, both ways
    np.testing.assert_array_equal(np.concatenate(gpu.featurize(images, device="cpu")), x_cpu)
    np.testing.assert_allclose(
        np.concatenate(cpu.featurize(images, device="cuda")), x_cpu, rtol=1e-10, atol=1e-12
    )


@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_jacobians_on_cuda_equal_cpu(structures):
    a = structures["slab"]
    args = (a.numbers, a.positions, a.cell.array[None], a.pbc[None], [0, len(a)])
    X0, J0 = feature_jacobians(Gaussian(cutoff=5.0, elements=["Cu"]), *args)
    X1, J1 = feature_jacobians(Gaussian(cutoff=5.0, elements=["Cu"], device="cuda"), *args)
    assert X1.device.type == "cpu" and J1.device.type == "cpu"
    np.testing.assert_allclose(X1.numpy(), X0.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(J1.numpy(), J0.numpy(), rtol=1e-10, atol=1e-11)
