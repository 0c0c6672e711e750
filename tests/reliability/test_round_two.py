"""Reliability, round two (issue 15): silent corruption, stale caches, artifacts rebuilt,
writes outside the campaign.

One good campaign (16 Cu structures, Gaussian features, KRR, sqlite MLflow) is run once per
module; each test damages it or a copy of it and runs ``atompipe run`` again (in this process,
against the session's Prefect API), then checks the exit status, the one ``error:`` line, the
bytes of the store and of the models, and what was written where.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
import pytest
from reliability_support import (
    cli,
    copy_campaign,
    error_lines,
    snapshot,
    write_campaign,
    write_cu,
)

from atomistic.features.store import read_features


@dataclass
class Campaign:
    folder: Path
    file: Path
    store: Path
    models: Path
    dataset_key: str
    feature_key: str


def _campaign(folder: Path) -> Campaign:
    work = folder / "workspace"
    store = work / "store.zarr"
    (dkey,) = [p.name for p in (store / "datasets").iterdir() if p.is_dir()]
    (fkey,) = [p.name for p in (store / "features").iterdir() if p.is_dir()]
    return Campaign(folder, folder / "campaign.yaml", store, work / "models", dkey, fkey)


@pytest.fixture(scope="module")
def good(prefect_api, tmp_path_factory) -> Campaign:
    folder = tmp_path_factory.mktemp("round-two")
    write_cu(folder / "cu.extxyz")
    campaign = write_campaign(folder)
    from flows.cli import app

    assert not app(["run", str(campaign), "--quiet"], prog_name="atompipe", standalone_mode=False)
    return _campaign(folder)


def _reference_features(c: Campaign) -> np.ndarray:
    """The campaign's Gaussian features computed directly from the structure file."""
    from atomistic.features import featurizer_from_params

    f = featurizer_from_params("gaussian", {"cutoff": 4.0, "elements": ["Cu"]})
    return np.concatenate(f.featurize(ase.io.read(c.folder / "cu.extxyz", ":")), axis=0)


# -- 1. silent corruption ----------------------------------------------------------------------
def test_a_deleted_feature_chunk_is_recomputed_never_read_as_zeros(good, tmp_path, capfd):
    c = _campaign(copy_campaign(good.folder, tmp_path / "copy"))
    values = c.store / "features" / c.feature_key / "values"
    chunks = sorted(p for p in values.rglob("c/*/*") if p.is_file())
    assert len(chunks) >= 4
    original = {p: p.read_bytes() for p in chunks}
    chunks[1].unlink()  # Zarr alone would read these rows back as zeros (its fill value)
    models_before = set(c.models.glob("*/card.json"))
    code, err = cli(["run", c.file, "--quiet", "--set", "models.krr.sigma=2.0"], capfd)
    assert code == 0, err[-3000:]
    assert {p: p.read_bytes() for p in chunks} == original  # the one chunk computed again
    X, _ = read_features(str(c.store), c.feature_key)
    np.testing.assert_allclose(X, _reference_features(c), rtol=0, atol=1e-12)
    assert len(set(c.models.glob("*/card.json")) - models_before) == 1  # the changed model


def test_a_damaged_feature_chunk_is_recomputed(good, tmp_path, capfd):
    c = _campaign(copy_campaign(good.folder, tmp_path / "copy"))
    chunk = sorted((c.store / "features" / c.feature_key / "values").rglob("c/*/*"))[0]
    original = chunk.read_bytes()
    chunk.write_bytes(original[:-7] + b"\x00" * 7)  # flipped bytes, same length
    code, err = cli(["run", c.file, "--quiet", "--set", "models.krr.sigma=3.0"], capfd)
    assert code == 0, err[-3000:]
    assert chunk.read_bytes() == original


def test_a_deleted_dataset_chunk_is_an_error_naming_the_key(good, tmp_path, capfd):
    c = _campaign(copy_campaign(good.folder, tmp_path / "copy"))
    (chunk,) = (c.store / "datasets" / c.dataset_key / "positions").rglob("c/*/*")
    chunk.unlink()
    before = snapshot(c.store, c.models)
    code, err = cli(["run", c.file, "--quiet", "--set", "models.krr.sigma=2.0"], capfd)
    assert code == 1, err[-3000:]
    (line,) = error_lines(err)
    assert re.search(
        rf"datasets/{c.dataset_key}: array positions does not match its checksum", line
    )
    assert "Traceback" not in err
    with capfd.disabled():
        print(f"\nCASE deleted dataset chunk exit {code}: {line}")
    assert snapshot(c.store, c.models) == before


# -- 2. cache keys and existence checks --------------------------------------------------------
def test_the_ingest_key_covers_the_format_asE_infers_from_the_suffix(good, capfd):
    """The same bytes as ``.traj`` are not extxyz to ASE: no cached dataset may stand in."""
    traj = good.folder / "cu.traj"
    traj.write_bytes((good.folder / "cu.extxyz").read_bytes())
    campaign = write_campaign(good.folder, "traj.yaml", **{"datasets.cu.paths": ["cu.traj"]})
    before = snapshot(good.store, good.models)
    code, err = cli(["run", campaign, "--quiet"], capfd)
    assert code == 1, err[-3000:]
    (line,) = error_lines(err)
    assert re.search(r"cu\.traj: cannot read as a structure file", line), line
    with capfd.disabled():
        print(f"\nCASE extxyz bytes named .traj exit {code}: {line}")
    assert snapshot(good.store, good.models) == before


def test_a_deleted_model_folder_is_retrained_and_evaluated_again(good, capfd):
    from atomistic.models.base import AtomisticModel

    (model,) = [p.parent for p in good.models.glob("*/card.json")]
    evaluation = json.loads((model / "evaluation.json").read_text())
    shutil.rmtree(model)  # Prefect's records of training and evaluating it remain
    code, err = cli(["run", good.file, "--quiet"], capfd)
    assert code == 0, err[-3000:]
    assert (model / "card.json").exists()
    again = json.loads((model / "evaluation.json").read_text())
    assert again["split"] == "test" and again["n_structures"] == evaluation["n_structures"]
    # the metric against the labels, computed here from the model's own predictions
    images = ase.io.read(good.folder / "cu.extxyz", ":")
    from atomistic.data import read_split

    test = read_split(str(good.store), good.dataset_key, (0.75, 0.125, 0.125), 0)["test"]
    m = AtomisticModel.load(model)
    chosen = [images[i] for i in test]
    pred = m.predict_atoms(chosen, forces=False)["energy"]
    truth = np.array([a.get_potential_energy() for a in chosen])
    n = np.array([len(a) for a in chosen])
    mae = np.mean(np.abs(pred - truth) / n)
    assert again["energy_mae_per_atom"] == pytest.approx(mae, rel=1e-6, abs=1e-9)


# -- 3. nothing written outside the campaign ---------------------------------------------------
def test_a_copied_campaign_writes_only_inside_its_own_folder(good, tmp_path, capfd):
    before = snapshot(good.folder)
    c = _campaign(copy_campaign(good.folder, tmp_path / "copy"))
    code, err = cli(["run", c.file, "--quiet", "--set", "models.krr.lamda=1e-5"], capfd)
    assert code == 0, err[-3000:]
    assert snapshot(good.folder) == before  # the original folder: not one byte changed
    with sqlite3.connect(c.folder / "workspace" / "mlflow.db") as con:
        (location,) = con.execute("SELECT artifact_location FROM experiments WHERE name='rel'")
        uris = [r[0] for r in con.execute("SELECT artifact_uri FROM runs")]
    assert location[0] == (c.folder / "workspace" / "mlartifacts").resolve().as_uri()
    assert uris and all(u.startswith(location[0] + "/") for u in uris)
    assert list((c.folder / "workspace" / "mlartifacts").rglob("card.json"))
