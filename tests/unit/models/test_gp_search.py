"""The GP's hyperparameter search (atomistic.models.marginal_likelihood) against independent
references: the log marginal likelihood by a Cholesky factorisation, its width derivative by
finite differences, and the optimum of the previous implementation (a two-dimensional L-BFGS-B
over log sigma and log g on kernels rebuilt at every step), kept here as a slow reference on
a brute-force numpy kernel. Also the BLAS/OpenMP thread limits inside a kernel fit."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from threadpoolctl import threadpool_info, threadpool_limits

from atomistic.models import GaussianProcess, KernelRidge
from atomistic.models import kernels as kernels_module
from atomistic.models.kernels import DistanceBlocks
from atomistic.models.marginal_likelihood import (
    optimize_width_and_noise,
    profile_gradient,
    profile_in_noise,
)


def brute_kernel(X, z, batch, n, sigma):
    """rbf structure kernel by direct differences over all atom pairs, numpy, (n, n)."""
    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)  # shape (N, N)
    k = np.exp(-d2 / (2 * sigma**2)) * (z[:, None] == z[None, :])
    P = np.zeros((len(X), n))
    P[np.arange(len(X)), batch] = 1.0
    return P.T @ k @ P


def lml(K, y, g):
    """log p(y) with a^2 profiled, by Cholesky (Rasmussen & Williams eq. 5.8)."""
    n = len(y)
    L = np.linalg.cholesky(K + g * np.eye(n))
    alpha = scipy.linalg.cho_solve((L, True), y)
    yta = float(y @ alpha)
    return -0.5 * n * math.log(2 * math.pi * yta / n) - np.log(np.diag(L)).sum() - 0.5 * n


def previous_search(kernel_at, y, sigma, g):
    """The search before the profile: L-BFGS-B over (log sigma, log g) from the best of
    sigma * 2^k at the given g, value and analytic gradient from a fresh kernel each step."""
    n = len(y)
    scale = float(np.mean(np.diag(kernel_at(sigma)[0])))
    g_bounds = (math.log(1e-10 * scale), math.log(10.0 * scale))
    s_bounds = (math.log(1e-3), math.log(1e3))

    def neg(theta, grad=True):
        s, gg = math.exp(theta[0]), math.exp(theta[1])
        K, dK = kernel_at(s)
        A = K + gg * np.eye(n)
        try:
            factor = scipy.linalg.cho_factor(A, lower=True)
        except np.linalg.LinAlgError:
            return 1e30, np.zeros(2)
        alpha = scipy.linalg.cho_solve(factor, y)
        yta = float(y @ alpha)
        logdet = 2.0 * np.log(np.diag(factor[0])).sum()
        value = -0.5 * n * math.log(2 * math.pi * yta / n) - 0.5 * logdet - 0.5 * n
        Ainv = scipy.linalg.cho_solve(factor, np.eye(n))
        gradient = np.array(
            [
                0.5 * n * float(alpha @ dK @ alpha) / yta - 0.5 * float(np.sum(Ainv * dK)),
                0.5 * n * gg * float(alpha @ alpha) / yta - 0.5 * gg * float(np.trace(Ainv)),
            ]
        )
        return -value, -gradient

    lo, hi = [s_bounds[0], g_bounds[0]], [s_bounds[1], g_bounds[1]]
    starts = [
        np.clip([math.log(s), math.log(g)], lo, hi)
        for s in (sigma, *(sigma * 2.0**k for k in (-2, -1, 1, 2, 3)))
    ]
    x0 = min(starts, key=lambda x: neg(x)[0])
    res = scipy.optimize.minimize(neg, x0, jac=True, method="L-BFGS-B", bounds=[s_bounds, g_bounds])
    return math.exp(res.x[0]), math.exp(res.x[1])


def _arrays(data, noise=0.0, seed=0):
    """Features, numbers, batch, n and energies (plus Gaussian label noise, eV) of AtomicData."""
    ds = data.dataset
    y = ds.energy - ds.energy.mean()
    if noise:
        y = y + np.random.default_rng(seed).normal(0.0, noise, y.shape)
    return np.asarray(data.features), ds.numbers, ds.batch, ds.n_structures, y


def _brute_with_derivative(X, z, batch, n):
    """kernel_at(sigma) -> (K, dK/dlog sigma) by brute force; dK by the analytic sum
    k d2 / sigma^2 over atom pairs."""

    d2 = ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)  # shape (N, N)
    same = z[:, None] == z[None, :]
    P = np.zeros((len(X), n))
    P[np.arange(len(X)), batch] = 1.0

    def at(sigma):
        k = np.exp(-d2 / (2 * sigma**2)) * same
        return P.T @ k @ P, P.T @ (k * d2 / sigma**2) @ P

    return at


def test_profile_in_noise_is_the_best_noise_ratio():
    rng = np.random.default_rng(1)
    B = rng.normal(size=(30, 12))
    K = B @ B.T  # rank 12: small noise ratios matter
    y = B @ rng.normal(size=12) + rng.normal(0, 0.3, 30)
    w, Q = np.linalg.eigh(K)
    bounds = (math.log(1e-8), math.log(1e3))
    log_g, value = profile_in_noise(w, Q.T @ y, bounds)
    assert value == pytest.approx(lml(K, y, math.exp(log_g)), abs=1e-9)
    dense = max(lml(K, y, math.exp(t)) for t in np.linspace(*bounds, 801))
    assert value >= dense - 1e-9
    assert bounds[0] < log_g < bounds[1]


@pytest.mark.parametrize("g", [1e-3, 0.3])
def test_profile_gradient_matches_finite_differences(cu_data, g):
    X, z, batch, n, y = _arrays(cu_data)
    blocks = DistanceBlocks(
        torch.as_tensor(X), torch.as_tensor(z), torch.as_tensor(batch), n, "rbf"
    )
    for sigma in (0.7, 2.0):
        K, dK = blocks.evaluate(sigma, with_dlogsigma=True)
        h = 1e-5
        fd = (
            lml(brute_kernel(X, z, batch, n, sigma * math.exp(h)), y, g)
            - lml(brute_kernel(X, z, batch, n, sigma * math.exp(-h)), y, g)
        ) / (2 * h)
        assert profile_gradient(K, dK, y, g) == pytest.approx(fd, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("data, noise", [("cu_data", 0.02), ("mol_data", 0.02)])
def test_search_finds_the_previous_optimum(request, data, noise):
    """Same optimum as the two-dimensional search on kernels rebuilt at every step (labels
    with noise, so that the optimal noise ratio lies inside its bounds)."""
    X, z, batch, n, y = _arrays(request.getfixturevalue(data), noise)
    reference = _brute_with_derivative(X, z, batch, n)
    with threadpool_limits(1):  # tiny matrices: threads would only wait for each other
        s_ref, g_ref = previous_search(reference, y, 1.0, 1e-4)
    blocks = DistanceBlocks(
        torch.as_tensor(X), torch.as_tensor(z), torch.as_tensor(batch), n, "rbf"
    )
    steps = []
    sigma, g = optimize_width_and_noise(
        blocks.evaluate, y, 1.0, callback=lambda step, info: steps.append(info)
    )
    assert math.log(sigma) == pytest.approx(math.log(s_ref), abs=2e-3)
    assert math.log(g) == pytest.approx(math.log(g_ref), abs=2e-2)
    best = lml(brute_kernel(X, z, batch, n, sigma), y, g)
    assert best >= lml(brute_kernel(X, z, batch, n, s_ref), y, g_ref) - 1e-6
    assert len(steps) < 40  # one kernel per width


def test_gaussian_process_fit_matches_reference_posterior(cu_data):
    """GaussianProcess(optimize=True) on all structures: the reference search's hyperparameters
    and the posterior mean of a direct numpy GP at them."""
    data = cu_data
    X, z, batch, n, _ = _arrays(data)
    gp = GaussianProcess(sigma=1.0, noise=1e-4, baseline=None).fit(data)
    y = data.dataset.energy
    with threadpool_limits(1):
        s_ref, g_ref = previous_search(_brute_with_derivative(X, z, batch, n), y, 1.0, 1e-4)
    assert math.log(gp.sigma_) == pytest.approx(math.log(s_ref), abs=2e-3)
    K = brute_kernel(X, z, batch, n, gp.sigma_)
    a2 = float(y @ np.linalg.solve(K + (gp.noise_ / gp.amplitude_**2) * np.eye(n), y)) / n
    assert gp.amplitude_**2 == pytest.approx(a2, rel=1e-8)
    mean = K @ np.linalg.solve(K + gp.noise_ / gp.amplitude_**2 * np.eye(n), y)
    np.testing.assert_allclose(gp.predict(data)["energy"], mean, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("kernel", ["rbf", "laplacian", "exponential", "linear"])
def test_train_kernel_streams_the_direct_kernel(cu_data, kernel):
    X, z, batch, n, _ = _arrays(cu_data)
    model = KernelRidge(kernel=kernel, sigma=1.3)
    model._prepare(cu_data)
    K, _ = model._train_kernel(1.3)
    Kd, _ = kernels_module.structure_kernel(
        *(torch.as_tensor(a) for a in (X, z, batch)),
        n,
        *(torch.as_tensor(a) for a in (X, z, batch)),
        n,
        kernel,
        1.3,
    )
    np.testing.assert_allclose(K, Kd.numpy(), rtol=1e-12, atol=1e-12)
    if kernel == "rbf":
        np.testing.assert_allclose(K, brute_kernel(X, z, batch, n, 1.3), rtol=1e-12)


def _limits() -> dict[str, int]:
    return {p["user_api"]: p["num_threads"] for p in threadpool_info()}


def _fit_recording_limits(data) -> list[dict[str, int]]:
    seen: list[dict[str, int]] = []
    GaussianProcess(sigma=1.0, noise=1e-4).fit(data, callback=lambda *_: seen.append(_limits()))
    return seen


def test_fit_runs_on_one_blas_thread_below_the_small_system_size(cu_data):
    before = _limits()
    seen = _fit_recording_limits(cu_data)
    assert seen and all(v == 1 for limits in seen for v in limits.values())
    assert _limits() == before  # restored


def test_fit_never_raises_an_outer_limit(cu_data, monkeypatch):
    monkeypatch.setattr(kernels_module, "_SMALL_SYSTEM", 1)  # as if the system were large
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    expected = max(1, min(cpus or 1, torch.get_num_threads(), *_limits().values()))
    seen = _fit_recording_limits(cu_data)
    assert seen and all(v == expected for limits in seen for v in limits.values())
    with threadpool_limits(limits=1):  # e.g. a Dask worker's OMP_NUM_THREADS=1
        seen = _fit_recording_limits(cu_data)
    assert all(v == 1 for limits in seen for v in limits.values())
