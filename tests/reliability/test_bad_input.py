"""Bad input end to end, through the ``atompipe`` command line and the Prefect campaign flow.

One table of cases. Each runs a command against a workspace that a good campaign has already
filled (dataset, features, a trained model, MLflow), and must give: a non-zero exit status,
exactly one ``error:`` line that names the culprit (file, key, address, element), and a store
and model folder whose every byte is unchanged. docs/reliability.md lists the same cases.

"config" cases fail while the campaign file is validated; "flow" cases run the Prefect flow
(real API, real Dask LocalCluster) and fail inside it; "predict" and "featurize" cases use the
other commands; "process" cases run ``atompipe run`` in a subprocess with a read-only workspace
(file-permission checks enforced on root by dropping CAP_DAC_OVERRIDE) or a full disk
(RLIMIT_FSIZE).
"""

from __future__ import annotations

import ctypes
import os
import pickle
import re
import resource
import shutil
import socket
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from reliability_support import (
    CU,
    atompipe_env,
    cli,
    run_atompipe,
    snapshot,
    write_campaign,
    write_cu,
)

from flows.cli import app


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Ws:
    """The good campaign's folder, workspace and trained model."""

    folder: Path
    campaign: Path
    store: Path
    models: Path
    model_dir: Path
    dataset_key: str


@pytest.fixture(scope="module")
def ws(prefect_api, tmp_path_factory) -> Ws:
    folder = tmp_path_factory.mktemp("bad-input")
    write_cu(folder / "cu.extxyz")
    campaign = write_campaign(folder)
    code = app(["run", str(campaign), "--quiet"], prog_name="atompipe", standalone_mode=False)
    assert not code
    work = folder / "workspace"
    (model_dir,) = [p.parent for p in (work / "models").glob("*/card.json")]
    (dataset_key,) = [p.name for p in (work / "store.zarr" / "datasets").iterdir() if p.is_dir()]
    return Ws(folder, campaign, work / "store.zarr", work / "models", model_dir, dataset_key)


# -- how each case is made: (folder, ws) -> (argv, culprit regex) ------------------------------
def _campaign(ws: Ws, name: str, **changes) -> Path:
    return write_campaign(ws.folder, f"{name}.yaml", **changes)


def _run(ws: Ws, name: str, **changes) -> list:
    return ["run", _campaign(ws, name, **changes), "--quiet"]


def _cu_images(n: int = 3) -> list:
    return ase.io.read(CU, f":{n}")


def _dataset_file(ws: Ws, name: str, images) -> str:
    ase.io.write(ws.folder / name, images)
    return name


def c_unknown_key(ws):
    changes = {"models.krr.sigmaa": 2.0}
    return _run(ws, "unknown_key", **changes), r"models\.krr\.sigmaa: unknown key"


def c_ill_typed(ws):
    return _run(
        ws, "ill_typed", **{"models.krr.sigma": "big"}
    ), r"models\.krr\.sigma: Input should be a valid number"


def c_yaml_syntax(ws):
    p = ws.folder / "syntax.yaml"
    p.write_text("name: x\ndatasets: {cu: [\n")
    return ["run", p], r"syntax\.yaml: not valid YAML at line"


def c_yaml_python_tag(ws):
    p = ws.folder / "tag.yaml"
    marker = ws.folder / "tag-executed"
    p.write_text(f'name: !!python/object/apply:os.system ["touch {marker}"]\n')
    return ["run", p], r"tag\.yaml: not valid YAML.*python/object/apply"


def c_yaml_duplicate_key(ws):
    p = ws.folder / "dup.yaml"
    p.write_text(ws.campaign.read_text() + "models: {}\n")
    return ["run", p], r"dup\.yaml: not valid YAML .*duplicate key 'models'"


def c_empty_test_split(ws):
    return _run(ws, "split", **{"split.fractions": [0.9, 0.1, 0.0]}), r"split\.fractions: .*empty"


def c_cutoff_not_positive(ws):
    return _run(
        ws, "cutoff", **{"features.g.cutoff": -1.0}
    ), r"features\.g\.cutoff: cutoff -1\.0 must be > 0"


def c_zero_feature_columns(ws):
    custom = {"G2": {"etas": []}, "G3": {"etas": []}}
    return _run(ws, "zero", **{"features.g.custom": custom}), r"features\.g: .*empty"


def c_path_escape_dotdot(ws):
    changes = {"datasets.cu.paths": ["../outside/cu.extxyz"]}
    return _run(ws, "dotdot", **changes), r"datasets\.cu\.paths: '\.\./outside/cu\.extxyz' leaves"


def c_workspace_outside(ws):
    return _run(ws, "absws", workspace="/tmp/atompipe-elsewhere"), r"workspace: '/tmp/.*' leaves"


def c_symlink_escape(ws):
    outside = Path(tempfile.mkdtemp(prefix="atompipe-outside-"))
    write_cu(outside / "cu.extxyz", n=4)
    link = ws.folder / "linked"
    if not link.exists():
        link.symlink_to(outside, target_is_directory=True)
    changes = {"datasets.cu.paths": ["linked/cu.extxyz"]}
    return _run(ws, "symlink", **changes), r"datasets\.cu\.paths: 'linked/cu\.extxyz' leaves"


def c_unknown_feature_set(ws):
    return _run(ws, "ref", **{"models.krr.features": "nope"}), r"models\.krr\.features: unknown"


def c_set_into_scalar(ws):
    args = ["run", ws.campaign, "--set", "name.first=1"]
    return args, r"--set name\.first: name is not a mapping"


def c_campaign_missing(ws):
    return ["run", ws.folder / "missing.yaml"], r"missing\.yaml: cannot read the campaign file"


def f_malformed_file(ws):
    p = ws.folder / "garbage.extxyz"
    p.write_text("3\nnot a comment\nCu 0 0 zero\n")
    return _run(ws, "malformed", **{"datasets.cu.paths": [p.name]}), r"garbage\.extxyz: cannot read"


def f_missing_energy(ws):
    images = _cu_images(3)
    images[2].calc = None
    name = _dataset_file(ws, "noenergy.extxyz", images)
    changes = {"datasets.cu.paths": [name]}
    return _run(ws, "noenergy", **changes), r"noenergy\.extxyz, structure 2: no energy"


def f_nan_positions(ws):
    images = _cu_images(3)
    images[1].positions[4, 2] = np.nan
    name = _dataset_file(ws, "nan.extxyz", images)
    return _run(ws, "nan", **{"datasets.cu.paths": [name]}), r"nan\.extxyz, structure 1: positions"


def f_overlapping_atoms(ws):
    images = _cu_images(3)
    a = images[0]
    a.positions[7] = a.positions[3] + [0.04, 0.0, 0.0]
    a.calc = SinglePointCalculator(a, energy=0.0, forces=np.zeros((len(a), 3)))
    name = _dataset_file(ws, "overlap.extxyz", images)
    changes = {"datasets.cu.paths": [name]}
    return _run(ws, "overlap", **changes), r"overlap\.extxyz, structure 0: atoms 3 and 7"


def f_empty_file(ws):
    (ws.folder / "empty.extxyz").write_text("")
    changes = {"datasets.cu.paths": ["empty.extxyz"]}
    return _run(ws, "empty", **changes), r"empty\.extxyz: empty file"


def f_missing_file(ws):
    changes = {"datasets.cu.paths": ["nothere.extxyz"]}
    return _run(ws, "nothere", **changes), r"nothere\.extxyz: no such file"


def f_empty_folder(ws):
    (ws.folder / "emptydir").mkdir(exist_ok=True)
    changes = {"datasets.cu.paths": ["emptydir"]}
    return _run(ws, "emptydir", **changes), r"emptydir: folder holds no files"


def f_too_small_for_split(ws):
    name = _dataset_file(ws, "two.extxyz", _cu_images(2))
    changes = {"datasets.cu.paths": [name]}
    return _run(ws, "two", **changes), r"two\.extxyz: 2 structure\(s\) split .* test set empty"


def f_unreachable_scheduler(ws):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    changes = {"dask.address": address, "features.g.cutoff": 3.5}  # featurization must run
    return _run(ws, "scheduler", **changes), rf"cannot reach the Dask scheduler at {address}"


def c_unreachable_mlflow(ws):
    uri = f"http://127.0.0.1:{_closed_port()}"
    changes = {"tracking.uri": uri}
    return _run(ws, "mlflow", **changes), rf"cannot reach the MLflow tracking server at {uri}"


def _predict(ws: Ws, model: Path, structures: Path) -> list:
    return ["predict", model, structures, "-o", ws.folder / "predictions.extxyz"]


def _model_copy(ws: Ws, name: str) -> Path:
    dst = ws.folder / name
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(ws.model_dir, dst)
    return dst


def p_unseen_element(ws):
    water = ws.folder / "water.xyz"
    ase.io.write(water, [molecule("H2O")])
    culprit = r"water\.xyz: element\(s\) \['H', 'O'\] were not in the training"
    return _predict(ws, ws.model_dir, water), culprit


def p_tampered_weights(ws):
    model = _model_copy(ws, "tampered")
    (weights,) = model.glob("*.safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0x01
    weights.write_bytes(bytes(data))
    culprit = rf"{weights.name}: sha256 .* does not match the model card"
    return _predict(ws, model, ws.folder / "cu.extxyz"), culprit


class _Bomb:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def p_pickle_weights(ws):
    model = _model_copy(ws, "pickled")
    (weights,) = model.glob("*.safetensors")
    weights.write_bytes(pickle.dumps(_Bomb(str(ws.folder / "pickle-executed"))))
    return _predict(ws, model, ws.folder / "cu.extxyz"), rf"{weights.name}: sha256 .* does not"


def p_pickle_with_matching_card(ws):
    """The card's sha256 updated to match the pickle: safetensors still refuses to read it."""
    import hashlib
    import json

    model = _model_copy(ws, "pickled-card")
    (weights,) = model.glob("*.safetensors")
    weights.write_bytes(pickle.dumps(_Bomb(str(ws.folder / "pickle-executed"))))
    card = json.loads((model / "card.json").read_text())
    card["files"][weights.name] = hashlib.sha256(weights.read_bytes()).hexdigest()
    (model / "card.json").write_text(json.dumps(card))
    culprit = rf"{weights.name}: not a safetensors file .*refusing to load"
    return _predict(ws, model, ws.folder / "cu.extxyz"), culprit


def p_no_card(ws):
    model = _model_copy(ws, "nocard")
    (model / "card.json").unlink()
    return _predict(ws, model, ws.folder / "cu.extxyz"), r"nocard/card\.json: no model card"


def p_nan_input(ws):
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.positions[1, 0] = np.nan
    path = ws.folder / "nanpred.extxyz"
    ase.io.write(path, [a])
    return _predict(ws, ws.model_dir, path), r"nanpred\.extxyz, structure 0: positions"


def z_featurize_unknown_dataset(ws):
    args = ["featurize", "0" * 64, "--store", ws.store, "--workers", "1"]
    return args, r"^error: /.*store\.zarr: no complete datasets entry with key 0{64}$"


CASES: list[Callable] = [
    c_unknown_key,
    c_ill_typed,
    c_yaml_syntax,
    c_yaml_python_tag,
    c_yaml_duplicate_key,
    c_empty_test_split,
    c_cutoff_not_positive,
    c_zero_feature_columns,
    c_path_escape_dotdot,
    c_workspace_outside,
    c_symlink_escape,
    c_unknown_feature_set,
    c_set_into_scalar,
    c_campaign_missing,
    f_malformed_file,
    f_missing_energy,
    f_nan_positions,
    f_overlapping_atoms,
    f_empty_file,
    f_missing_file,
    f_empty_folder,
    f_too_small_for_split,
    f_unreachable_scheduler,
    c_unreachable_mlflow,
    p_unseen_element,
    p_tampered_weights,
    p_pickle_weights,
    p_pickle_with_matching_card,
    p_no_card,
    p_nan_input,
    z_featurize_unknown_dataset,
]


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__)
def test_bad_input_one_error_naming_culprit_store_unchanged(make, ws, capfd):
    args, culprit = make(ws)
    before = snapshot(ws.store, ws.models)
    assert before  # the good campaign filled both

    code, err = cli(args, capfd)

    assert code == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err[-3000:]
    assert re.search(culprit, errors[0]), errors[0]
    print(f"\nCASE {make.__name__} exit {code}: {errors[0]}")
    assert snapshot(ws.store, ws.models) == before
    assert not (ws.folder / "predictions.extxyz").exists()
    assert not (ws.folder / "tag-executed").exists()
    assert not (ws.folder / "pickle-executed").exists()
    assert not [p for p in ws.store.glob(".staging/*") if p.is_dir()]


def test_unreachable_mlflow_in_the_flow(ws):
    """The flow itself (as a deployment runs it, without the command line's early check)
    fails at the record stage, naming the server, before any run is logged anywhere."""
    from flows.campaign import run_campaign
    from flows.config import load_campaign
    from tasks.record import TrackingError

    uri = f"http://127.0.0.1:{_closed_port()}"
    cfg = load_campaign(_campaign(ws, "mlflow_flow", **{"tracking.uri": uri}))
    before = snapshot(ws.store, ws.models)
    with pytest.raises(TrackingError, match=rf"cannot reach the MLflow tracking server at {uri}"):
        run_campaign(cfg, show_progress=False)
    assert snapshot(ws.store, ws.models) == before


# -- a read-only workspace and a full disk: `atompipe run` as a separate process ---------------
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 1, 2, 3


def _without_root_file_override() -> None:  # runs in the child before exec
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER):
        if _LIBC.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _small_file_limit() -> None:  # runs in the child before exec: files over 4 KiB fail
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


def _copy_of(ws: Ws, name: str) -> Path:
    """The good campaign folder copied where any user may enter (``tmp_path`` is root-only)."""
    dst = Path(tempfile.mkdtemp(prefix=f"atompipe-{name}-"))
    os.chmod(dst, 0o755)
    for item in ("cu.extxyz", "campaign.yaml", "workspace"):
        src = ws.folder / item
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst / item)
    return dst


def _read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            mode = p.stat().st_mode
            os.chmod(p, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_read_only_workspace(ws, prefect_api):
    folder = _copy_of(ws, "readonly")
    try:
        campaign = write_campaign(folder, "changed.yaml", **{"features.g.cutoff": 3.5})
        work = folder / "workspace"
        _read_only(work)
        before = snapshot(work)
        env = atompipe_env(prefect_api, PREFECT_HOME=str(folder / "prefect-home"))
        proc = run_atompipe(
            ["run", str(campaign), "--quiet"],
            folder,
            env,
            preexec_fn=_without_root_file_override,
            timeout=300,
        )
        assert proc.returncode == 1, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert "Permission denied" in errors[0] and str(work) in errors[0], errors[0]
        print(f"\nCASE read_only_workspace exit {proc.returncode}: {errors[0]}")
        assert snapshot(work) == before
    finally:
        for p in [folder, *folder.rglob("*")]:
            if not p.is_symlink():
                os.chmod(p, p.stat().st_mode | stat.S_IWUSR)
        shutil.rmtree(folder, ignore_errors=True)


def test_full_disk(ws, prefect_api):
    folder = _copy_of(ws, "full")
    try:
        write_cu(folder / "more.extxyz", n=16, start=100)  # a new dataset must be written
        campaign = write_campaign(folder, "more.yaml", **{"datasets.cu.paths": ["more.extxyz"]})
        work = folder / "workspace"
        before = snapshot(work / "store.zarr", work / "models")
        proc = run_atompipe(
            ["run", str(campaign), "--quiet"],
            folder,
            atompipe_env(prefect_api),
            preexec_fn=_small_file_limit,
            timeout=300,
        )
        assert proc.returncode == 1, proc.stderr[-3000:]
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert re.search(
            r"cannot write datasets/[0-9a-f]{64} to the store .*store\.zarr: "
            r"\[Errno 27\] File too large",
            errors[0],
        ), errors[0]
        print(f"\nCASE full_disk exit {proc.returncode}: {errors[0]}")
        assert snapshot(work / "store.zarr", work / "models") == before
        assert not [p for p in (work / "store.zarr").glob(".staging/*") if p.is_dir()]
    finally:
        shutil.rmtree(folder, ignore_errors=True)
