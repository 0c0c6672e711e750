"""``atompipe latent``: a trained encoder's codes in the store, checked against the encoder applied
to features scaled independently (scikit-learn's MinMaxScaler on the training split)."""

from __future__ import annotations

import re

import ase.io
import numpy as np
import pytest
from sklearn.preprocessing import MinMaxScaler
from typer.testing import CliRunner

from atomistic.data import load_files, read_dataset, read_split, write_dataset
from atomistic.features.store import read_features
from atomistic.models.autoencoders import load_autoencoder
from flows.cli import app
from tasks.featurize import featurize_dataset

runner = CliRunner()


@pytest.fixture(scope="module")
def stored(tmp_path_factory, shipped):
    d = tmp_path_factory.mktemp("latent")
    ase.io.write(d / "cu.extxyz", ase.io.read(shipped["cu"], ":60"))
    store = str(d / "store.zarr")
    key, _ = write_dataset(load_files([d / "cu.extxyz"]), store)
    ref = featurize_dataset(store, key, "gaussian", {"cutoff": 5.0})
    return d, store, key, ref["key"]


def _latent(d, store, fkey, *args):
    result = runner.invoke(
        app, ["latent", fkey, "--store", store, "--workspace", str(d / "ws"), *args]
    )
    assert result.exit_code == 0, result.output
    return result.output, re.search(r"^latent ([0-9a-f]{64})$", result.output, re.M).group(1)


def test_latent_command_writes_the_encoder_codes(stored):
    d, store, dkey, fkey = stored
    args = ["--encoder", "8,3", "--epochs", "150", "--map", str(d / "map.png")]
    out, lkey = _latent(d, store, fkey, *args)

    split = read_split(store, dkey, (0.8, 0.1, 0.1), 0)
    X, _ = read_features(store, fkey)
    offsets = read_dataset(store, dkey).offsets
    rows = {
        k: np.concatenate([np.arange(offsets[s], offsets[s + 1]) for s in v])
        for k, v in split.items()
    }
    sk = MinMaxScaler((-1, 1)).fit(X[rows["train"]])
    Xs = sk.transform(X)
    numbers = read_dataset(store, dkey).numbers

    enc_dir = re.search(r"encoder\s+(\S+)", out).group(1)
    encoder = load_autoencoder(enc_dir)
    Z, z_offsets = read_features(store, lkey, kind="latent")
    np.testing.assert_array_equal(z_offsets, offsets)
    np.testing.assert_allclose(Z, encoder.encode(Xs, numbers), rtol=0, atol=1e-9)
    assert Z.shape == (len(X), 3)

    # held-out atoms: the reconstruction error is well below the scaled features' variance
    te = rows["test"]
    mse = float(np.mean((encoder.reconstruct(Xs[te], numbers[te]) - Xs[te]) ** 2))
    var = float(Xs[te].var(axis=0).mean())
    assert mse < 0.25 * var, (mse, var)
    printed = float(re.search(r"reconstruction MSE \(test\)\s+(\S+)", out).group(1))
    assert printed == pytest.approx(mse, rel=1e-3)
    assert (d / "map.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # the same command again reuses the encoder; another width gives another key
    card = next((d / "ws" / "models").glob("*/card.json")).stat().st_mtime_ns
    _, again = _latent(d, store, fkey, *args)
    assert again == lkey
    assert next((d / "ws" / "models").glob("*/card.json")).stat().st_mtime_ns == card
    _, other = _latent(d, store, fkey, "--encoder", "8,2", "--epochs", "5")
    assert other != lkey


def test_vae_samples_and_bad_requests(stored):
    d, store, _, fkey = stored
    out, _ = _latent(
        d,
        store,
        fkey,
        "--kind",
        "vae",
        "--encoder",
        "8,2",
        "--epochs",
        "10",
        "--samples",
        "7",
        "--samples-out",
        str(d / "s.npz"),
    )
    kl = float(re.search(r"KL per atom \(test, nats\)\s+(\S+)", out).group(1))
    assert np.isfinite(kl) and kl >= 0
    with np.load(d / "s.npz", allow_pickle=False) as f:
        assert f["Cu"].shape == (7, read_features(store, fkey)[0].shape[1])
        assert np.isfinite(f["Cu"]).all()

    for args, needle in [
        (["0" * 64], "no complete features entry"),
        ([fkey, "--encoder", "8,0"], "--encoder"),
        ([fkey, "--kind", "pca"], "kind"),
        ([fkey, "--samples", "3"], "--samples needs --kind vae"),
    ]:
        result = runner.invoke(app, ["latent", *args, "--store", store])
        assert result.exit_code == 1 and needle in result.output, result.output
