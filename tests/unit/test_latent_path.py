"""A model fitted on latent (autoencoder) features predicts from structures: featurizer, scaler
and encoder travel with it; forces by autograd through the encoder against finite differences
of its energies; the same numbers after saving and loading, and from the exported module."""

import numpy as np
import pytest
import torch
from atoms_factory import cu_images, finite_difference_forces, make_data

from atomistic.export import export_model
from atomistic.features.scaling import Scaler
from atomistic.models import (
    VAE,
    AtomicData,
    AutoEncoder,
    GaussianProcess,
    KernelRidge,
    NeuralNetwork,
    TrainingConfig,
    load_model,
)
from atomistic.models.encoded import EncodedFeaturizer

pytestmark = pytest.mark.filterwarnings("ignore::atomistic.models.TrainingWarning")
LAYERS = {"encoder": (6, 3), "decoder": (3, 6)}


@pytest.fixture(scope="module")
def source():
    return make_data(cu_images(12, seed=1), cutoff=4.0)


def _latent(source, encoder):
    """Latent AtomicData as the campaign makes it: codes of the scaled source features, scaled
    again by a scaler of their own."""
    ds, X = source.dataset, source.features
    encoder.fit(X, ds.numbers, config=TrainingConfig(epochs=3))
    Z = encoder.encode(X, ds.numbers)
    zs = Scaler().fit(Z)
    f = EncodedFeaturizer(source.featurizer, source.scaler, encoder)
    return AtomicData(ds, zs.transform(Z), f, zs), Z


@pytest.mark.parametrize(
    "encoder, model",
    [
        (
            lambda: AutoEncoder(LAYERS, "tanh"),
            lambda: NeuralNetwork((6,), "tanh", dtype="float64", training={"epochs": 3}),
        ),
        (lambda: VAE(LAYERS, "tanh", per_element=False), lambda: KernelRidge(sigma=1.0)),
        (lambda: AutoEncoder(LAYERS, "tanh"), lambda: GaussianProcess(optimize=False)),
    ],
)
def test_latent_model_forces_match_finite_differences(source, encoder, model, tmp_path):
    data, Z = _latent(source, encoder())
    ds = data.dataset
    # the composed featurizer reproduces the codes the encoder gave for the stored features
    again = data.featurizer.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
    np.testing.assert_allclose(again, Z, atol=1e-12)
    m = model().fit(data)
    atoms = cu_images(1, seed=9)[0]
    out = m.predict_atoms([atoms], forces=True)
    fd = finite_difference_forces(m, atoms, h=1e-5)
    assert np.abs(fd).max() > 1e-3
    np.testing.assert_allclose(out["forces"][0], fd, atol=1e-6 * max(1.0, np.abs(fd).max()))

    loaded = load_model(m.save(tmp_path / "model"))
    back = loaded.predict_atoms([atoms], forces=True)
    assert back["energy"][0] == pytest.approx(out["energy"][0], abs=1e-12)
    np.testing.assert_allclose(back["forces"][0], out["forces"][0], atol=1e-12)

    exported = export_model(loaded)(
        torch.tensor(atoms.positions),
        torch.tensor(atoms.numbers),
        torch.tensor(atoms.cell.array),
        torch.tensor(atoms.pbc),
    )
    assert float(exported["energy"]) == pytest.approx(out["energy"][0], abs=1e-9)
    np.testing.assert_allclose(exported["forces"].numpy(), out["forces"][0], atol=1e-9)
