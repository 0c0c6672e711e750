"""Behler–Parrinello networks: forces are -dE/dR, the fast and on-the-fly paths agree, seeded
training is reproducible, and force training lowers force errors."""

import numpy as np
import pytest
import torch
from conftest import cu_images, finite_difference_forces, make_data, molecule_images

from atomistic.metrics import evaluate
from atomistic.models import AtomicData, NeuralNetwork, NotFittedError, TrainingConfig


def _nn(**kw):
    cfg = dict(epochs=15, lr=1e-2, batch_size=8, seed=0)
    cfg.update(kw.pop("training", {}))
    return NeuralNetwork(
        hiddenlayers=(8, 8),
        activation=kw.pop("activation", "tanh"),
        dtype=kw.pop("dtype", "float64"),  # finite differences and 1e-10 comparisons
        training=TrainingConfig(**cfg),
        **kw,
    )


@pytest.mark.parametrize("which", ["cu", "mol"])
def test_forces_are_minus_energy_gradient(which, cu_data, mol_data):
    data = cu_data if which == "cu" else mol_data
    model = _nn().fit(data)
    atoms = (cu_images(1, seed=7) if which == "cu" else molecule_images(1, seed=7))[0]
    F = model.predict_atoms([atoms])["forces"][0]
    F_fd = finite_difference_forces(model, atoms)
    assert np.abs(F - F_fd).max() <= 1e-6


def test_fast_path_equals_on_the_fly(cu_data):
    model = _nn().fit(cu_data)
    fast = model.predict(cu_data)["energy"]
    slow = model.predict(
        AtomicData(cu_data.dataset, None, cu_data.featurizer, cu_data.scaler), forces=True
    )
    np.testing.assert_allclose(fast, slow["energy"], rtol=0, atol=1e-10)
    assert slow["forces"].shape == (cu_data.dataset.n_atoms, 3)


def test_output_shift_is_reference_energy(mol_data):
    model = _nn(training={"epochs": 0}, refit_shift=False).fit(mol_data)
    shift = dict(zip(model.elements_, model.module_.shift.tolist(), strict=True))
    assert shift == pytest.approx(model.reference_)
    # least squares on a fixed composition reproduces the mean energy
    ds = mol_data.dataset
    counts = {
        s: int(np.sum(ds.numbers[: ds.offsets[1]] == z))
        for s, z in zip(("H", "C", "O"), (1, 6, 8), strict=True)
    }
    assert sum(counts[s] * model.reference_[s] for s in counts) == pytest.approx(ds.energy.mean())


def test_seeded_training_is_reproducible_and_learns(cu_data):
    a = _nn().fit(cu_data)
    b = _nn().fit(cu_data)
    for (k, v), w in zip(
        a.module_.state_dict().items(), b.module_.state_dict().values(), strict=True
    ):
        assert torch.equal(v, w), k
    h = a.history_.metrics["train_energy_mse"]
    assert h[-1] < h[0]


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_force_training_lowers_force_error(optimizer, mol_data):
    train = make_data(molecule_images(16, seed=3), features=False)
    train = AtomicData(train.dataset, None, mol_data.featurizer, mol_data.scaler)
    test = AtomicData(mol_data.dataset.subset(range(8)), None, mol_data.featurizer, mol_data.scaler)
    lr = 1e-2 if optimizer == "adam" else 0.5
    errs = {}
    for fw in (0.0, 1.0):
        m = _nn(
            force_weight=fw,
            training={"epochs": 10 if optimizer == "adam" else 4, "optimizer": optimizer, "lr": lr},
        ).fit(train, test)
        errs[fw] = evaluate(test.dataset, m.predict(test, forces=True))["force_mae"]
        if fw:
            assert "val_force_mse" in m.history_.metrics
    assert errs[1.0] < errs[0.0]


def test_unfitted_and_bad_arguments(cu_data):
    with pytest.raises(NotFittedError, match="not fitted"):
        _nn().predict(cu_data)
    with pytest.raises(ValueError, match="activation"):
        _nn(activation="gelu").fit(cu_data)
    no_forces = AtomicData(cu_data.dataset, cu_data.features)
    with pytest.raises(ValueError, match="force training needs a featurizer"):
        _nn(force_weight=1.0).fit(no_forces)
    model = _nn(training={"epochs": 1}).fit(no_forces)
    with pytest.raises(ValueError, match="without a featurizer"):
        model.predict_atoms(cu_images(1))


def test_refit_shift_centres_training_residuals(mol_data):
    """After the least-squares shift refit, the training residuals of one composition have zero
    mean (the normal equation of the shift), whatever the networks learned."""
    model = _nn(training={"epochs": 3}).fit(mol_data)
    ds = mol_data.dataset
    resid = model.predict(mol_data)["energy"] - ds.energy
    assert abs(resid.mean()) < 1e-9
    raw = _nn(training={"epochs": 3}, refit_shift=False).fit(mol_data)
    assert abs((raw.predict(mol_data)["energy"] - ds.energy).mean()) > 1e-6
