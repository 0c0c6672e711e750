"""AutoEncoder and VAE: shapes, seeded determinism, persistence without pickle, content keys,
the VAE's loss terms against torch.distributions, the annealing schedule's closed form, and
reconstruction of low-rank data through a 4-D bottleneck."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from ase.build import molecule

from atomistic.models.autoencoders import VAE, AutoEncoder, load_autoencoder
from atomistic.models.base import NotFittedError
from atomistic.models.io import ModelFileError
from atomistic.models.training import TrainingConfig

LAYERS = {"encoder": (16, 8, 4), "decoder": (4, 8, 16)}
N_FEATURES = 10

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _features(n_molecules: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Rattled ethanol molecules; each atom's features are a smooth per-element map of its
    position relative to the centre of mass (a 3-D manifold in 10-D), min-max scaled to about
    [-1, 1] with fixed constants. Returns X (n_atoms, 10) and numbers (n_atoms,)."""
    rng = np.random.default_rng(seed)
    W = np.random.default_rng(1234).normal(size=(3, 3, N_FEATURES))  # one map per element
    X, numbers = [], []
    for _ in range(n_molecules):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(stdev=0.15, seed=int(rng.integers(2**31)))
        atoms.rotate(rng.uniform(-5, 5), "z")  # small rotations: still a smooth 3-D family
        u = atoms.positions - atoms.get_center_of_mass()  # shape (atoms, 3)
        elem = np.searchsorted([1, 6, 8], atoms.numbers)
        X.append(np.tanh(np.einsum("ni,nif->nf", u / 2.0, W[elem])))
        numbers.append(atoms.numbers)
    return np.concatenate(X), np.concatenate(numbers)


@pytest.fixture(scope="module")
def data():
    return _features(48, seed=0), _features(16, seed=1)


CONFIG = TrainingConfig(epochs=60, batch_size=64, lr=1e-2, seed=0)


@pytest.fixture(scope="module")
def ae(data):
    (X, z), _ = data
    return AutoEncoder(LAYERS).fit(X, z, config=CONFIG, feature_key="gaussian-abc")


@pytest.fixture(scope="module")
def vae(data):
    (X, z), _ = data
    return VAE(LAYERS).fit(X, z, config=TrainingConfig(epochs=30, batch_size=64, lr=1e-2))


def _state(model):
    return {k: v.clone() for k, v in model.module_.state_dict().items()}


@pytest.mark.parametrize("per_element", [True, False])
@pytest.mark.parametrize("cls", [AutoEncoder, VAE])
def test_shapes(data, cls, per_element):
    (X, z), (Xt, zt) = data
    model = cls(LAYERS, per_element=per_element).fit(X, z, config=TrainingConfig(epochs=2))
    keys = set(model.module_.nets)
    assert keys == ({"H", "C", "O"} if per_element else {"all"})
    assert model.elements_ == ["H", "C", "O"]
    assert model.encode(Xt, zt).shape == (len(Xt), 4)
    assert model.encode(Xt, zt).dtype == np.float64
    assert model.decode(np.zeros((5, 4)), [1, 6, 8, 8, 1]).shape == (5, N_FEATURES)
    assert model.reconstruct(Xt, zt).shape == Xt.shape
    assert np.isfinite(model.reconstruction_error(Xt, zt))
    if cls is VAE:
        assert model.sample(7, "C", seed=3).shape == (7, N_FEATURES)


def test_rows_in_any_order_give_the_same_codes(ae, data):
    _, (Xt, zt) = data
    perm = np.random.default_rng(0).permutation(len(Xt))
    np.testing.assert_array_equal(ae.encode(Xt, zt)[perm], ae.encode(Xt[perm], zt[perm]))
    oxygen = zt == 8
    np.testing.assert_allclose(ae.encode(Xt[oxygen], zt[oxygen]), ae.encode(Xt, zt)[oxygen])


@pytest.mark.parametrize("cls", [AutoEncoder, VAE])
def test_two_fits_with_one_seed_give_identical_weights(data, cls):
    (X, z), _ = data
    config = TrainingConfig(epochs=4, batch_size=32, seed=7)
    a, b = (cls(LAYERS).fit(X, z, config=config) for _ in range(2))
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.encoder_key == b.encoder_key
    c = cls(LAYERS).fit(X, z, config=TrainingConfig(epochs=4, batch_size=32, seed=8))
    assert not all(torch.equal(sa[k], v) for k, v in _state(c).items())
    assert c.encoder_key != a.encoder_key


def test_ae_reconstructs_held_out_low_rank_data(ae, data):
    _, (Xt, zt) = data
    mse = ae.reconstruction_error(Xt, zt)
    assert mse < 0.05 * Xt.var(), (mse, Xt.var())


def test_unfitted_model_is_refused():
    for method, args in [
        ("encode", (np.zeros((2, 3)), [1, 1])),
        ("decode", (np.zeros((2, 4)), [1, 1])),
    ]:
        with pytest.raises(NotFittedError, match="not fitted"):
            getattr(AutoEncoder(), method)(*args)
    with pytest.raises(NotFittedError):
        VAE().sample(3, "H")
    with pytest.raises(NotFittedError):
        AutoEncoder().save("unused")


def test_bad_inputs_are_refused(ae, data):
    (X, z), _ = data
    with pytest.raises(ValueError, match=r"Cu"):
        ae.encode(X[:2], [29, 1])
    with pytest.raises(ValueError, match="10 features"):
        ae.encode(X[:2, :5], z[:2])
    with pytest.raises(ValueError, match="latent size 4"):
        AutoEncoder({"encoder": (8, 4), "decoder": (3, 8)}).fit(
            X, z, config=TrainingConfig(epochs=1)
        )
    with pytest.raises(ValueError, match="activation"):
        AutoEncoder(activation="swish-ish").fit(X, z, config=TrainingConfig(epochs=1))


def test_save_and_load_without_pickle(ae, data, tmp_path, monkeypatch):
    _, (Xt, zt) = data
    directory = ae.save(tmp_path / "ae")
    blob = (directory / "weights.safetensors").read_bytes()
    assert not blob.startswith((b"\x80", b"PK"))  # neither a pickle nor a torch zip archive

    def no_torch_load(*args, **kwargs):
        raise AssertionError("torch.load must not be used")

    monkeypatch.setattr(torch, "load", no_torch_load)
    loaded = load_autoencoder(directory)
    assert type(loaded) is AutoEncoder
    np.testing.assert_array_equal(loaded.encode(Xt, zt), ae.encode(Xt, zt))
    assert loaded.encoder_key == ae.encoder_key
    assert loaded.get_params() == ae.get_params()
    import json

    card = json.loads((directory / "card.json").read_text())
    assert card["latent_dim"] == 4 and card["elements"] == ["H", "C", "O"]
    assert card["feature_key"] == "gaussian-abc"
    assert card["files"]["weights.safetensors"] == card["weights_sha256"] == ae.weights_sha256


def test_vae_roundtrip_and_class_check(vae, tmp_path):
    directory = vae.save(tmp_path / "vae")
    loaded = VAE.load(directory)
    np.testing.assert_array_equal(loaded.sample(4, "O", seed=1), vae.sample(4, "O", seed=1))
    assert loaded.kl_history_ == vae.kl_history_
    with pytest.raises(ModelFileError, match="not a VAE"):
        VAE.load(
            AutoEncoder(LAYERS)
            .fit(np.zeros((4, 3)), [1] * 4, config=TrainingConfig(epochs=1))
            .save(tmp_path / "ae")
        )


def test_tampered_weights_are_refused(ae, tmp_path):
    directory = ae.save(tmp_path / "ae")
    path = directory / "weights.safetensors"
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(blob))
    with pytest.raises(ModelFileError, match="sha256"):
        AutoEncoder.load(directory)


def test_encoder_key_changes_with_the_encoder(ae, data):
    (X, z), _ = data
    base = AutoEncoder(LAYERS)
    assert base.encoder_key == AutoEncoder(LAYERS).encoder_key
    assert base.encoder_key != AutoEncoder(LAYERS, activation="relu").encoder_key
    assert base.encoder_key != AutoEncoder({"encoder": (16, 3), "decoder": (3, 16)}).encoder_key
    assert base.encoder_key != VAE(LAYERS).encoder_key
    assert VAE(LAYERS).encoder_key != VAE(LAYERS, beta=0.5).encoder_key
    assert ae.encoder_key != base.encoder_key  # fitted: config, feature key and weights enter
    other_features = AutoEncoder(LAYERS).fit(X, z, config=CONFIG, feature_key="gaussian-xyz")
    assert other_features.weights_sha256 == ae.weights_sha256
    assert other_features.encoder_key != ae.encoder_key
    nudged = AutoEncoder(LAYERS).fit(X, z, config=CONFIG, feature_key="gaussian-abc")
    assert nudged.encoder_key == ae.encoder_key
    with torch.no_grad():
        next(nudged.module_.parameters())[0, 0] += 1e-9
    assert nudged.encoder_key != ae.encoder_key


def test_vae_loss_terms_match_torch_distributions(vae, data):
    """KL(q || N(0, I)) and the Gaussian NLL against torch.distributions, per atom."""
    from torch.distributions import Normal, kl_divergence

    _, (Xt, zt) = data
    x = torch.as_tensor(Xt[zt == 6])
    module = vae.module_.eval()
    counts = [0, len(x), 0]  # H, C, O
    q = module.encode(x, counts)
    p = module.decode(q["mean"], counts)
    prior = Normal(torch.zeros_like(q["mean"]), torch.ones_like(q["mean"]))
    kl_ref = kl_divergence(Normal(q["mean"], torch.exp(0.5 * q["logvar"])), prior).sum(1).mean()
    nll_ref = -Normal(p["mean"], torch.exp(0.5 * p["logvar"])).log_prob(x).sum(1).mean()
    out = vae._loss(module, (x, counts))
    torch.testing.assert_close(out["kl"], kl_ref.detach())
    torch.testing.assert_close(out["reconstruction"], nll_ref.detach())
    torch.testing.assert_close(out["loss"], (nll_ref + vae.beta * kl_ref).detach())
    assert vae.kl_divergence(Xt[zt == 6], zt[zt == 6]) == pytest.approx(float(kl_ref.detach()))


def test_vae_kl_is_finite_and_positive(vae, data):
    _, (Xt, zt) = data
    assert len(vae.kl_history_) == vae.history_.epochs_completed == 30
    assert all(math.isfinite(k) and k > 0 for k in vae.kl_history_)
    assert np.isfinite(vae.reconstruction_error(Xt, zt))
    assert np.all(np.isfinite(vae.sample(100, "H", seed=0)))


def test_vae_samples_are_seeded(vae):
    np.testing.assert_array_equal(vae.sample(5, "C", seed=2), vae.sample(5, "C", seed=2))
    assert not np.array_equal(vae.sample(5, "C", seed=2), vae.sample(5, "C", seed=3))
    with pytest.raises(ValueError, match="Cu"):
        vae.sample(2, "Cu")


@pytest.mark.parametrize(
    ("epochs", "cycles", "ratio", "expected"),
    [  # Fu et al. 2019: tau = mod(t, ceil(T/M)) / (T/M), beta_t = beta * min(1, tau / R)
        (100, 4, 0.5, {0: 0.0, 5: 0.4, 12: 0.96, 13: 1.0, 24: 1.0, 25: 0.0, 30: 0.4, 99: 1.0}),
        (10, 3, 0.5, {0: 0.0, 1: 0.6, 2: 1.0, 3: 1.0, 4: 0.0, 5: 0.6, 8: 0.0, 9: 0.6}),
        (20, 1, 1.0, {0: 0.0, 10: 0.5, 19: 0.95}),
    ],
)
def test_cyclical_annealing_closed_form(epochs, cycles, ratio, expected):
    vae = VAE(beta=2.0, annealing={"kind": "cyclical", "cycles": cycles, "ratio": ratio})
    for epoch, value in expected.items():
        assert vae.beta_schedule(epoch, epochs) == pytest.approx(2.0 * value, abs=1e-12)
    assert VAE(beta=0.3).beta_schedule(17, 100) == 0.3
    monotonic = VAE(annealing={"kind": "monotonic", "ratio": 0.25})
    assert monotonic.beta_schedule(5, 40) == pytest.approx(0.5)
    assert monotonic.beta_schedule(39, 40) == 1.0


def test_training_uses_the_schedule(data):
    (X, z), _ = data
    vae = VAE(LAYERS, annealing={"kind": "cyclical", "cycles": 2, "ratio": 0.5})
    vae.fit(X, z, config=TrainingConfig(epochs=8, batch_size=128, lr=1e-2))
    used = vae.history_.metrics["train_beta"]
    assert used == pytest.approx([vae.beta_schedule(e) for e in range(8)])
    assert used == pytest.approx([0, 0.5, 1, 1, 0, 0.5, 1, 1])
    # the monitored objective weighs the KL fully at every epoch
    assert vae.history_.metrics["val_beta"] == pytest.approx([1.0] * 8)
    with pytest.raises(ValueError, match="annealing"):
        VAE(annealing={"kind": "sigmoid"}).fit(X, z, config=TrainingConfig(epochs=1))
    with pytest.raises(ValueError, match="more than 4 epochs"):
        VAE(annealing={"kind": "cyclical", "cycles": 4}).fit(X, z, config=TrainingConfig(epochs=4))


def test_resumed_training_continues_the_schedule(data, tmp_path):
    """A run interrupted after 3 of 6 epochs and rerun with the same configuration resumes from its
    checkpoint and ends as an uninterrupted run (the KL weight is a buffer of the module, so the
    checkpoint carries it)."""
    (X, z), _ = data
    annealing = {"kind": "cyclical", "cycles": 2, "ratio": 0.5}
    config = TrainingConfig(epochs=6, batch_size=128, lr=1e-2, checkpoint_dir=str(tmp_path))
    full = VAE(LAYERS, annealing=annealing).fit(
        X, z, config=TrainingConfig(epochs=6, batch_size=128, lr=1e-2)
    )

    class Interrupted(Exception):
        pass

    def interrupt(epoch, metrics):
        if epoch == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        VAE(LAYERS, annealing=annealing).fit(X, z, config=config, callback=interrupt)
    resumed = VAE(LAYERS, annealing=annealing).fit(X, z, config=config)
    assert resumed.history_.resumed_from == 3
    assert resumed.history_.metrics["train_beta"] == full.history_.metrics["train_beta"]
    np.testing.assert_array_equal(resumed.encode(X, z), full.encode(X, z))


def test_bernoulli_refuses_out_of_range_input(data):
    (X, z), _ = data
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        VAE(LAYERS, variant="bernoulli").fit(X, z, config=TrainingConfig(epochs=1))
    X01 = (X - X.min(0)) / (X.max(0) - X.min(0))
    model = VAE(LAYERS, variant="bernoulli").fit(X01, z, config=TrainingConfig(epochs=3))
    decoded = model.reconstruct(X01, z)
    assert decoded.min() >= 0.0 and decoded.max() <= 1.0
    assert all(math.isfinite(k) for k in model.kl_history_)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.encode(X[:3], z[:3])
    with pytest.raises(ValueError, match="variant"):
        VAE(variant="poisson").fit(X01, z, config=TrainingConfig(epochs=1))
