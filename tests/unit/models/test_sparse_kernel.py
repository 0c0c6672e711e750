"""Sparse (projected-process) kernel models on energies and forces, against independent
references: a dense solve of the same normal equations built by reverse-mode autograd, the
dense Gaussian log-density, finite differences of the energy, and autograd Hessians for the
force variance."""

import math

import numpy as np
import pytest
import scipy.stats
import torch
from ase.build import molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from conftest import finite_difference_forces, make_data, molecule_images

from atomistic.calculator import AtompipeCalculator
from atomistic.models import AtomicData, GaussianProcess, KernelRidge, load_model
from atomistic.models.base import NeighborCache, scaled_features_torch
from atomistic.models.sparse_kernel import (
    JITTER,
    accumulate,
    cur_selection,
    farthest_point_sampling,
    log_marginal_likelihood,
    select_sparse,
)

SIGMA = 1.5


def _mixed_images():
    """Three ethanol, one water and one methane molecule (structures of 9, 3 and 5 atoms)."""
    rng = np.random.default_rng(4)
    small = [molecule("H2O"), molecule("CH4")]
    for a in small:
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        a.calc = EMT()
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy(), forces=a.get_forces())
    return molecule_images(3, seed=3) + small


@pytest.fixture(scope="module")
def tiny():
    """Five labelled molecules of three sizes with a Gaussian featurizer (no precomputed
    features)."""
    return make_data(_mixed_images(), features=False)


def _features(data, idx):
    cache = NeighborCache(data.featurizer, data.dataset)
    b = cache.batch(np.asarray(idx))
    return b, scaled_features_torch(data.featurizer, data.scaler, b)


def _reference_rows(data, XM, zM, sigma):
    """Design matrix (S + 3 n_atoms, M) by reverse-mode autograd, one backward per row block."""
    ds = data.dataset
    rows_E, rows_F = [], []
    for s in range(ds.n_structures):
        b, X = _features(data, [s])
        d2 = ((X[:, None, :] - XM[None, :, :]) ** 2).sum(-1)
        k = torch.exp(-d2 / (2 * sigma**2)) * (b["numbers"][:, None] == zM[None, :])
        e = k.sum(0)  # shape (M,)
        rows_E.append(e.detach().numpy())
        F = np.stack(
            [
                -torch.autograd.grad(e[m], b["positions"], retain_graph=True)[0].numpy().ravel()
                for m in range(len(XM))
            ],
            axis=1,
        )  # shape (3 n, M)
        rows_F.append(F)
    return np.array(rows_E), np.concatenate(rows_F)


def _dense_kmm(XM, zM, sigma):
    X = XM.numpy()
    d2 = ((X[:, None] - X[None]) ** 2).sum(-1)
    K = np.exp(-d2 / (2 * sigma**2)) * (zM.numpy()[:, None] == zM.numpy()[None])
    return K + JITTER * np.eye(len(X))


def _all_atoms_model(tiny, cls, **kw):
    n_max = int(np.bincount(tiny.dataset.numbers).max())
    return cls(sigma=SIGMA, forces=True, n_sparse=n_max, **kw).fit(tiny)


def test_sparse_with_every_environment_equals_dense_normal_equations(tiny):
    eN, fN = 0.01, 0.1
    model = _all_atoms_model(tiny, KernelRidge, energy_noise=eN, force_noise=fN)
    ds = tiny.dataset
    assert model.n_train_ == ds.n_atoms  # every training environment is a representative
    XM, zM = model.X_train_, model.numbers_train_
    PhiE, PhiF = _reference_rows(tiny, XM, zM, SIGMA)
    n = np.diff(ds.offsets)
    y = np.concatenate([ds.energy - model._baseline(ds), ds.forces.ravel()])
    Phi = np.vstack([PhiE, PhiF])
    lam = np.concatenate([eN**2 * n, np.full(PhiF.shape[0], fN**2)])
    A = _dense_kmm(XM, zM, SIGMA) + Phi.T @ (Phi / lam[:, None])
    w = np.linalg.solve(A, Phi.T @ (y / lam))
    pred = model.predict(tiny, forces=True)
    np.testing.assert_allclose(pred["energy"] - model._baseline(ds), PhiE @ w, rtol=0, atol=1e-8)
    np.testing.assert_allclose(pred["forces"].ravel(), PhiF @ w, rtol=0, atol=1e-8)
    # the blocked accumulation equals the dense products
    ne = accumulate(tiny, ds.energy - model._baseline(ds), XM, zM, SIGMA, budget=300)
    L = ne.L_K
    np.testing.assert_allclose(L @ ne.Gw_F @ L.T, PhiF.T @ PhiF, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(L @ ne.Gw_E @ L.T, PhiE.T @ (PhiE / n[:, None]), atol=1e-9)


@pytest.mark.parametrize("cls", [KernelRidge, GaussianProcess])
def test_sparse_forces_are_minus_energy_gradient(tiny, cls):
    kw = {"optimize": False} if cls is GaussianProcess else {}
    model = cls(sigma=SIGMA, forces=True, n_sparse=10, sparse_method="fps", **kw).fit(tiny)
    atoms = molecule_images(1, seed=11)[0]
    F = model.predict_atoms([atoms])["forces"][0]
    assert np.abs(F).max() > 1e-2
    assert np.abs(F - finite_difference_forces(model, atoms)).max() <= 1e-6


def test_gp_variances_equal_dense_dtc_formula(tiny):
    amp = 0.7
    gp = _all_atoms_model(
        tiny, GaussianProcess, energy_noise=0.02, force_noise=0.2, amplitude=amp, optimize=False
    )
    test = make_data(molecule_images(2, seed=21), features=False)
    test = AtomicData(test.dataset, None, tiny.featurizer, tiny.scaler)
    XM, zM = gp.X_train_, gp.numbers_train_
    PhiE, PhiF = _reference_rows(tiny, XM, zM, SIGMA)
    ds = tiny.dataset
    lam = np.concatenate([0.02**2 * np.diff(ds.offsets), np.full(PhiF.shape[0], 0.2**2)])
    Phi = np.vstack([PhiE, PhiF])
    K = _dense_kmm(XM, zM, SIGMA)
    Ainv = np.linalg.inv(K / amp**2 + Phi.T @ (Phi / lam[:, None]))
    tE, tF = _reference_rows(test, XM, zM, SIGMA)
    # prior covariance of a structure's energy and of each force component, by autograd
    kEE, kFF = [], []
    for s in range(test.dataset.n_structures):
        b, X = _features(test, [s])
        z = b["numbers"]

        def g(R, R2, b=b, z=z):
            Xa = scaled_features_torch(test.featurizer, test.scaler, {**b, "positions": R})
            Xb = scaled_features_torch(test.featurizer, test.scaler, {**b, "positions": R2})
            d2 = ((Xa[:, None] - Xb[None]) ** 2).sum(-1)
            return (torch.exp(-d2 / (2 * SIGMA**2)) * (z[:, None] == z[None])).sum()

        R = b["positions"].detach()
        kEE.append(float(g(R, R)))
        H = torch.autograd.functional.hessian(g, (R, R))[0][1]  # d2 g / dR dR'
        kFF.append(torch.diagonal(H.reshape(R.numel(), R.numel())).numpy())
    varE = amp**2 * (np.array(kEE) - np.einsum("sm,mn,sn->s", tE, np.linalg.inv(K), tE))
    varE += np.einsum("sm,mn,sn->s", tE, Ainv, tE) + 0.02**2 * np.diff(test.dataset.offsets)
    varF = amp**2 * (np.concatenate(kFF) - np.einsum("sm,mn,sn->s", tF, np.linalg.inv(K), tF))
    varF += np.einsum("sm,mn,sn->s", tF, Ainv, tF) + 0.2**2
    p = gp.predict(test, forces=True)
    np.testing.assert_allclose(p["energy_std"] ** 2, varE, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(p["forces_std"].ravel() ** 2, varF, rtol=1e-6, atol=1e-10)
    # energy_std without forces (the cached-feature path) agrees
    np.testing.assert_allclose(gp.predict(test)["energy_std"], p["energy_std"], rtol=1e-8)


def test_marginal_likelihood_equals_dense_gaussian_density(tiny):
    model = KernelRidge(sigma=SIGMA, forces=True, n_sparse=8).fit(tiny)
    ds = tiny.dataset
    y_E = ds.energy - model._baseline(ds)
    XM, zM = model.X_train_, model.numbers_train_
    ne = accumulate(tiny, y_E, XM, zM, SIGMA)
    PhiE, PhiF = _reference_rows(tiny, XM, zM, SIGMA)
    Phi = np.vstack([PhiE, PhiF])
    y = np.concatenate([y_E, ds.forces.ravel()])
    rE, rF, amp = 0.03, 0.3, 0.8
    D = np.concatenate([rE**2 * np.diff(ds.offsets), np.full(PhiF.shape[0], rF**2)])
    C = amp**2 * (Phi @ np.linalg.solve(_dense_kmm(XM, zM, SIGMA), Phi.T) + np.diag(D))
    ref = scipy.stats.multivariate_normal(np.zeros(len(y)), C).logpdf(y)
    lml, grad, _ = log_marginal_likelihood(ne, 2 * math.log(rE), 2 * math.log(rF), amp)
    assert abs(lml - ref) <= 1e-6 * abs(ref)
    # analytic gradient of the profiled likelihood against central differences
    th, h = np.array([2 * math.log(rE), 2 * math.log(rF)]), 1e-5
    _, g, _ = log_marginal_likelihood(ne, *th)
    for k in range(2):
        e = np.eye(2)[k] * h
        fd = log_marginal_likelihood(ne, *(th + e))[0] - log_marginal_likelihood(ne, *(th - e))[0]
        assert abs(g[k] - fd / (2 * h)) <= 1e-4 * max(1.0, abs(g[k]))


def test_representative_selection():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 4))
    picked = farthest_point_sampling(X, 5)
    assert len(set(picked.tolist())) == 5
    # each new point is the farthest from those before it
    for k in range(1, 5):
        d = np.min(((X[:, None] - X[picked[:k]][None]) ** 2).sum(-1), axis=1)
        assert np.isclose(d[picked[k]], d.max())
    a = cur_selection(X, 7, np.random.default_rng(1))
    b = cur_selection(X, 7, np.random.default_rng(1))
    assert (a == b).all() and len(set(a.tolist())) == 7
    numbers = np.array([1] * 30 + [8] * 20)
    rows = select_sparse(X, numbers, 25, "cur", seed=0)
    assert (numbers[rows] == 1).sum() == 25 and (numbers[rows] == 8).sum() == 20
    with pytest.raises(ValueError, match="sparse_method"):
        select_sparse(X, numbers, 5, "random")


def test_sparse_gp_save_load_calculator_and_errors(tiny, tmp_path):
    val = AtomicData(
        make_data(molecule_images(3, seed=8)).dataset, None, tiny.featurizer, tiny.scaler
    )
    gp = GaussianProcess(sigma=SIGMA, forces=True, n_sparse=10, optimize=True)
    gp.fit(tiny, validation=val)
    assert gp.log_marginal_likelihood_ > -1e30 and gp.force_noise_ > 0
    # variance scaling: unit mean squared z-score of the validation forces and energies
    p = gp.predict(val, forces=True)
    zF = (p["forces"] - val.dataset.forces) / p["forces_std"]
    zE = (p["energy"] - val.dataset.energy) / p["energy_std"]
    assert abs(np.mean(zF**2) - 1) < 1e-9 and abs(np.mean(zE**2) - 1) < 1e-9
    gp.save(tmp_path / "gp")
    again = load_model(tmp_path / "gp")
    atoms = molecule_images(1, seed=5)[0]
    a, b = gp.predict_atoms([atoms]), again.predict_atoms([atoms])
    np.testing.assert_allclose(a["forces_std"], b["forces_std"], rtol=1e-12)
    np.testing.assert_allclose(a["forces"][0], b["forces"][0], rtol=1e-12, atol=1e-12)
    atoms.calc = AtompipeCalculator(again)
    assert atoms.calc.get_property("forces_std", atoms).shape == (len(atoms), 3)
    with pytest.raises(ValueError, match="rbf"):
        KernelRidge(kernel="laplacian", forces=True).fit(tiny)
    no_featurizer = AtomicData(tiny.dataset, tiny.scaled_features(), None, None)
    with pytest.raises(ValueError, match="featurizer"):
        KernelRidge(forces=True).fit(no_featurizer)


def test_campaign_keys_build_the_sparse_models():
    from pydantic import ValidationError

    from flows.config import GaussianProcessConfig, KernelRidgeConfig

    # energy-only configurations dump as before the sparse keys existed (same cache keys)
    assert KernelRidgeConfig(features="g").model_dump(mode="json") == {
        "type": "kernelridge",
        "features": "g",
        "kernel": "rbf",
        "sigma": 1.0,
        "lamda": 1e-5,
    }
    cfg = GaussianProcessConfig(
        features="g", forces=True, n_sparse=7, sparse_method="fps", force_noise=0.02
    ).model_dump(mode="json")
    params = {k: v for k, v in cfg.items() if k not in ("type", "features")}
    gp = GaussianProcess(**params)  # as tasks.models.train_model builds it
    assert gp.forces and gp.n_sparse == 7 and gp.sparse_method == "fps"
    assert gp.force_noise == 0.02
    with pytest.raises(ValidationError, match="rbf"):
        KernelRidgeConfig(features="g", forces=True, kernel="laplacian")
    with pytest.raises(ValidationError, match="sparse_method"):
        KernelRidgeConfig(features="g", forces=True, sparse_method="random")


def test_force_fits_from_two_threads_at_once(tiny):
    """A campaign fits its models in threads, and the force design rows are forward-mode passes
    whose levels are global to the process: a KRR and a GP on forces fitted at once must not
    collide (they raised 'Nested forward mode AD is not supported') and must give the serial
    fits' predictions."""
    from concurrent.futures import ThreadPoolExecutor

    def fit(cls):
        kw = {"optimize": False} if cls is GaussianProcess else {}
        model = cls(sigma=SIGMA, forces=True, n_sparse=10, sparse_method="fps", **kw).fit(tiny)
        return model.predict(tiny, forces=True)["forces"]

    classes = [KernelRidge, GaussianProcess] * 3
    serial = {cls: fit(cls) for cls in (KernelRidge, GaussianProcess)}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(fit, classes))
    for cls, F in zip(classes, results, strict=True):
        np.testing.assert_array_equal(F, serial[cls])
