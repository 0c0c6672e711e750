"""Kernel ridge and Gaussian processes: scikit-learn equivalence, GP mean = KRR, forces =
-dE/dR, blocked kernels equal unblocked ones, hyperparameter optimisation, calibration."""

import numpy as np
import pytest
import torch
from conftest import cu_images, finite_difference_forces, molecule_images
from sklearn.kernel_ridge import KernelRidge as SkKernelRidge

from atomistic.data import Dataset
from atomistic.metrics import calibration
from atomistic.models import AtomicData, GaussianProcess, KernelRidge, NotFittedError
from atomistic.models.kernels import structure_kernel


def _one_atom_data(n, seed):
    rng = np.random.default_rng(seed)
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    images = []
    for _ in range(n):
        a = Atoms("Cu", positions=[[0, 0, 0]])
        a.calc = SinglePointCalculator(a, energy=float(rng.normal()))
        images.append(a)
    return Dataset.from_atoms(images), rng.normal(size=(n, 5))


def test_linear_krr_equals_scikit_learn():
    ds, X = _one_atom_data(30, 0)
    ds_test, X_test = _one_atom_data(10, 1)
    ours = KernelRidge(kernel="linear", lamda=0.3, baseline=None).fit(AtomicData(ds, X))
    sk = SkKernelRidge(alpha=0.3, kernel="linear").fit(X, ds.energy)
    np.testing.assert_allclose(
        ours.predict(AtomicData(ds_test, X_test))["energy"],
        sk.predict(X_test),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("kernel", ["rbf", "laplacian", "exponential"])
def test_gp_mean_equals_krr(kernel, mol_data):
    krr = KernelRidge(kernel=kernel, sigma=2.0, lamda=1e-3).fit(mol_data)
    gp = GaussianProcess(kernel=kernel, sigma=2.0, noise=1e-3, optimize=False).fit(mol_data)
    a, b = krr.predict(mol_data), gp.predict(mol_data)
    np.testing.assert_allclose(a["energy"], b["energy"], rtol=0, atol=1e-9)
    assert (b["energy_std"] > 0).all() and "energy_std" not in a


def test_blocked_kernel_equals_dense(cu_data):
    X = torch.as_tensor(cu_data.features)
    ds = cu_data.dataset
    args = (X, torch.as_tensor(ds.numbers), torch.as_tensor(ds.batch), ds.n_structures)
    for kernel in ("rbf", "laplacian", "exponential", "linear"):
        big, _ = structure_kernel(*args, *args, kernel, 1.3)
        small, _ = structure_kernel(*args, *args, kernel, 1.3, budget=50)
        torch.testing.assert_close(big, small, rtol=1e-12, atol=1e-10)
        # brute force: all atom pairs, summed per structure pair
        if kernel == "rbf":
            d2 = ((X[:, None] - X[None]) ** 2).sum(-1)
            k = torch.exp(-d2 / (2 * 1.3**2))
            ref = torch.zeros(ds.n_structures, ds.n_structures, dtype=torch.float64)
            b = torch.as_tensor(ds.batch)
            ref.index_put_((b[:, None].expand_as(k), b[None].expand_as(k)), k, accumulate=True)
            torch.testing.assert_close(big, ref, rtol=1e-12, atol=1e-10)


def test_kernel_is_zero_across_elements(mol_data):
    ds = mol_data.dataset.subset([0])
    X = torch.as_tensor(mol_data.features[: ds.n_atoms])
    z = torch.as_tensor(ds.numbers)
    only_h = torch.where(z == 1, z, torch.tensor(6))
    b = torch.zeros(len(z), dtype=torch.long)
    K_same, _ = structure_kernel(X, z, b, 1, X, z, b, 1, "rbf", 1.0)
    K_swap, _ = structure_kernel(X, z, b, 1, X, only_h, b, 1, "rbf", 1.0)
    assert float(K_same) > float(K_swap) > 0


@pytest.mark.parametrize("model_cls", [KernelRidge, GaussianProcess])
@pytest.mark.parametrize("which", ["cu", "mol"])
def test_forces_are_minus_energy_gradient(model_cls, which, cu_data, mol_data):
    data = cu_data if which == "cu" else mol_data
    kw = {"lamda": 1e-4} if model_cls is KernelRidge else {"noise": 1e-4, "optimize": False}
    model = model_cls(kernel="rbf", sigma=2.0, **kw).fit(data)
    atoms = (cu_images(1, seed=11) if which == "cu" else molecule_images(1, seed=11))[0]
    F = model.predict_atoms([atoms])["forces"][0]
    assert np.abs(F).max() > 1e-3
    assert np.abs(F - finite_difference_forces(model, atoms)).max() <= 1e-6


def test_gp_optimisation_raises_likelihood_and_is_calibrated(cu_data):
    fixed = GaussianProcess(sigma=1.0, noise=1e-2, optimize=False).fit(cu_data)
    opt = GaussianProcess(sigma=1.0, noise=1e-2).fit(cu_data)
    assert opt.log_marginal_likelihood_ > fixed.log_marginal_likelihood_
    test = AtomicData(
        Dataset.from_atoms(cu_images(40, seed=5)), None, cu_data.featurizer, cu_data.scaler
    )
    p = opt.predict(test)
    z = (test.dataset.energy - p["energy"]) / p["energy_std"]
    cal = calibration(z)
    assert 0.35 < cal["within_1sigma"] and cal["within_3sigma"] > 0.8
    # near-training structures are more certain than far ones
    far = AtomicData(
        Dataset.from_atoms(cu_images(5, seed=6, rattle=0.3)),
        None,
        cu_data.featurizer,
        cu_data.scaler,
    )
    assert opt.predict(far)["energy_std"].mean() > p["energy_std"].mean()


def test_krr_errors(cu_data):
    with pytest.raises(NotFittedError):
        KernelRidge().predict(cu_data)
    with pytest.raises(ValueError, match="kernel"):
        KernelRidge(kernel="cosine").fit(cu_data)
    with pytest.raises(np.linalg.LinAlgError, match="increase lamda"):
        KernelRidge(kernel="linear", lamda=0.0).fit(cu_data)
    model = KernelRidge(sigma=2.0).fit(cu_data, validation=cu_data)
    assert model.metrics_["val_energy_mae_per_atom"] < 1e-3
