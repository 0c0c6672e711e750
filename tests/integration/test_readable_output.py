"""Output a person can read (issue 17, sections 5 and 6): units in the tables, `compare` one
row per model key, `predict`'s formats, stress and uncertainties, the MLflow pyfunc's columns
and signature, third-party warnings kept off the terminal, the device fallback."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cu(tmp_path_factory, shipped) -> Path:
    path = tmp_path_factory.mktemp("cu") / "cu.extxyz"
    ase.io.write(path, ase.io.read(shipped["cu"], ":14"))
    return path


@pytest.fixture(scope="module")
def gp_dir(tmp_path_factory, cu) -> Path:
    """A small Gaussian process (energies, its std; forces and stress through its featurizer)."""
    from atomistic import Gaussian, GaussianProcess

    frames = ase.io.read(cu, ":")
    model = GaussianProcess(sigma=1.0, noise=1e-4, optimize=False)
    model.fit(frames[:10], featurizer=Gaussian(cutoff=4.0))
    return model.save(tmp_path_factory.mktemp("gp") / "model")


@pytest.fixture(scope="module")
def tracking(tmp_path_factory) -> str:
    """One MLflow sqlite store for the module (creating its tables is the slow part)."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    MlflowClient(uri).search_experiments()
    return uri


def _cli(*args: str, env: dict | None = None):
    from flows.cli import app

    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80", **(env or {})})


# -- tables ----------------------------------------------------------------------------------
def test_run_summary_table_has_units(capsys):
    from flows.progress import CampaignProgress

    summary = {
        "campaign": "demo",
        "wall_time_s": 12.0,
        "models": {
            "gp": {"energy_mae_per_atom": 0.001409, "force_mae": 0.07113, "fit_time_s": 62.1},
            "nn": {"energy_mae_per_atom": 0.006191, "energy_rmse_per_atom": 0.008876},
        },
    }
    CampaignProgress(enabled=False).summary_table(summary, "energy_mae_per_atom")
    out = capsys.readouterr().out
    for header in ("E MAE (meV/atom)", "E RMSE (meV/atom)", "F MAE (meV/Å)", "fit (s)"):
        assert header in out
    assert "1.41" in out and "71.1" in out and "8.88" in out  # eV -> meV
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80


def test_one_line_per_stage_saying_cached_or_run(capsys):
    from flows.progress import CampaignProgress

    with CampaignProgress(enabled=True) as progress:  # stderr is not a terminal here
        progress.stage_started("features g")
        progress.chunk_callback("features g")(1, 2)
        progress.stage_finished("features g", "run")
        progress.stage_finished("features g", "run")  # reported once
        progress.stage_started("model krr")
        progress.stage_finished("model krr", "cached")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["features", "g", "run"],
        ["model", "krr", "cached"],
    ]
    assert all(line.endswith(" s") for line in lines)  # with the time it took


def _mlflow_runs(uri: str, experiment: str) -> None:
    """Four model runs as `atompipe run` logs them: krr twice unchanged (one key), krr with
    another sigma, and nn."""
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    exp = client.create_experiment(experiment)
    runs = [
        ("krr", "aaaa1111", {"type": "kernelridge", "sigma": "1.0", "lamda": "1e-06"}, 0.0020),
        ("krr", "aaaa1111", {"type": "kernelridge", "sigma": "1.0", "lamda": "1e-06"}, 0.0020),
        ("krr", "bbbb2222", {"type": "kernelridge", "sigma": "2.0", "lamda": "1e-06"}, 0.0030),
        ("nn", "cccc3333", {"type": "neuralnetwork", "activation": "tanh"}, 0.0060),
    ]
    parent = client.create_run(exp, run_name=experiment).info.run_id
    for name, key, params, mae in runs:
        tags = {"mlflow.parentRunId": parent, "atompipe.model_key": key}
        rid = client.create_run(exp, run_name=name, tags=tags).info.run_id
        for k, v in params.items():
            client.log_param(rid, k, v)
        client.log_metric(rid, "test_energy_mae_per_atom", mae)
        client.log_metric(rid, "test_energy_rmse_per_atom", 1.3 * mae)
        client.log_metric(rid, "test_force_mae", 50 * mae)
        client.log_metric(rid, "fit_time_s", 1.5)


def test_compare_one_row_per_model_key_with_units(tmp_path, cu, tracking):
    campaign = tmp_path / "c.yaml"
    (tmp_path / cu.name).write_bytes(cu.read_bytes())
    campaign.write_text(
        yaml.safe_dump(
            {
                "name": "cmp",
                "workspace": "ws",
                "tracking": {"uri": tracking},
                "allow_absolute_paths": True,
                "datasets": {"cu": {"paths": [cu.name]}},
                "features": {"g": {"type": "gaussian", "dataset": "cu"}},
                "models": {"krr": {"type": "kernelridge", "features": "g"}},
            }
        )
    )
    _mlflow_runs(tracking, "cmp")
    result = _cli("compare", str(campaign))
    out = result.stdout
    assert result.exit_code == 0, result.output
    assert "3 models (4 runs)" in out
    rows = [line for line in out.splitlines() if line.lstrip().startswith(("krr", "nn"))]
    assert len(rows) == 3, out  # the unchanged krr rerun is one row, with 2 runs
    assert "sigma=1.0" in out and "sigma=2.0" in out  # what tells the krr rows apart
    assert "(meV/atom)" in out and "(meV/Å)" in out
    assert "2" in rows[0] and "2.6" in rows[0]  # 2 meV/atom MAE, 2.6 RMSE, best first
    assert "…" not in out and max(len(line) for line in out.splitlines()) <= 80


# -- predict -----------------------------------------------------------------------------------
def test_predict_refuses_an_unknown_suffix(tmp_path, cu):
    result = _cli("predict", str(tmp_path / "no-model"), str(cu), "-o", str(tmp_path / "x.json"))
    assert result.exit_code == 1
    assert "'.json'" in result.output and ".extxyz" in result.output
    assert not (tmp_path / "x.json").exists()


def test_predict_writes_stress_and_uncertainties(tmp_path, gp_dir, cu):
    out = tmp_path / "p.extxyz"
    result = _cli("predict", str(gp_dir), str(cu), "-o", str(out))
    assert result.exit_code == 0, result.output
    frames = ase.io.read(out, ":")
    assert len(frames) == 14
    a = frames[0]
    assert a.get_stress().shape == (6,) and np.all(np.isfinite(a.get_stress()))
    assert a.get_forces().shape == (len(a), 3)
    assert a.info["energy_std"] > 0
    result = _cli("predict", str(gp_dir), str(cu), "-o", str(tmp_path / "p.csv"))
    header = (tmp_path / "p.csv").read_text().splitlines()[0]
    assert "energy_std_eV" in header and "stress_xx_eV/Å³" in header


# -- the MLflow pyfunc -------------------------------------------------------------------------
def test_pyfunc_has_forces_stress_uncertainty_and_a_signature(tmp_path, gp_dir, cu, tracking):
    import mlflow

    from atomistic.data import load_files, write_dataset
    from tasks.record import _MODEL_CODE, _requirement, _signature

    store = str(tmp_path / "store.zarr")
    key, _ = write_dataset(load_files([cu]), store)
    signature = _signature(gp_dir, store, key)
    outputs = signature.outputs.input_names()
    assert signature.inputs.input_names() == ["extxyz"]
    assert set(outputs) == {"energy", "energy_std", "forces", "stress"}
    assert _requirement().startswith("atompipe==")

    mlflow.set_tracking_uri(tracking)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=_MODEL_CODE,
            artifacts={"model": str(gp_dir)},
            pip_requirements=[_requirement()],
            signature=signature,
        )
    loaded = mlflow.pyfunc.load_model(info.model_uri)
    assert loaded.metadata.get_output_schema().input_names() == outputs
    frames = ase.io.read(cu, "10:")
    texts = []
    for a in frames:
        buf = io.StringIO()
        ase.io.write(buf, a, format="extxyz")
        texts.append(buf.getvalue())
    import pandas as pd

    got = loaded.predict(pd.DataFrame({"extxyz": texts}))
    assert list(got.columns) == outputs and len(got) == len(frames)
    assert np.asarray(got["forces"][0]).shape == (len(frames[0]), 3)
    assert len(got["stress"][0]) == 6 and got["energy_std"][0] > 0
    local = mlflow.artifacts.download_artifacts(info.model_uri, dst_path=str(tmp_path / "dl"))
    assert "atompipe==" in (Path(local) / "requirements.txt").read_text()


# -- the terminal ------------------------------------------------------------------------------
_NOISY = """
import sys, warnings
from flows import cli

class TrainingWarning(UserWarning):  # stands in for atompipe's own (without importing torch)
    pass

TrainingWarning.__module__ = "atomistic.models.neuralnetwork"

@cli.app.command("noisy")
def noisy():
    warnings.warn_explicit(
        "\\x1b[33mModel logged without a signature\\x1b[0m", UserWarning, "mlflow/models.py", 1
    )
    warnings.warn("a deprecated call", FutureWarning)
    warnings.warn("ours: the model learned nothing", TrainingWarning)
    print("done")

sys.argv = ["atompipe", "noisy"]
cli.main()
"""


def test_third_party_warnings_stay_off_the_terminal():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    out = subprocess.run(
        [sys.executable, "-c", _NOISY], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert out.returncode == 0, out.stderr
    assert "done" in out.stdout
    assert "UserWarning" not in out.stderr and "FutureWarning" not in out.stderr
    assert "\x1b[" not in out.stderr
    assert "TrainingWarning" in out.stderr  # atompipe's own warnings still show


def test_predict_in_a_subprocess_prints_a_first_line_and_no_warnings(tmp_path, gp_dir, cu):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}
    out = subprocess.run(
        [sys.executable, "-m", "flows.cli", "predict", str(gp_dir), str(cu), "-o", "p.extxyz"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(ROOT)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[0].startswith("atompipe predict:")
    assert "Warning" not in out.stderr, out.stderr
    assert "14 structures" in out.stdout


# -- device --------------------------------------------------------------------------------------
def test_cuda_without_a_gpu_falls_back_with_one_message(monkeypatch, tmp_path, gp_dir, cu):
    import torch

    from atomistic import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_reported", set())
    said: list[str] = []
    assert device.resolve_device("cuda", report=said.append) == "cpu"
    assert device.resolve_device("cuda", report=said.append) == "cpu"
    assert said == [device.fallback_message("cuda")]  # once, not per call
    assert "no CUDA GPU" in said[0] and "CPU" in said[0]
    assert device.resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="tpu"):
        device.resolve_device("tpu")
    monkeypatch.setattr(device, "_reported", set())
    out = str(tmp_path / "p.extxyz")
    result = _cli("predict", str(gp_dir), str(cu), "-o", out, "--device", "cuda")
    assert result.exit_code == 0, result.output
    assert result.output.count("no CUDA GPU") == 1


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU (none present)"
)
def test_network_trains_and_predicts_on_cuda(cu):
    from atomistic import Gaussian, NeuralNetwork

    frames = ase.io.read(cu, ":")
    kw = {"hiddenlayers": (8,), "activation": "tanh", "dtype": "float64", "force_weight": 0.1}
    kw["training"] = {"epochs": 3, "batch_size": 4, "seed": 0}
    gpu = NeuralNetwork(**kw, device="cuda").fit(frames[:10], featurizer=Gaussian(cutoff=4.0))
    assert next(gpu.module_.parameters()).device.type == "cpu"  # saved and kept on the CPU
    on_gpu = gpu.predict_atoms(frames[10:], forces=True, stress=True)
    gpu.device = "cpu"
    on_cpu = gpu.predict_atoms(frames[10:], forces=True, stress=True)
    np.testing.assert_allclose(on_gpu["energy"], on_cpu["energy"], rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(on_gpu["stress"], on_cpu["stress"], rtol=1e-7, atol=1e-9)
    for a, b in zip(on_gpu["forces"], on_cpu["forces"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-7, atol=1e-9)
