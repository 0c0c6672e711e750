"""Kernel models against scikit-learn as an exact, independent reference (issue 15).

On structures of one atom each, a structure kernel is the atomic kernel itself, so
scikit-learn's ``GaussianProcessRegressor`` and ``KernelRidge`` compute the same model:
- GP (``optimize=False``, no baseline): y ~ GP(0, a^2 k) + N(0, noise): predictive mean, the
  std of a new label (scikit-learn's latent std with the noise added) and the log marginal
  likelihood;
- KRR with the rbf, Laplacian (L1) and exponential (L2) kernels, and with the default
  ``baseline="lstsq"`` (for one element and one atom per structure: the mean energy).
"""

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from scipy.spatial.distance import cdist
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern
from sklearn.kernel_ridge import KernelRidge as SkKernelRidge

from atomistic.data import Dataset
from atomistic.models import AtomicData, GaussianProcess, KernelRidge


def _one_atom(n: int, seed: int, offset: float = 0.0) -> tuple[AtomicData, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 4))
    y = np.sin(X).sum(axis=1) + offset + 0.05 * rng.normal(size=n)
    images = []
    for e in y:
        a = Atoms("Cu", positions=[[0, 0, 0]])
        a.calc = SinglePointCalculator(a, energy=float(e))
        images.append(a)
    return AtomicData(Dataset.from_atoms(images), X), X, y


@pytest.mark.parametrize("kernel", ["rbf", "exponential"])
def test_gp_mean_std_and_log_marginal_likelihood_equal_scikit_learn(kernel):
    train, X, y = _one_atom(40, 0)
    test, X_test, _ = _one_atom(15, 1)
    sigma, noise, amplitude = 1.3, 0.05, 0.8
    gp = GaussianProcess(
        kernel=kernel, sigma=sigma, noise=noise, amplitude=amplitude, optimize=False, baseline=None
    ).fit(train)
    shape = (
        RBF(sigma, length_scale_bounds="fixed")
        if kernel == "rbf"
        else Matern(sigma, length_scale_bounds="fixed", nu=0.5)  # exp(-|x - y|_2 / sigma)
    )
    sk = GaussianProcessRegressor(
        ConstantKernel(amplitude**2, constant_value_bounds="fixed") * shape,
        alpha=noise,
        optimizer=None,
        normalize_y=False,
    ).fit(X, y)
    ours = gp.predict(test)
    mean, std = sk.predict(X_test, return_std=True)
    np.testing.assert_allclose(ours["energy"], mean, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(ours["energy_std"], np.sqrt(std**2 + noise), rtol=1e-8)
    assert gp.log_marginal_likelihood_ == pytest.approx(sk.log_marginal_likelihood_value_, 1e-9)


@pytest.mark.parametrize("kernel", ["rbf", "laplacian", "exponential"])
@pytest.mark.parametrize("baseline", [None, "lstsq"])
def test_krr_equals_scikit_learn(kernel, baseline):
    train, X, y = _one_atom(40, 2, offset=-3.7)  # an offset the baseline must take out
    test, X_test, _ = _one_atom(15, 3, offset=-3.7)
    sigma, lamda = 1.1, 1e-2
    metric = {"rbf": "sqeuclidean", "laplacian": "cityblock", "exponential": "euclidean"}[kernel]

    def k(A, B):
        d = cdist(A, B, metric)
        return np.exp(-d / (2 * sigma**2)) if kernel == "rbf" else np.exp(-d / sigma)

    shift = y.mean() if baseline == "lstsq" else 0.0  # one element, one atom: the mean energy
    sk = SkKernelRidge(alpha=lamda, kernel="precomputed").fit(k(X, X), y - shift)
    ours = KernelRidge(kernel=kernel, sigma=sigma, lamda=lamda, baseline=baseline).fit(train)
    np.testing.assert_allclose(
        ours.predict(test)["energy"], sk.predict(k(X_test, X)) + shift, rtol=1e-9, atol=1e-9
    )
