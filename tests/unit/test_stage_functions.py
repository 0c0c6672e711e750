"""The stages' plain functions (tasks/pipeline/) run without Prefect: a kernel model trained and
evaluated on a tiny stored dataset, its evaluation checked against the model's own predictions
from structures, recomputed with numpy; the scaler against one fitted by hand; active
learning's labels and grown dataset against EMT and the featurizer called directly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.calculators.emt import EMT
from atoms_factory import cu_images

from atomistic.data import Dataset, read_dataset, read_split, write_dataset
from atomistic.features import featurizer_from_params
from atomistic.features.scaling import Scaler
from atomistic.features.store import read_features
from atomistic.models import load_model
from tasks.featurize import featurize_dataset
from tasks.pipeline import data, pool
from tasks.pipeline import models as work
from tasks.pipeline.common import model_dir
from tasks.refs import DatasetRef, FeatureRef, ModelRef, ScalerRef

ROOT = Path(__file__).resolve().parents[2]
SPLIT = {"fractions": [0.6, 0.2, 0.2], "seed": 0}
CONFIG = {"type": "kernelridge", "features": "g", "kernel": "rbf", "sigma": 1.0, "lamda": 1e-5}


@pytest.fixture(scope="module")
def stored(tmp_path_factory) -> tuple[FeatureRef, ScalerRef, str]:
    """Features and a scaler of 15 Cu structures (4 atoms each) in a fresh store."""
    base = tmp_path_factory.mktemp("stages")
    store = str(base / "store.zarr")
    key, _ = write_dataset(
        Dataset.from_atoms(cu_images(15, seed=3)), store, split=SPLIT["fractions"]
    )
    features = FeatureRef.of(featurize_dataset(store, key, "gaussian", {"cutoff": 4.0}))
    train = read_split(store, key, tuple(SPLIT["fractions"]), SPLIT["seed"])["train"]
    X, _ = read_features(store, features.key, train)
    scaler = data.fit_scaler(features, "minmax", (-1.0, 1.0), False, SPLIT["fractions"], 0)
    assert scaler.scaler == Scaler("minmax", (-1.0, 1.0)).fit(X).to_dict()
    return features, scaler, str(base / "ws")


def test_no_prefect_is_imported_by_the_plain_functions():
    names = ("common", "data", "encoder", "models", "active", "pool", "record")
    modules = ", ".join(f"tasks.pipeline.{m}" for m in names)
    code = f"import sys, {modules}; print(sorted(m for m in sys.modules if 'prefect' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert out.stdout.strip() == "[]"


def test_train_model_saves_under_its_key_once(stored):
    features, scaler, ws = stored
    ref = work.train_model("krr", features, scaler, CONFIG, SPLIT, ws)
    key = work.model_key(features, scaler, CONFIG, SPLIT)
    assert isinstance(ref, ModelRef) and ref.trained and ref.fit_time_s is not None
    assert (ref.key, ref.dir, ref.dataset) == (key, str(model_dir(ws, key)), features.dataset)
    assert work.model_exists("krr", features, scaler, CONFIG, SPLIT, ws)
    # the JSON forms give the same key; a second call finds the model and fits nothing
    assert work.model_key(features.to_dict(), scaler.to_dict(), CONFIG, SPLIT) == key
    again = work.train_model("krr", features, scaler, CONFIG, SPLIT, ws)
    assert again.trained is False and again.fit_time_s is None


def test_evaluate_model_matches_numpy_on_the_models_own_predictions(stored):
    features, scaler, ws = stored
    trained = work.train_model("krr", features, scaler, CONFIG, SPLIT, ws)
    assert not work.evaluation_done(trained.dir)
    ref = work.evaluate_model(trained, features, scaler, SPLIT, "test", plots=True)
    saved = json.loads((Path(trained.dir) / "evaluation.json").read_text())
    assert ref.metrics == saved and saved["split"] == "test"
    assert work.evaluation_done(trained.dir) and work.evaluation_exists(ref.to_dict())
    assert ref.artifacts and all(Path(p).exists() for p in ref.artifacts)

    # independent: the loaded model predicts from the structures (its featurizer and scaler),
    # not from the cached features the evaluation read
    test = read_split(features.store, features.dataset, tuple(SPLIT["fractions"]), 0)["test"]
    ds = read_dataset(features.store, features.dataset).subset(test)
    assert saved["n_structures"] == ds.n_structures == len(test) > 0
    pred = load_model(trained.dir).predict_atoms(ds.to_atoms(), forces=True)
    n = np.diff(ds.offsets)
    mae = np.mean(np.abs(pred["energy"] - ds.energy) / n)
    force_mae = np.mean(np.abs(np.concatenate(pred["forces"]) - ds.forces))
    assert saved["energy_mae_per_atom"] == pytest.approx(mae, rel=1e-6, abs=1e-10)
    assert saved["force_mae"] == pytest.approx(force_mae, rel=1e-6, abs=1e-10)


def test_an_empty_split_part_is_an_error_naming_it(stored):
    features, scaler, ws = stored
    trained = work.train_model("krr", features, scaler, CONFIG, SPLIT, ws)
    empty = {"fractions": [0.8, 0.2, 0.0], "seed": 0}
    with pytest.raises(ValueError, match="the test split .* is empty"):
        work.evaluate_model(trained, features, scaler, empty, "test", plots=False)


def test_labels_and_the_grown_dataset_match_emt_and_the_featurizer(stored, tmp_path):
    features, _, ws = stored
    frames = cu_images(3, seed=9)
    for atoms in frames:
        atoms.calc = None
    explored = {"path": str(tmp_path / "explored.extxyz")}
    ase.io.write(explored["path"], frames, format="extxyz")
    labelling = {"calculator": "emt", "params": {}, "allow": []}

    labels = pool.label_stage(explored, [0, 2], labelling, ws, n_workers=1)
    assert labels["computed"] == 2 and len(labels["keys"]) == 2
    assert pool.label_stage(explored, [0, 2], labelling, ws, n_workers=1)["computed"] == 0

    old = read_dataset(features.store, features.dataset)
    parent = DatasetRef(store=features.store, key=features.dataset, summary=old.summary())
    grown, grown_features = pool.grow_stage(parent, features, explored, [0, 2], labels)
    assert grown.parent == parent.key and grown.summary["structures"] == old.n_structures + 2
    assert grown_features.dataset == grown.key and grown_features.featurized_atoms == 8
    ds = read_dataset(features.store, grown.key)
    stored_frames = ase.io.read(explored["path"], ":")  # as written: positions rounded
    new = [stored_frames[0], stored_frames[2]]
    for atoms in new:
        atoms.calc = EMT()
    emt = [a.get_potential_energy() for a in new]
    np.testing.assert_allclose(ds.energy[old.n_structures :], emt, rtol=1e-12)
    X, _ = read_features(features.store, grown_features.key)
    X_old, _ = read_features(features.store, features.key)
    direct = featurizer_from_params(features.featurizer, features.params)
    tail = Dataset.from_atoms(new)
    X_new = direct.featurize_arrays(tail.numbers, tail.positions, tail.cell, tail.pbc, tail.offsets)
    np.testing.assert_array_equal(X[: len(X_old)], X_old)
    np.testing.assert_allclose(X[len(X_old) :], X_new, rtol=1e-12, atol=1e-12)


def test_the_select_stage_applies_the_campaigns_trust_window(tmp_path):
    from flows.config_active import ActiveSelection
    from tasks.pipeline.active import select_stage

    frames = cu_images(6, seed=3)
    for t, atoms in enumerate(frames):
        atoms.calc = None
        atoms.info.update(step=10 * t, trajectory=0)
    explored = {"path": str(tmp_path / "explored.extxyz")}
    explored["uncertainty"] = [0.1, 0.5, 3.0, 0.9, 2.5, 0.7]
    ase.io.write(explored["path"], frames, format="extxyz")
    settings = ActiveSelection(threshold=0.25, diversity="none", upper_factor=3.0)
    settings = {**settings.model_dump(mode="json"), "upper": 2.0}
    # window 0.25-0.75 eV/Å: of the five above the threshold only 0.5 and 0.7 may be picked
    picked = select_stage(explored, None, None, None, [], settings, 4, seed=0)
    assert picked["indices"] == [1, 5] and picked["threshold"] == 0.25
    without = select_stage(explored, None, None, None, [], {**settings, "upper_factor": None}, 4, 0)
    assert without["indices"] == [1, 3, 5]  # 2.5 and 3.0 are above the trust bound 2.0
    with pytest.raises(ValueError, match="greater than 1"):
        ActiveSelection(upper_factor=1.0)
