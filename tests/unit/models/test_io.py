"""Saving and loading: a fresh process predicts the same numbers; tampered or pickled weight
files are refused with an error naming the file."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
from conftest import cu_images

from atomistic.models import (
    GaussianProcess,
    KernelRidge,
    ModelFileError,
    NeuralNetwork,
    TrainingConfig,
    load_model,
)

MODELS = {
    "nn": lambda: NeuralNetwork((6,), "silu", training=TrainingConfig(epochs=3, seed=1)),
    "krr": lambda: KernelRidge(sigma=2.0, lamda=1e-4),
    "gp": lambda: GaussianProcess(sigma=2.0, noise=1e-3, optimize=False),
}

_CHILD = """
import json, sys
import numpy as np
from ase.io import read
from atomistic.models import load_model
model = load_model(sys.argv[1])
out = model.predict_atoms(read(sys.argv[2], ":"))
print(json.dumps({k: np.concatenate(v).tolist() if k == "forces" else np.asarray(v).tolist()
                  for k, v in out.items()}))
"""


@pytest.fixture(scope="module")
def saved(tmp_path_factory, cu_data):
    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, make in MODELS.items():
        model = make().fit(cu_data)
        out[name] = (model, model.save(root / name, metrics={"test_mae": 0.1}))
    return out


@pytest.mark.parametrize("name", list(MODELS))
def test_reload_in_fresh_process_predicts_the_same(name, saved, tmp_path):
    from ase.io import write

    model, path = saved[name]
    images = cu_images(3, seed=21)
    write(tmp_path / "x.traj", images)
    mine = model.predict_atoms(images)
    res = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path), str(tmp_path / "x.traj")],
        capture_output=True,
        text=True,
        check=True,
    )
    theirs = json.loads(res.stdout)
    np.testing.assert_allclose(theirs["energy"], mine["energy"], rtol=0, atol=1e-10)
    np.testing.assert_allclose(theirs["forces"], np.concatenate(mine["forces"]), atol=1e-10)
    if name == "gp":
        np.testing.assert_allclose(theirs["energy_std"], mine["energy_std"], rtol=1e-10)


def test_card_contents(saved):
    model, path = saved["nn"]
    card = json.loads((path / "card.json").read_text())
    assert card["model"] == "NeuralNetwork"
    assert card["hyperparameters"]["hiddenlayers"] == [6]
    assert card["hyperparameters"]["training"]["epochs"] == 3
    assert card["featurizer"]["name"] == model.featurizer_.name
    assert card["elements"] == ["Cu"] and card["metrics"]["test_mae"] == 0.1
    assert card["training_dataset_key"] == model.dataset_key_
    assert set(card["files"]) == {"weights.safetensors"} and len(card["scaler"]["scale"]) == 8
    again = load_model(path)
    assert isinstance(again, NeuralNetwork) and again.get_params()["hiddenlayers"] == (6,)


def _copy(path, tmp_path):
    import shutil

    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


def test_tampered_weights_are_refused(saved, tmp_path):
    path = _copy(saved["krr"][1], tmp_path)
    f = path / "training.safetensors"
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="training.safetensors.*sha256"):
        load_model(path)


def test_pickle_is_never_loaded(saved, tmp_path):
    path = _copy(saved["nn"][1], tmp_path)
    f = path / "weights.safetensors"

    class Boom:
        def __reduce__(self):
            return (print, ("UNPICKLED",))

    f.write_bytes(pickle.dumps({"w": Boom()}))
    card = json.loads((path / "card.json").read_text())
    import hashlib

    card["files"]["weights.safetensors"] = hashlib.sha256(f.read_bytes()).hexdigest()
    (path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="weights.safetensors: not a safetensors file"):
        load_model(path)


def test_missing_card_and_wrong_class(tmp_path, saved):
    with pytest.raises(ModelFileError, match="no model card"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="not a KernelRidge"):
        KernelRidge.load(saved["nn"][1])
    with pytest.raises(Exception, match="not fitted"):
        KernelRidge().save(tmp_path / "x")
