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
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
import psutil
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from reliability_support import (
    atompipe_cmd,
    atompipe_env,
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
def test_deleted_or_damaged_feature_chunks_are_recomputed_never_read_as_zeros(
    good, tmp_path, capfd
):
    c = _campaign(copy_campaign(good.folder, tmp_path / "copy"))
    values = c.store / "features" / c.feature_key / "values"
    chunks = sorted(p for p in values.rglob("c/*/*") if p.is_file())
    assert len(chunks) >= 4
    original = {p: p.read_bytes() for p in chunks}
    chunks[1].unlink()  # Zarr alone would read these rows back as zeros (its fill value)
    chunks[2].write_bytes(original[chunks[2]][:-7] + b"\x00" * 7)  # damaged, same length
    models_before = set(c.models.glob("*/card.json"))
    code, err = cli(["run", c.file, "--quiet", "--set", "models.krr.sigma=2.0"], capfd)
    assert code == 0, err[-3000:]
    assert {p: p.read_bytes() for p in chunks} == original  # both chunks computed again
    X, _ = read_features(str(c.store), c.feature_key)
    np.testing.assert_allclose(X, _reference_features(c), rtol=0, atol=1e-12)
    assert len(set(c.models.glob("*/card.json")) - models_before) == 1  # the changed model


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
def test_the_ingest_key_covers_the_format_ase_infers_from_the_suffix(good, capfd):
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
def _locations(folder: Path) -> tuple[str, list[str]]:
    with sqlite3.connect(folder / "workspace" / "mlflow.db") as con:
        (location,) = con.execute("SELECT artifact_location FROM experiments WHERE name='rel'")
        uris = [r[0] for r in con.execute("SELECT artifact_uri FROM runs")]
    return location[0], uris


def test_a_copied_or_moved_campaign_writes_only_inside_its_own_folder(good, tmp_path, capfd):
    before = snapshot(good.folder)
    c = _campaign(copy_campaign(good.folder, tmp_path / "copy"))
    code, err = cli(["run", c.file, "--quiet", "--set", "models.krr.lamda=1e-5"], capfd)
    assert code == 0, err[-3000:]
    assert snapshot(good.folder) == before  # the original folder: not one byte changed
    location, uris = _locations(c.folder)
    assert location == (c.folder / "workspace" / "mlartifacts").resolve().as_uri()
    assert uris and all(u.startswith(location + "/") for u in uris)
    assert list((c.folder / "workspace" / "mlartifacts").rglob("card.json"))
    # the copy moved elsewhere: its next run writes where it now is, and not where it was
    moved = tmp_path / "moved"
    c.folder.rename(moved)
    code, err = cli(["run", moved / "campaign.yaml", "--quiet"], capfd)
    assert code == 0, err[-3000:]
    location, uris = _locations(moved)
    assert location == (moved / "workspace" / "mlartifacts").resolve().as_uri()
    assert uris and all(u.startswith(location + "/") for u in uris)
    assert not c.folder.exists()


# -- 5.-9., 12. bad input: one line naming the culprit, before any work, store unchanged -------
def _cu(n: int = 3) -> list:
    from reliability_support import CU

    return ase.io.read(CU, f":{n}")


def _file(c: Campaign, name: str, images) -> str:
    ase.io.write(c.folder / name, images)
    return name


def _run(c: Campaign, name: str, **changes) -> list:
    return ["run", write_campaign(c.folder, f"{name}.yaml", **changes), "--quiet"]


def _nn(**extra) -> dict:
    return {"type": "neuralnetwork", "features": "g", "hiddenlayers": [4], **extra}


def c_cutoff_inf(c):
    return _run(c, "inf", **{"features.g.cutoff": float("inf")}), r"features\.g\.cutoff: inf is not"


def c_lr_nan(c):
    changes = {"models.nn": _nn(training={"lr": float("nan")})}
    return _run(c, "nan", **changes), r"models\.nn\.training\.lr: nan is not a finite number"


def c_width_zero(c):
    changes = {"models.nn": _nn(hiddenlayers=[0])}
    return _run(c, "w0", **changes), r"models\.nn\.hiddenlayers\.0: Input should be greater"


def c_width_negative(c):
    changes = {"models.nn": _nn(hiddenlayers=[-5])}
    return _run(c, "w-5", **changes), r"models\.nn\.hiddenlayers\.0: Input should be greater"


def c_encoder_width_zero(c):
    enc = {"hiddenlayers": {"encoder": [4, 0], "decoder": [4]}}
    changes = {"features.lat": {"type": "latent", "source": "g", "encoder": enc}}
    return _run(c, "enc0", **changes), r"features\.lat\.encoder\.hiddenlayers\.encoder: layer"


def f_cutoff_huge(c):
    changes = {"features.g.cutoff": 1e6}
    culprit = r"features\.g\.cutoff: a cutoff of 1e\+06 Å gives about .* neighbours per atom"
    return _run(c, "huge", **changes), culprit


def f_force_training_without_forces(c):
    images = _cu(8)
    for a in images:
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy())  # energies only
    changes = {
        "datasets.cu.paths": [_file(c, "noforces.extxyz", images)],
        "models.nn": _nn(force_weight=1.0),
    }
    culprit = r"models\.nn: trains on forces \(force_weight 1\.0\) but dataset cu has no forces"
    return _run(c, "noforces", **changes), culprit


def f_forces_under_another_name(c):
    """`force` instead of `forces`: without forces_key the dataset has none, named as above."""
    images = _cu(8)
    for a in images:
        a.new_array("force", a.get_forces())
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy())
    changes = {
        "datasets.cu.paths": [_file(c, "force.extxyz", images)],
        "models.nn": _nn(force_weight=1.0),
    }
    return _run(c, "force", **changes), r"models\.nn: trains on forces .*forces_key"


def f_training_diverges(c):
    """A fit that fails mid-campaign: its own error is the last line, not the evaluation
    stage's "Run is in PENDING state" (that stage never ran)."""
    changes = {"models.nn": _nn(training={"lr": 1e30, "epochs": 3, "scheduler": None})}
    culprit = r"campaign rel failed: models\.nn: train-model: non-finite training loss nan$"
    return _run(c, "diverge", **changes), culprit


def _zero_volume(c) -> str:
    a = _cu(1)[0]
    cell = a.cell.array.copy()
    cell[2] = cell[0] + cell[1]  # three vectors in one plane
    a.set_cell(cell)
    return _file(c, "flat.extxyz", [a])


def f_zero_volume_cell(c):
    changes = {"datasets.cu.paths": [_zero_volume(c)]}
    return _run(c, "flat", **changes), r"flat\.extxyz, structure 0: the periodic cell has zero vol"


def _energy_abc(c) -> str:
    (c.folder / "abc.extxyz").write_text(
        '2\nLattice="3.6 0 0 0 3.6 0 0 0 3.6" Properties=species:S:1:pos:R:3 energy=abc '
        'pbc="T T T"\nCu 0 0 0\nCu 1.8 1.8 0\n'
    )
    return "abc.extxyz"


def f_energy_not_a_number(c):
    changes = {"datasets.cu.paths": [_energy_abc(c)]}
    return _run(c, "abc", **changes), r"abc\.extxyz, structure 0: energy 'abc' is not a number"


def z_ingest_zero_volume(c):
    args = ["ingest", c.folder / _zero_volume(c), "--store", c.store]
    return args, r"^error: .*flat\.extxyz, structure 0: the periodic cell has zero volume"


def z_ingest_energy_not_a_number(c):
    args = ["ingest", c.folder / _energy_abc(c), "--store", c.store]
    return args, r"^error: .*abc\.extxyz, structure 0: energy 'abc' is not a number$"


def z_featurize_param_not_a_number(c):
    args = ["featurize", c.dataset_key, "--store", c.store, "--param", "cutoff=abc"]
    return args, r"^error: --param cutoff: Input should be a valid number"


CASES = [
    c_cutoff_inf,
    c_lr_nan,
    c_width_zero,
    c_width_negative,
    c_encoder_width_zero,
    f_cutoff_huge,
    f_force_training_without_forces,
    f_forces_under_another_name,
    f_training_diverges,
    f_zero_volume_cell,
    f_energy_not_a_number,
    z_ingest_zero_volume,
    z_ingest_energy_not_a_number,
    z_featurize_param_not_a_number,
]


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__)
def test_bad_input_is_one_line_naming_the_culprit_before_any_work(make, good, capfd):
    args, culprit = make(good)
    before = snapshot(good.store, good.models)
    code, err = cli(args, capfd)
    assert code == 1, err[-3000:]
    (line,) = error_lines(err)
    assert re.search(culprit, line), line
    assert err.strip().splitlines()[-1] == line and "Traceback" not in err, err[-3000:]
    with capfd.disabled():
        print(f"\nCASE {make.__name__} exit {code}: {line}")
    assert snapshot(good.store, good.models) == before


def test_forces_key_reads_forces_stored_under_another_name(tmp_path):
    from atomistic.data import load_files

    images = _cu(3)
    expected = np.concatenate([a.get_forces() for a in images])
    for a in images:
        a.new_array("force", a.get_forces())
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy())
    ase.io.write(tmp_path / "force.extxyz", images)
    assert load_files([tmp_path / "force.extxyz"]).forces is None
    ds = load_files([tmp_path / "force.extxyz"], forces_key="force")
    np.testing.assert_array_equal(ds.forces, expected)


# -- 10. the tracking store and the UI server --------------------------------------------------
def test_a_truncated_mlflow_db_fails_before_training_naming_the_file(good, tmp_path, capfd):
    c = _campaign(copy_campaign(good.folder, tmp_path / "copy"))
    db = c.folder / "workspace" / "mlflow.db"
    with db.open("r+b") as fh:
        fh.truncate(db.stat().st_size // 2)
    before = snapshot(c.store, c.models)
    code, err = cli(["run", c.file, "--quiet", "--set", "models.krr.sigma=2.0"], capfd)
    assert code == 1, err[-3000:]
    (line,) = error_lines(err)
    assert re.search(
        r"tracking\.uri: .*/workspace/mlflow\.db: the MLflow tracking database is", line
    )
    with capfd.disabled():
        print(f"\nCASE truncated mlflow.db exit {code}: {line}")
    assert snapshot(c.store, c.models) == before  # nothing trained


def test_ui_on_a_port_in_use_fails(good, capfd):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, err = cli(["ui", good.file, "--port", port], capfd)
    assert code == 1, err
    (line,) = error_lines(err)
    assert re.search(rf"--port {port}: cannot listen on 127\.0\.0\.1:{port}", line), line


def test_the_ui_server_dies_with_atompipe_ui(good, prefect_api):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        atompipe_cmd("ui", str(good.file), "--port", str(port)),
        env=atompipe_env(prefect_api),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    children: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                assert proc.poll() is None, "atompipe ui ended before serving"
                time.sleep(0.3)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children
        proc.send_signal(signal.SIGTERM)  # `kill <pid of atompipe ui>`
        proc.wait(timeout=30)
        gone, alive = psutil.wait_procs(children, timeout=15)
        assert not alive, alive
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
    finally:
        for p in [*children, psutil.Process(proc.pid) if proc.poll() is None else None]:
            if p is not None and p.is_running():
                p.kill()


# -- 11. the champion ----------------------------------------------------------------------------
def test_the_champion_is_compared_only_on_the_same_dataset_and_split(good, tmp_path, capfd):
    from mlflow import MlflowClient

    c = _campaign(copy_campaign(good.folder, tmp_path / "copy"))
    client = MlflowClient(f"sqlite:///{c.folder / 'workspace' / 'mlflow.db'}")
    held = client.get_model_version_by_alias("rel-champion", "champion").version
    write_cu(c.folder / "other.extxyz", n=16, start=16)  # other structures of the same system
    for changes in (["split.seed=1"], ["datasets.cu.paths=[other.extxyz]"]):
        args = ["run", c.file, "--quiet", *(x for ch in changes for x in ("--set", ch))]
        code, err = cli(args, capfd)
        assert code == 0, err[-3000:]
        assert client.get_model_version_by_alias("rel-champion", "champion").version == held
        versions = client.search_model_versions("name='rel-champion'")
        assert [v.version for v in versions] == [held], changes


# -- 8. duplicates ---------------------------------------------------------------------------
def test_duplicates_are_counted_and_kept_within_one_split(tmp_path, capfd):
    from atomistic.data import read_split

    images = _cu(12)
    copies = {12: 0, 13: 5, 14: 5, 15: 9}  # index of the copy -> its original
    images += [images[i].copy() for i in copies.values()]
    for k, i in copies.items():  # copies keep their labels
        images[k].calc = SinglePointCalculator(
            images[k], energy=images[i].get_potential_energy(), forces=images[i].get_forces()
        )
    ase.io.write(tmp_path / "dup.extxyz", images)
    store = tmp_path / "store.zarr"
    from flows.cli import app

    capfd.readouterr()
    args = ["ingest", str(tmp_path / "dup.extxyz"), "--store", str(store), "--json"]
    assert not app(args, prog_name="atompipe", standalone_mode=False)
    summary = json.loads(capfd.readouterr().out)
    assert summary["duplicates"] == len(copies) and summary["structures"] == 16
    for seed in range(4):  # the stored split and others: every copy stays with its original
        parts = read_split(str(store), summary["key"], (0.5, 0.25, 0.25), seed)
        where = {int(s): name for name, idx in parts.items() for s in idx}
        assert sorted(where) == list(range(16))
        assert all(where[k] == where[i] for k, i in copies.items()), (seed, where)


# -- 15. what a store error is ---------------------------------------------------------------
def test_an_oserror_of_the_callers_own_file_is_not_a_store_error(tmp_path):
    from atomistic.storage import Store, StoreError

    store = Store(tmp_path / "store.zarr")
    with pytest.raises(FileNotFoundError, match="nothere.extxyz") as info:
        with store.writing("datasets", "k" * 64):
            open(tmp_path / "nothere.extxyz").close()  # the caller's source file, not the store
    assert not isinstance(info.value, StoreError)
    with pytest.raises(StoreError, match=r"cannot write datasets/k{64} to the store .*No space"):
        with store.writing("datasets", "k" * 64):
            raise OSError(28, "No space left on device")  # a failed write names no file
    assert not store.has("datasets", "k" * 64)
    assert not [p for p in (tmp_path / "store.zarr" / ".staging").iterdir() if p.is_dir()]
