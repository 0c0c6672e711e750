"""Latent features, their labels and content keys, and the figures drawn from them."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk

from atomistic.features.latent import FORMAT_VERSION, latent_features, latent_key, latent_labels
from atomistic.models.autoencoders import VAE, AutoEncoder
from atomistic.models.training import TrainingConfig
from atomistic.plots import latent_map, learning_curve, parity_plot

LAYERS = {"encoder": (8, 3), "decoder": (3, 8)}

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def cu_features():
    """Rattled fcc Cu supercells; features: smooth functions of each atom's displacement."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 2))
    rng = np.random.default_rng(0)
    X, numbers = [], []
    for s in range(6):
        a = atoms.copy()
        a.rattle(stdev=0.1, seed=s)
        d = a.positions - atoms.positions  # shape (atoms, 3)
        X.append(np.tanh(d @ rng.normal(size=(3, 6)) * 5 + 0.1 * np.sin(a.positions[:, :1])))
        numbers.append(a.numbers)
    return np.concatenate(X), np.concatenate(numbers)


@pytest.fixture(scope="module", params=[AutoEncoder, VAE])
def encoder(request, cu_features):
    X, z = cu_features
    return request.param(LAYERS).fit(X, z, config=TrainingConfig(epochs=5), feature_key="fk")


def test_latent_features_are_the_encoder_codes(encoder, cu_features):
    X, z = cu_features
    L = latent_features(encoder, X, z)
    assert L.shape == (len(X), 3) and L.dtype == np.float64
    np.testing.assert_array_equal(L, encoder.encode(X, z))
    if isinstance(encoder, VAE):  # the posterior mean, not a sample: deterministic
        np.testing.assert_array_equal(L, latent_features(encoder, X, z))


def test_latent_labels(encoder):
    labels = latent_labels(encoder)
    assert labels == [
        {"term": "latent", "index": k, "encoder": encoder.encoder_key} for k in range(3)
    ]


def test_latent_key_is_a_content_key(encoder, cu_features):
    X, z = cu_features
    k = latent_key("features-a", encoder.encoder_key)
    assert k == latent_key("features-a", encoder.encoder_key) and len(k) == 64
    assert k != latent_key("features-b", encoder.encoder_key)
    retrained = type(encoder)(LAYERS).fit(
        X, z, config=TrainingConfig(epochs=5, seed=1), feature_key="fk"
    )
    assert k != latent_key("features-a", retrained.encoder_key)
    assert latent_key("a", "bc") != latent_key("ab", "c")  # no ambiguity from concatenation
    assert FORMAT_VERSION >= 1


def _is_png(path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_latent_map(encoder, cu_features, tmp_path):
    X, z = cu_features
    L = latent_features(encoder, X, z)
    energy = np.random.default_rng(0).normal(size=len(X))
    for path, e in [(tmp_path / "one.png", None), (tmp_path / "sub" / "two.png", energy)]:
        out = latent_map(L, z, e, path=path)
        assert out == path and _is_png(path)
    mixed = np.vstack([L, L[:5] + 1])
    assert _is_png(latent_map(mixed, np.r_[z, [1] * 5], path=tmp_path / "mixed.png"))
    with pytest.raises(ValueError):
        latent_map(L, z[:-1], path=tmp_path / "bad.png")


def test_learning_curve_and_parity_plot(encoder, tmp_path):
    assert _is_png(learning_curve(encoder.history_.to_dict(), tmp_path / "lc.png"))
    assert _is_png(learning_curve(encoder.history_.metrics, tmp_path / "lc2.png"))
    t = np.linspace(-1, 1, 30)
    assert _is_png(parity_plot(t, t + 0.01, tmp_path / "p.png", title="Energy", units="eV/atom"))
    with pytest.raises(ValueError):
        parity_plot(t, t[:-1], tmp_path / "q.png")
