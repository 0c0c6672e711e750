"""The active-learning loop end to end through the real Prefect flow, a real Zarr store, real
MLflow (sqlite) and ASE's EMT as the reference: two iterations with tiny models, then a rerun
that labels nothing again."""

from __future__ import annotations

import ase.io
import numpy as np
import pytest
import yaml
from ase.calculators.emt import EMT

from flows.config import load_campaign

pytestmark = pytest.mark.slow

CAMPAIGN = {
    "name": "altest",
    "datasets": {"cu": {"paths": ["cu.extxyz"]}},
    "features": {"g": {"type": "gaussian", "dataset": "cu", "cutoff": 4.0}},
    "dask": {"n_workers": 1},
    "models": {
        "nn": {
            "type": "neuralnetwork",
            "features": "g",
            "hiddenlayers": [4],
            "activation": "celu0.1",
            "force_weight": 1.0,
            "ensemble": 2,
            "training": {"epochs": 3, "batch_size": 8, "warmup_epochs": 0},
        }
    },
    "active": {
        "model": "nn",
        "iterations": 2,
        "budget": 4,
        "exploration": {"temperatures": [600], "steps": 10, "interval": 5, "starts": 1},
        "selection": {"threshold": 0.0, "max_labels": 2, "diversity": "none"},
        "labelling": {"calculator": "emt"},
    },
}


def _load(workdir):
    path = workdir / "campaign.yaml"
    path.write_text(yaml.safe_dump(CAMPAIGN))
    return load_campaign(path)


def test_two_iterations_grow_the_dataset_and_never_relabel(tmp_path, shipped, prefect_harness):
    from atomistic.active import LabelStore
    from atomistic.data import read_dataset
    from flows.active import run_active

    ase.io.write(tmp_path / "cu.extxyz", ase.io.read(shipped["cu"], ":15"))
    cfg = _load(tmp_path)
    out = run_active(cfg)

    rows = out["iterations"]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert [r["labels_added"] for r in rows] == [0, 2, 4]
    assert [r["labels_computed"] for r in rows] == [0, 2, 2]
    assert out["stopped"] == "budget"
    # the grown dataset: the 15 seed structures first, then 4 new ones labelled by EMT
    store = cfg.store_url
    ds = read_dataset(store, out["dataset"])
    assert ds.n_structures == 19
    seed = read_dataset(store, rows[0]["dataset"])
    np.testing.assert_array_equal(ds.positions[: seed.n_atoms], seed.positions)
    for s in range(15, 19):
        atoms = ds.atoms(s)
        ref = atoms.copy()
        ref.calc = EMT()
        np.testing.assert_allclose(ds.energy[s], ref.get_potential_energy(), rtol=0, atol=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), ref.get_forces(), rtol=0, atol=1e-10)
    # only the new structures were featurized
    assert rows[1]["featurized_atoms"] == rows[2]["featurized_atoms"] == 2 * 32
    labels = LabelStore(tmp_path / "workspace" / "active" / "labels")
    assert len(labels.keys()) == 4

    # MLflow: a parent run and one run per iteration
    import mlflow

    client = mlflow.MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name("altest-active")
    runs = client.search_runs([exp.experiment_id])
    names = sorted(r.info.run_name for r in runs)
    assert names == ["altest-active", "iteration-0", "iteration-1", "iteration-2"]
    parent = next(r for r in runs if r.info.run_name == "altest-active")
    assert parent.data.tags["atompipe.stopped"] == "budget"  # 4 labels of a budget of 4
    it2 = next(r for r in runs if r.info.run_name == "iteration-2")
    assert it2.data.metrics["dataset_size"] == 19
    assert it2.data.metrics["labels_added"] == 4
    assert "force_calibration_spearman" in it2.data.metrics

    # a rerun: every stage is found; nothing is labelled or featurized again
    again = run_active(cfg)
    assert [r["labels_computed"] for r in again["iterations"]] == [0, 0, 0]
    assert again["dataset"] == out["dataset"]
    assert [r["model"] for r in again["iterations"]] == [r["model"] for r in rows]
    assert len(labels.keys()) == 4


def test_failed_reference_calculations_are_left_out_and_counted(tmp_path, shipped, prefect_harness):
    import json

    from atomistic.active import LabelStore, structure_key
    from atomistic.data import read_dataset
    from flows.active import run_active

    ase.io.write(tmp_path / "cu.extxyz", ase.io.read(shipped["cu"], ":15"))
    state = tmp_path / "failing.json"  # the calculator's own record of what it did
    calculator = "tests.integration.failing_emt:FailingEMT"
    labelling = {"calculator": calculator, "allow": [calculator], "params": {"state": str(state)}}
    campaign = {**CAMPAIGN, "active": {**CAMPAIGN["active"], "labelling": labelling}}
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(campaign))
    cfg = load_campaign(tmp_path / "campaign.yaml")
    out = run_active(cfg)

    seen = json.loads(state.read_text())
    failed = {k for k, v in seen.items() if v == "failed"}
    labelled = {k for k, v in seen.items() if v == "labelled"}
    assert failed and labelled  # the loop met failures and went on
    rows = out["iterations"]
    assert [r["iteration"] for r in rows] == [0, 1, 2]
    assert sum(r["labels_failed"] for r in rows) == len(failed)
    assert rows[-1]["labels_added"] == len(labelled)
    # the dataset grew by the labelled structures only, with EMT's labels
    ds = read_dataset(cfg.store_url, out["dataset"])
    assert ds.n_structures == 15 + len(labelled)
    assert {structure_key(ds.atoms(s)) for s in range(15, ds.n_structures)} == labelled
    for s in range(15, ds.n_structures):
        ref = ds.atoms(s)
        ref.calc = EMT()
        np.testing.assert_allclose(ds.energy[s], ref.get_potential_energy(), rtol=0, atol=1e-10)
    assert set(LabelStore(tmp_path / "workspace" / "active" / "labels").keys()) == labelled

    import mlflow

    client = mlflow.MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name("altest-active")
    runs = client.search_runs([exp.experiment_id])
    recorded = {r.info.run_name: r.data.metrics.get("labels_failed") for r in runs}
    assert sum(recorded[f"iteration-{k}"] for k in range(3)) == len(failed)

    # a rerun meets the same failures and finds every other stage
    again = run_active(cfg)
    assert again["dataset"] == out["dataset"]
    assert [r["model"] for r in again["iterations"]] == [r["model"] for r in rows]


def test_each_serve_trigger_runs_one_more_iteration(tmp_path, shipped, prefect_harness):
    """What a run of the deployment of ``atompipe serve`` runs, called here twice: one more
    iteration each time, then nothing once the budget is spent."""
    import mlflow

    from flows.deploy import build_deployment, run_trigger

    ase.io.write(tmp_path / "cu.extxyz", ase.io.read(shipped["cu"], ":15"))
    cfg = _load(tmp_path)
    deployment = build_deployment(cfg, cron="0 3 * * *")  # what `serve` would register
    assert deployment.flow_name == "atompipe-active"
    assert deployment.parameters["new_iterations"] == 1

    client = mlflow.MlflowClient(cfg.tracking_uri)

    def recorded() -> list[str]:
        exp = client.get_experiment_by_name("altest-active")
        names = [r.info.run_name for r in client.search_runs([exp.experiment_id])]
        return sorted(n for n in names if n.startswith("iteration-") and n != "iteration-0")

    first = run_trigger(cfg)
    assert [r["iteration"] for r in first["iterations"]] == [0, 1]
    assert first["stopped"] == "paused" and first["new_iterations"] == 1
    assert recorded() == ["iteration-1"]

    second = run_trigger(cfg)
    assert [r["iteration"] for r in second["iterations"]] == [0, 1, 2]
    assert second["new_iterations"] == 1
    assert [r["labels_computed"] for r in second["iterations"]] == [0, 0, 2]  # 1 was found
    assert [r["model"] for r in second["iterations"][:2]] == [
        r["model"] for r in first["iterations"]
    ]
    assert recorded() == ["iteration-1", "iteration-2"]

    third = run_trigger(cfg)  # the budget (4 labels) is spent: no iteration more
    assert third["stopped"] == "budget" and third["new_iterations"] == 0
    assert recorded() == ["iteration-1", "iteration-2"]


def test_a_gaussian_process_on_forces_drives_the_loop(tmp_path, shipped, prefect_harness):
    """A sparse GP on energies and forces in place of the committee, its uncertainty computed
    at the snapshots only (``check_every``): its predicted force standard deviations rank the
    explored snapshots, and the two most uncertain are labelled."""
    from atomistic.data import read_dataset
    from atomistic.models import load_model
    from flows.active import run_active

    ase.io.write(tmp_path / "cu.extxyz", ase.io.read(shipped["cu"], ":15"))
    gp = {"type": "gaussianprocess", "features": "g", "forces": True, "n_sparse": 30}
    gp.update({"optimize": False, "sigma": 2.0, "energy_noise": 0.002, "force_noise": 0.02})
    active = {**CAMPAIGN["active"], "model": "gp", "iterations": 1, "budget": 2}
    # u only at the snapshots: the steps between run on the GP's means alone
    active["exploration"] = {**active["exploration"], "check_every": 5}
    campaign = {**CAMPAIGN, "models": {"gp": gp}, "active": active}
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(campaign))
    cfg = load_campaign(tmp_path / "campaign.yaml")
    out = run_active(cfg)

    rows = out["iterations"]
    assert [r["labels_added"] for r in rows] == [0, 2]
    assert rows[1]["test_force_mae"] is not None and "force_calibration_spearman" in rows[1]
    # the snapshots' uncertainties are the first GP's predicted force stds, u = max_i |sigma_i|
    (explored,) = (tmp_path / "workspace" / "active" / "explore").glob("*.extxyz")
    frames = ase.io.read(explored, ":")
    first = load_model(tmp_path / "workspace" / "models" / rows[0]["model"])
    std = np.linalg.norm(first.predict_atoms(frames, forces=True)["forces_std"], axis=1)
    ends = np.cumsum([len(f) for f in frames])
    u = np.array([part.max() for part in np.split(std, ends[:-1])])
    assert u.min() > 0
    np.testing.assert_allclose([f.info["uncertainty"] for f in frames], u, rtol=1e-6)
    # diversity none, threshold 0: the two most uncertain were labelled and appended
    ds = read_dataset(cfg.store_url, out["dataset"])
    assert ds.n_structures == 17
    for s, k in zip(range(15, 17), sorted(np.argsort(-u)[:2]), strict=True):
        np.testing.assert_allclose(ds.atoms(s).positions, frames[k].positions, atol=1e-12)
