"""The one saved-model base (:mod:`atomistic.models.saved`): every registered model class, the
supervised ones and the autoencoders, round-trips through the same ``save``/``load``; the card
keeps the keys of the format already on disk; a card naming an unregistered class or a file whose
sha256 does not match is refused with an error naming the file; the content keys of the
autoencoders are the ones the format has always produced."""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings

import numpy as np
import pytest
import torch
from atoms_factory import cu_images, make_data

from atomistic.models import (
    VAE,
    AtomisticModel,
    AutoEncoder,
    GaussianProcess,
    KernelRidge,
    ModelFileError,
    NeuralNetwork,
    NotFittedError,
    TrainingConfig,
    TrainingWarning,
    load_autoencoder,
    load_model,
)
from atomistic.models.autoencoders import ENCODER_CLASSES
from atomistic.models.saved import SavedModel, load_saved

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py

LAYERS = {"encoder": (6, 3), "decoder": (3, 6)}
SUPERVISED = {
    "nn": lambda: NeuralNetwork((6,), "silu", training=TrainingConfig(epochs=3, seed=1)),
    "krr": lambda: KernelRidge(sigma=2.0, lamda=1e-4),
    "gp": lambda: GaussianProcess(sigma=2.0, noise=1e-3, optimize=False),
    "sparse_krr": lambda: KernelRidge(sigma=2.0, forces=True, n_sparse=5),
    "sparse_gp": lambda: GaussianProcess(sigma=2.0, forces=True, n_sparse=5, optimize=False),
}
ENCODERS = {"ae": AutoEncoder, "vae": VAE}

# the card keys of the format on disk (format_version 1), written before the shared base existed
SUPERVISED_CARD = {
    "model", "hyperparameters", "featurizer", "scaler", "elements", "training_dataset_key",
    "metrics", "state", "format_version", "files",
}  # fmt: skip
ENCODER_CARD = {
    "model", "hyperparameters", "elements", "n_features", "latent_dim", "feature_key", "config",
    "weights_sha256", "encoder_key", "history", "format_version", "files",
}  # fmt: skip


def _codes_data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return np.tanh(rng.normal(size=(60, 5))), np.array([1, 6, 8] * 20)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> (fitted model, its directory) for every model class."""
    root = tmp_path_factory.mktemp("saved")
    data = make_data(cu_images(8))
    out = {}
    for name, make in SUPERVISED.items():
        with warnings.catch_warnings():  # 3 epochs learn little; that is not tested here
            warnings.simplefilter("ignore", TrainingWarning)
            model = make().fit(data)
        out[name] = (model, model.save(root / name, metrics={"test_mae": 0.25}))
    X, z = _codes_data()
    for name, cls in ENCODERS.items():
        config = TrainingConfig(epochs=3, seed=4)
        model = cls(LAYERS).fit(X, z, config=config, feature_key="fk")
        out[name] = (model, model.save(root / name))
    return out


def test_every_registered_class_is_covered(saved):
    """Every registered class without registered subclasses (the concrete models; bases such as
    AtomisticModel have subclasses), and AutoEncoder, is round-tripped below."""
    registered = SavedModel.registered()
    leaves = {
        name
        for name, k in registered.items()
        if not any(o is not k and issubclass(o, k) for o in registered.values())
    }
    covered = {type(model).__name__ for model, _ in saved.values()}
    assert leaves | {"AutoEncoder"} <= covered, f"not round-tripped: {sorted(leaves - covered)}"
    assert {"NeuralNetwork", "KernelRidge", "GaussianProcess", "AutoEncoder", "VAE"} <= covered


@pytest.mark.parametrize("name", list(SUPERVISED))
def test_supervised_round_trip_through_the_one_base(name, saved):
    model, path = saved[name]
    loaded = load_saved(path)
    assert type(loaded) is type(model) and isinstance(loaded, SavedModel)
    assert loaded._json_params() == model._json_params()
    images = cu_images(3, seed=21)
    mine, theirs = model.predict_atoms(images), loaded.predict_atoms(images)
    assert set(mine) == set(theirs)
    np.testing.assert_array_equal(theirs["energy"], mine["energy"])
    np.testing.assert_array_equal(np.concatenate(theirs["forces"]), np.concatenate(mine["forces"]))
    if "energy_std" in mine:
        np.testing.assert_array_equal(theirs["energy_std"], mine["energy_std"])
    card = json.loads((path / "card.json").read_text())
    assert set(card) == SUPERVISED_CARD
    assert card["metrics"]["test_mae"] == 0.25 and loaded.metrics_["test_mae"] == 0.25
    for fname, digest in card["files"].items():  # sha256 of every file, computed here
        assert hashlib.sha256((path / fname).read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("name", list(ENCODERS))
def test_encoder_round_trip_through_the_one_base(name, saved):
    model, path = saved[name]
    loaded = load_saved(path)
    assert type(loaded) is type(model) and isinstance(loaded, SavedModel)
    assert loaded.get_params() == model.get_params()
    X, z = _codes_data()
    np.testing.assert_array_equal(loaded.encode(X, z), model.encode(X, z))
    np.testing.assert_array_equal(loaded.reconstruct(X, z), model.reconstruct(X, z))
    card = json.loads((path / "card.json").read_text())
    assert set(card) == ENCODER_CARD
    weights = (path / "weights.safetensors").read_bytes()
    assert hashlib.sha256(weights).hexdigest() == card["weights_sha256"] == loaded.weights_sha256
    assert card["files"] == {"weights.safetensors": card["weights_sha256"]}
    assert card["encoder_key"] == loaded.encoder_key == model.encoder_key


def test_encoder_key_is_the_formats_content_hash():
    """The unfitted key, recomputed here from its definition and pinned to the value the format
    produced before the shared base (a changed key would orphan every cached latent stage)."""
    pinned = {
        AutoEncoder: "8c99ecc4fe2f611ffcfe96dad4c5a3bfd985a7725bceb2b92309b2b4ac8abfef",
        VAE: "0641e43c5cebf3d5378238112709dca4848e00f28ed0aeb336438d45d9b48b61",
    }
    for cls, key in pinned.items():
        model = cls()  # the default layers
        payload = {"format": 1, "class": cls.__name__, "params": model.get_params()}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        assert model.encoder_key == hashlib.sha256(text.encode()).hexdigest() == key


def test_fitted_encoder_key_covers_the_saved_weights(saved):
    model, path = saved["ae"]
    payload = {
        "format": 1,
        "class": "AutoEncoder",
        "params": model.get_params(),
        "config": {**model.config_.to_dict(), "checkpoint_dir": None},
        "feature_key": "fk",
        "elements": ["H", "C", "O"],
        "weights": hashlib.sha256((path / "weights.safetensors").read_bytes()).hexdigest(),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    assert model.encoder_key == hashlib.sha256(text.encode()).hexdigest()


def _copy(path, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


@pytest.mark.parametrize("name", ["nn", "ae"])
def test_unregistered_class_is_refused_naming_the_card(name, saved, tmp_path):
    path = _copy(saved[name][1], tmp_path)
    card = json.loads((path / "card.json").read_text())
    card["model"] = "NoSuchModel"
    (path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match=r"copy/card\.json: unknown model class 'NoSuchModel'"):
        load_saved(path)


@pytest.mark.parametrize(
    ("name", "fname"),
    [
        ("krr", "training.safetensors"),
        ("nn", "weights.safetensors"),
        ("vae", "weights.safetensors"),
    ],
)
def test_sha256_mismatch_is_refused_naming_the_file(name, fname, saved, tmp_path):
    path = _copy(saved[name][1], tmp_path)
    f = path / fname
    blob = bytearray(f.read_bytes())
    blob[-1] ^= 1
    f.write_bytes(bytes(blob))
    with pytest.raises(
        ModelFileError, match=rf"copy/{fname}: sha256 [0-9a-f]{{64}} does not match"
    ):
        load_saved(path)


def test_families_do_not_load_as_each_other(saved):
    with pytest.raises(ModelFileError, match="holds a AutoEncoder, not a AtomisticModel"):
        load_model(saved["ae"][1])
    with pytest.raises(ModelFileError, match="holds a NeuralNetwork, not a AutoEncoder"):
        load_autoencoder(saved["nn"][1])
    with pytest.raises(ModelFileError, match="holds a KernelRidge, not a GaussianProcess"):
        GaussianProcess.load(saved["krr"][1])
    assert type(AtomisticModel.load(saved["gp"][1])) is GaussianProcess


def test_one_registry_with_views_per_family():
    assert SavedModel.registered()["VAE"] is VAE
    assert SavedModel.registered()["KernelRidge"] is KernelRidge
    assert set(ENCODER_CLASSES) >= {"AutoEncoder", "VAE"} and "KernelRidge" not in ENCODER_CLASSES
    assert ENCODER_CLASSES.get("VAE") is VAE and ENCODER_CLASSES.get("NeuralNetwork") is None
    assert "VAE" not in AtomisticModel.registered()
    assert AtomisticModel.registered()["NeuralNetwork"] is NeuralNetwork


def test_parameters_and_the_fitted_check():
    nn = NeuralNetwork((6, 4), "tanh", training=TrainingConfig(epochs=2))
    params = nn._json_params()
    assert params["hiddenlayers"] == [6, 4] and params["training"]["epochs"] == 2
    again = NeuralNetwork(**NeuralNetwork._params_from_json(json.loads(json.dumps(params))))
    assert again.hiddenlayers == (6, 4) and again._config() == nn._config()
    krr = KernelRidge(sigma=3.0)
    assert repr(krr).startswith("KernelRidge(kernel='rbf', sigma=3.0, lamda=1e-05")
    assert KernelRidge(**krr._json_params()).get_params() == krr.get_params()
    vae = VAE(LAYERS, beta=0.5)
    assert vae._json_params() == vae.get_params()  # already JSON: the card holds it as is
    assert repr(vae) == (
        "VAE(hiddenlayers={'encoder': [6, 3], 'decoder': [3, 6]}, activation='tanh', "
        "per_element=True, variant='multivariate', beta=0.5, annealing=None)"
    )
    with pytest.raises(NotFittedError, match=r"KernelRidge is not fitted yet.*load_model\(\)"):
        krr.predict_atoms(cu_images(1))
    with pytest.raises(NotFittedError, match=r"VAE is not fitted yet.*load\(\)"):
        vae.encode(np.zeros((1, 5)), [1])
    for model in (krr, vae):
        with pytest.raises(NotFittedError):
            model.save("never-written")


def test_loaded_autoencoder_weights_must_hash_to_the_card(saved, tmp_path):
    """The file's own sha256 is consistent, but the card's weights_sha256 is not."""
    path = _copy(saved["ae"][1], tmp_path)
    card = json.loads((path / "card.json").read_text())
    card["weights_sha256"] = "0" * 64
    (path / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelFileError, match="do not hash to the card's"):
        load_autoencoder(path)
    assert torch.equal(
        next(iter(load_autoencoder(saved["ae"][1]).module_.state_dict().values())),
        next(iter(saved["ae"][0].module_.state_dict().values())),
    )
