"""The campaign end to end with real Prefect, a real Dask LocalCluster, a real Zarr store and a
real MLflow sqlite store: first run, cached rerun, one changed model, one changed feature set."""

from __future__ import annotations

from pathlib import Path

import ase.io
import numpy as np
import pytest
import yaml

from flows.config import load_campaign

pytestmark = pytest.mark.slow

CAMPAIGN = {
    "name": "itest",
    "datasets": {"cu": {"paths": ["cu.extxyz"]}},
    "features": {
        "g": {"type": "gaussian", "dataset": "cu", "cutoff": 5.0},
        "lat": {
            "type": "latent",
            "source": "g",
            "encoder": {
                "hiddenlayers": {"encoder": [6, 3], "decoder": [3, 6]},
                "training": {"epochs": 5, "batch_size": 256},
            },
        },
    },
    "dask": {"n_workers": 2, "rows_per_chunk": 640},
    "models": {
        "nn": {
            "type": "neuralnetwork",
            "features": "g",
            "hiddenlayers": [8],
            "activation": "tanh",
            "training": {"epochs": 5, "batch_size": 16},
        },
        "krr": {"type": "kernelridge", "features": "g", "sigma": 1.0, "lamda": 1e-6},
        "krr_lat": {"type": "kernelridge", "features": "lat", "sigma": 1.0, "lamda": 1e-6},
    },
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shipped):
    d = tmp_path_factory.mktemp("campaign")
    ase.io.write(d / "cu.extxyz", ase.io.read(shipped["cu"], ":120"))
    return d


def _run(workdir: Path, monkeypatch, **changes):
    from flows.campaign import run_campaign

    raw = yaml.safe_load(yaml.safe_dump(CAMPAIGN))
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    raw["workspace"] = str(workdir / "ws")
    path = workdir / "campaign.yaml"
    path.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(workdir)
    return run_campaign(load_campaign(path), show_progress=False)


def test_campaign_caches_and_tracks(prefect_harness, workdir, monkeypatch):
    first = _run(workdir, monkeypatch)
    assert set(first["states"].values()) == {"Completed"}, first["states"]
    for m in first["models"].values():
        assert np.isfinite(m["energy_mae_per_atom"]) and m["energy_mae_per_atom"] < 0.05
    # latent features: in the store, one row per atom, the encoder's width
    from atomistic.features.store import read_features

    Z, offsets = read_features(
        str(workdir / "ws" / "store.zarr"), first["features"]["lat"], kind="latent"
    )
    assert Z.shape == (120 * 32, 3) and offsets[-1] == 120 * 32 and np.isfinite(Z).all()
    model_dirs = {n: Path(m["dir"]) for n, m in first["models"].items()}
    mtimes = {n: (d / "card.json").stat().st_mtime_ns for n, d in model_dirs.items()}

    # nothing changed: a cache hit at every stage, no model trained
    again = _run(workdir, monkeypatch)
    assert set(again["states"].values()) == {"Cached"}, again["states"]
    assert {n: (d / "card.json").stat().st_mtime_ns for n, d in model_dirs.items()} == mtimes

    # one model parameter: that model alone is retrained
    changed = _run(workdir, monkeypatch, **{"models.nn.hiddenlayers": [6]})
    st = changed["states"]
    assert st["train-model/nn"] == "Completed" and st["evaluate/nn"] == "Completed"
    assert st["train-model/krr"] == "Cached" and st["evaluate/krr"] == "Cached"
    assert st["train-encoder/lat"] == st["train-model/krr_lat"] == "Cached"
    assert st["ingest/cu"] == st["featurize/g"] == st["fit-scaler/g"] == "Cached"
    assert changed["models"]["nn"]["key"] != first["models"]["nn"]["key"]

    # one feature parameter: features and everything downstream, not ingestion
    feat = _run(workdir, monkeypatch, **{"features.g.cutoff": 4.5})
    st = feat["states"]
    assert st["ingest/cu"] == "Cached"
    for label in (
        "featurize/g",
        "fit-scaler/g",
        "train-model/nn",
        "train-model/krr",
        "evaluate/nn",
        "evaluate/krr",
        "record",
    ):
        assert st[label] == "Completed", (label, st)
    assert feat["features"]["g"] != first["features"]["g"]

    # the MLflow store, read back through MLflow's client
    from mlflow import MlflowClient

    client = MlflowClient(first["tracking"]["tracking_uri"])
    exp = client.get_experiment_by_name("itest")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    encoders = [r for r in children if r.data.tags.get("atompipe.role") == "encoder"]
    children = [r for r in children if r not in encoders]
    assert len(parents) == 3 and len(children) == 9  # the cached rerun recorded nothing new
    assert len(encoders) == 3 and {r.info.run_name for r in encoders} == {"encoder:lat"}
    enc = encoders[0]
    assert enc.data.metrics["reconstruction_mse_test"] < enc.data.metrics["scaled_variance_test"]
    assert len(client.get_metric_history(enc.info.run_id, "train_loss")) == 5
    assert "plots/latent_map.png" in {
        a.path for a in client.list_artifacts(enc.info.run_id, "plots")
    }
    nn_run = next(r for r in children if r.info.run_name == "nn")
    assert "test_energy_mae_per_atom" in nn_run.data.metrics
    assert nn_run.data.metrics["fit_time_s"] > 0
    assert nn_run.data.params["hiddenlayers"] in ("[8]", "[6]")
    assert nn_run.data.tags["atompipe.feature_key"] in (
        first["features"]["g"],
        feat["features"]["g"],
    )
    history = client.get_metric_history(nn_run.info.run_id, "train_loss")
    assert len(history) == 5  # one value per epoch
    arts = {a.path for a in client.list_artifacts(nn_run.info.run_id)}
    assert {"plots", "atompipe_model"} <= arts
    mv = client.get_model_version_by_alias("itest-champion", "champion")
    assert mv.run_id in {r.info.run_id for r in children}

    # `atompipe compare` prints the model runs, best first
    from typer.testing import CliRunner

    from flows.cli import app

    table = CliRunner().invoke(app, ["compare", str(workdir / "campaign.yaml")])
    assert table.exit_code == 0, table.output
    assert "(9 runs)" in table.output and "encoder" not in table.output
    assert all(name in table.output for name in ("nn", "krr", "krr_lat"))

    # the registered model predicts energies from extended-XYZ strings through pyfunc
    import io

    import mlflow
    import pandas as pd

    model = mlflow.pyfunc.load_model("models:/itest-champion@champion")
    images = ase.io.read(workdir / "cu.extxyz", ":3")
    texts = []
    for a in images:
        buf = io.StringIO()
        ase.io.write(buf, a, format="extxyz")
        texts.append(buf.getvalue())
    pred = model.predict(pd.DataFrame({"extxyz": texts}))["energy"].to_numpy()
    ref = np.array([a.get_potential_energy() for a in images])
    assert np.abs(pred - ref).max() / 32 < 0.05


def test_featurize_and_train_flows_run_alone(prefect_harness, tmp_path, monkeypatch, shipped):
    from flows.campaign import run_campaign

    ase.io.write(tmp_path / "cu.extxyz", ase.io.read(shipped["cu"], ":40"))
    raw = yaml.safe_load(yaml.safe_dump(CAMPAIGN))
    g = raw["features"]["g"]
    raw["features"] = {"g": g, "unused": {**g, "cutoff": 4.0}}  # no model reads "unused"
    raw["models"] = {m: raw["models"][m] for m in ("nn", "krr")}
    raw["name"] = "alone"
    raw["workspace"] = str(tmp_path / "ws")
    (tmp_path / "alone.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path)
    cfg = load_campaign(tmp_path / "alone.yaml")

    feats = run_campaign(cfg, show_progress=False, features_only=True)
    assert feats["states"] == {
        "ingest/cu": "Completed",
        "featurize/g": "Completed",
        "fit-scaler/g": "Completed",
        "featurize/unused": "Completed",
        "fit-scaler/unused": "Completed",
    }
    assert feats["models"] == {} and not (tmp_path / "ws" / "models").exists()

    trained = run_campaign(cfg, show_progress=False, models=["krr"])
    st = trained["states"]
    assert st["featurize/g"] == st["ingest/cu"] == "Cached"
    assert st["train-model/krr"] == "Completed" and "train-model/nn" not in st
    assert "featurize/unused" not in st  # the train flow builds only what its models read
    assert set(trained["models"]) == {"krr"}
    assert len(list((tmp_path / "ws" / "models").glob("*/card.json"))) == 1
    assert trained["tracking"]["champion"]["model"] == "krr"
    with pytest.raises(ValueError, match="no model 'gp'"):
        run_campaign(cfg, show_progress=False, models=["gp"])

    # a run of a worse model alone leaves the champion where it is
    nn = run_campaign(cfg, show_progress=False, models=["nn"])
    assert (
        nn["models"]["nn"]["energy_mae_per_atom"] > trained["models"]["krr"]["energy_mae_per_atom"]
    )
    assert nn["tracking"]["champion"]["model"] == "krr"
    from mlflow import MlflowClient

    client = MlflowClient(nn["tracking"]["tracking_uri"])
    mv = client.get_model_version_by_alias("alone-champion", "champion")
    assert str(mv.version) == "1" and mv.run_id == trained["tracking"]["children"]["krr"]["run_id"]
