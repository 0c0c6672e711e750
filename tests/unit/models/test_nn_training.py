"""Force training of the Behler–Parrinello networks: the precomputed feature Jacobian against
finite differences, the Jacobian path against the on-the-fly path, committees against their
members trained alone, budgets, reference energies and the useless-model warning."""

import warnings

import numpy as np
import pytest
import torch
from conftest import cu_images, make_data, molecule_images

from atomistic.data import Dataset
from atomistic.features import AEV, Gaussian
from atomistic.features.jacobian import feature_jacobians, jacobian_nbytes
from atomistic.models import AtomicData, NeuralNetwork, TrainingConfig
from atomistic.models.neuralnetwork import TrainingWarning


def _nn(**kw):
    training = dict(epochs=6, lr=5e-3, batch_size=4, seed=0, shuffle=True)
    training.update(kw.pop("training", {}))
    kw.setdefault("dtype", "float64")
    hidden = kw.pop("hiddenlayers", (8, 8))
    return NeuralNetwork(hidden, "tanh", training=TrainingConfig(**training), **kw)


@pytest.mark.parametrize(
    "featurizer, images",
    [
        (lambda: AEV.like_ani1x(("H", "C", "O")), lambda: molecule_images(2, seed=4)),
        (lambda: Gaussian(cutoff=4.0, elements=["Cu"]), lambda: cu_images(2, seed=5)),
        (
            lambda: Gaussian(cutoff=4.0, elements=["Cu"], angular_type="G4"),
            lambda: cu_images(2, seed=6),
        ),
    ],
    ids=["aev-molecule", "gaussian-periodic-cu", "g4-moments-periodic-cu"],
)
def test_feature_jacobian_equals_finite_differences(featurizer, images):
    f, frames = featurizer(), images()
    ds = Dataset.from_atoms(frames)
    X, J = feature_jacobians(f, ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
    assert J.shape == (ds.n_atoms, f.n_features, max(np.diff(ds.offsets)), 3)
    ref = f.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
    np.testing.assert_allclose(X.numpy(), ref, rtol=0, atol=1e-12)
    h = 1e-5
    rng = np.random.default_rng(0)
    for s in range(ds.n_structures):
        a0, a1 = ds.offsets[s], ds.offsets[s + 1]
        for a in rng.choice(a1 - a0, size=min(3, a1 - a0), replace=False):
            for c in range(3):
                diff = []
                for d in (h, -h):
                    pos = ds.positions.copy()
                    pos[a0 + a, c] += d
                    diff.append(f.featurize_arrays(ds.numbers, pos, ds.cell, ds.pbc, ds.offsets))
                fd = (diff[0] - diff[1])[a0:a1] / (2 * h)
                np.testing.assert_allclose(J[a0:a1, :, a, c].numpy(), fd, rtol=0, atol=1e-7)
        assert not J[a0:a1, :, a1 - a0 :].any()  # padding beyond the frame's atoms


def test_jacobian_path_trains_like_the_on_the_fly_path(mol_data):
    """The same seeds, data and loss through precomputed Jacobians and through the featurizer's
    autograd give the same weights: both compute the same force loss and gradients."""
    data = AtomicData(
        mol_data.dataset.subset(range(12)), None, mol_data.featurizer, mol_data.scaler
    )
    kw = dict(force_weight=1.0, training={"epochs": 3})
    fast = _nn(**kw).fit(data)
    slow = _nn(jacobian_memory=0, **kw).fit(data)
    for (name, v), w in zip(
        fast.module_.state_dict().items(), slow.module_.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(v, w, rtol=1e-9, atol=1e-10, msg=name)
    assert fast.history_.metrics["train_force_mse"] == pytest.approx(
        slow.history_.metrics["train_force_mse"], rel=1e-9
    )


def test_jacobian_memory_estimate():
    f = AEV.like_ani1x(("H", "C", "O"))
    offsets = np.array([0, 9, 18, 21])
    assert jacobian_nbytes(f.n_features, offsets, torch.float32) == 21 * f.n_features * 9 * 3 * 4


def test_committee_is_the_mean_of_members_trained_alone(mol_data):
    train = AtomicData(
        mol_data.dataset.subset(range(16)), None, mol_data.featurizer, mol_data.scaler
    )
    test = AtomicData(
        mol_data.dataset.subset(range(16, 20)), None, mol_data.featurizer, mol_data.scaler
    )
    committee = _nn(ensemble=3, force_weight=0.5).fit(train)
    alone = [
        _nn(force_weight=0.5, training={"seed": k}).fit(train).predict(test, forces=True)
        for k in range(3)
    ]
    out = committee.predict(test, forces=True)
    E = np.stack([a["energy"] for a in alone])
    F = np.stack([a["forces"] for a in alone])
    np.testing.assert_allclose(out["energy"], E.mean(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["energy_std"], E.std(0, ddof=1), rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(out["forces"], F.mean(0), rtol=0, atol=1e-9)
    np.testing.assert_allclose(out["forces_std"], F.std(0, ddof=1), rtol=1e-6, atol=1e-10)
    assert committee.has_uncertainty and not alone[0].get("energy_std")


def test_committee_round_trip_and_calculator(mol_data, tmp_path):
    from atomistic.calculator import AtompipeCalculator
    from atomistic.models import load_model

    model = _nn(ensemble=2, force_weight=0.5, bootstrap=True).fit(mol_data)
    loaded = load_model(model.save(tmp_path / "m"))
    atoms = molecule_images(1, seed=11)[0]
    a, b = model.predict_atoms([atoms]), loaded.predict_atoms([atoms])
    np.testing.assert_array_equal(a["energy"], b["energy"])
    atoms.calc = AtompipeCalculator(loaded)
    assert atoms.get_potential_energy() == pytest.approx(float(a["energy"][0]), abs=1e-12)
    assert atoms.calc.results["energy_std"] == pytest.approx(float(a["energy_std"][0]), abs=1e-12)
    assert {"energy_std", "forces_std"} <= set(atoms.calc.implemented_properties)
    np.testing.assert_allclose(atoms.calc.results["forces_std"], a["forces_std"], atol=1e-12)


def test_float32_networks_train_and_match_float64_forces_to_single_precision(mol_data):
    train = AtomicData(
        mol_data.dataset.subset(range(16)), None, mol_data.featurizer, mol_data.scaler
    )
    m32 = _nn(dtype="float32", force_weight=1.0).fit(train)
    assert next(m32.module_.parameters()).dtype == torch.float32
    # the float32 networks evaluated in float64 are the reference for their own forces
    m64 = _nn(dtype="float32", force_weight=1.0).fit(train)
    for m in m64.members_:
        m.double()
    m64.dtype = "float64"
    a, b = m32.predict(train, forces=True), m64.predict(train, forces=True)
    np.testing.assert_allclose(a["forces"], b["forces"], rtol=0, atol=1e-4)
    np.testing.assert_allclose(a["energy"], b["energy"], rtol=0, atol=1e-4)


def test_given_reference_energies_and_time_budget(mol_data):
    refs = {"H": -10.0, "C": -40.0, "O": -100.0}
    m = _nn(reference_energies=refs, refit_shift=False, training={"epochs": 10**6, "max_time": 1.0})
    m.fit(mol_data)
    assert m.module_.shift.tolist() == [refs[s] for s in m.elements_]
    assert m.history_.stop_reason == "max_time"
    with pytest.raises(ValueError, match="no value for element"):
        _nn(reference_energies={"H": 0.0}).fit(mol_data)


def test_useless_model_warns():
    data = make_data(molecule_images(8, seed=1))
    with pytest.warns(TrainingWarning, match="learned nothing useful"):
        _nn(training={"epochs": 3, "lr": 1e-12}).fit(data, data)
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingWarning)
        _nn(training={"epochs": 40, "lr": 1e-2}).fit(data, data)


def test_per_element_widths(mol_data):
    layers = {"H": (6,), "C": (5, 4), "O": (3,)}
    m = _nn(hiddenlayers=layers, training={"epochs": 1}).fit(mol_data)
    widths = {
        s: [l.out_features for l in m.module_.nets[s] if hasattr(l, "out_features")] for s in layers
    }
    assert widths == {"H": [6, 1], "C": [5, 4, 1], "O": [3, 1]}
    with pytest.raises(ValueError, match="no widths for element"):
        NeuralNetwork({"H": (4,)}, training=TrainingConfig(epochs=1)).fit(mol_data)


def test_jacobians_from_two_threads_at_once():
    """A campaign trains models in threads; forward-mode levels are process-wide, so two
    Jacobian computations at once must not collide (they raised 'Nested forward mode AD')."""
    from concurrent.futures import ThreadPoolExecutor

    f = AEV.like_ani1x(("H", "C", "O"))
    ds = Dataset.from_atoms(molecule_images(6, seed=2))
    args = (ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets)
    ref = feature_jacobians(f, *args)[1]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: feature_jacobians(f, *args)[1], range(4)))
    for J in results:
        torch.testing.assert_close(J, ref, rtol=0, atol=0)
