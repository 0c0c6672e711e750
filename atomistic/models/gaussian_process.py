"""Gaussian-process regression of energies as sums of atomic terms (Rasmussen & Williams,
"Gaussian Processes for Machine Learning", MIT Press 2006, algorithm 2.1 and eq. 5.8), with the
structure kernel of :mod:`atomistic.models.kernels`.

Model: y = E - E_ref ~ GP(0, a^2 K0) + N(0, noise I), with K0 the structure kernel of width sigma
and amplitude a. With g = noise / a^2 and A = K0 + g I = L L^T:

    mean(u) = K0_u^T A^-1 y                                   (= KernelRidge with lamda = g)
    var(u)  = a^2 (K0_uu - K0_u^T A^-1 K0_u) + noise          (variance of a new label, eV^2)

Hyperparameters (``optimize=True``): starting from the best of sigma * 2^k (k = -2..3), sigma and g
maximise the log marginal likelihood with a^2
profiled out, a^2 = y^T A^-1 y / n, i.e.
    log p(y) = -n/2 log(2 pi a^2) - 1/2 log|A| - n/2,
by L-BFGS-B over (log sigma, log g) with the analytic gradient
    d log p / d theta = n/2 (alpha^T dA alpha) / (y^T alpha) - 1/2 tr(A^-1 dA),  alpha = A^-1 y.
With ``optimize=False`` the given sigma, noise and amplitude are used as they are.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.optimize
import torch

from atomistic.metrics import calibration
from atomistic.models.base import AtomicData
from atomistic.models.kernelridge import _KernelModel, _validation_metrics
from atomistic.models.kernels import DEFAULT_BUDGET, structure_self_kernel

__all__ = ["GaussianProcess", "calibration"]


class GaussianProcess(_KernelModel):
    """Gaussian-process energies with a predictive standard deviation per structure.

    Parameters: ``kernel``, ``sigma`` as :class:`~atomistic.models.kernelridge.KernelRidge`;
    ``noise`` label noise variance (eV^2); ``amplitude`` a (eV; ``a**2`` multiplies the kernel);
    ``optimize`` fit sigma and noise/a^2 by the log marginal likelihood (a^2 profiled);
    ``optimize_max_structures`` largest random training subset used for the search (the final
    fit uses all structures); ``seed`` for that subset; ``baseline`` "lstsq" or None.

    Learned state: ``sigma_``, ``noise_``, ``amplitude_``, ``alpha_`` (S,), ``cholesky_`` (S, S)
    lower factor of K0 + (noise/a^2) I, ``log_marginal_likelihood_``.
    """

    has_uncertainty = True

    def __init__(
        self,
        kernel: str = "rbf",
        sigma: float = 1.0,
        noise: float = 1e-5,
        amplitude: float = 1.0,
        optimize: bool = True,
        optimize_max_structures: int = 300,
        seed: int = 0,
        baseline: str | None = "lstsq",
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        self.kernel = kernel
        self.sigma = sigma
        self.noise = noise
        self.amplitude = amplitude
        self.optimize = optimize
        self.optimize_max_structures = optimize_max_structures
        self.seed = seed
        self.baseline = baseline
        self.budget = budget

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, train: AtomicData, validation: AtomicData | None = None, callback=None):
        """Fit hyperparameters (if ``optimize``) and the posterior. Returns self."""
        y = self._prepare(train)
        sigma, g = float(self.sigma), float(self.noise) / float(self.amplitude) ** 2
        if self.optimize:
            sigma, g = self._optimize(y, sigma, g, callback)
        self.sigma_ = sigma
        K, _ = self._train_kernel(sigma)
        A = K + g * np.eye(len(y))
        self.cholesky_ = np.linalg.cholesky(A)
        factor = (self.cholesky_, True)
        self.alpha_ = scipy.linalg.cho_solve(factor, y)
        if self.optimize:
            a2 = float(y @ self.alpha_) / len(y)
        else:
            a2 = float(self.amplitude) ** 2
        self.amplitude_ = math.sqrt(a2)
        self.noise_ = g * a2
        logdet = 2.0 * np.log(np.diag(self.cholesky_)).sum()
        n = len(y)
        self.log_marginal_likelihood_ = float(
            -0.5 * (y @ self.alpha_) / a2 - 0.5 * logdet - 0.5 * n * math.log(2 * math.pi * a2)
        )
        self.metrics_ = _validation_metrics(self, validation)
        self.metrics_.update(
            sigma=self.sigma_,
            noise=self.noise_,
            amplitude=self.amplitude_,
            log_marginal_likelihood=self.log_marginal_likelihood_,
        )
        return self

    def _optimize(self, y: np.ndarray, sigma: float, g: float, callback) -> tuple[float, float]:
        full = (self.X_train_, self.numbers_train_, self.batch_train_, self.n_train_)
        n_all = len(y)
        if n_all > self.optimize_max_structures:
            rng = np.random.default_rng(self.seed)
            keep = np.sort(rng.choice(n_all, self.optimize_max_structures, replace=False))
            atoms = np.isin(self.batch_train_.numpy(), keep)
            remap = np.full(n_all, -1)
            remap[keep] = np.arange(len(keep))
            self.X_train_ = full[0][atoms]
            self.numbers_train_ = full[1][atoms]
            self.batch_train_ = torch.as_tensor(remap[full[2].numpy()[atoms]])
            self.n_train_ = len(keep)
            y = y[keep]
        n = len(y)
        scale = float(np.mean(np.diag(self._train_kernel(sigma)[0])))
        g_bounds = (math.log(1e-10 * scale), math.log(10.0 * scale))
        s_bounds = (math.log(1e-3), math.log(1e3))
        step = [0]

        def neg_lml(theta: np.ndarray) -> tuple[float, np.ndarray]:
            s, gg = math.exp(theta[0]), math.exp(theta[1])
            K, dK = self._train_kernel(s, with_dlogsigma=True)
            A = K + gg * np.eye(n)
            try:
                factor = scipy.linalg.cho_factor(A, lower=True)
            except np.linalg.LinAlgError:
                return 1e30, np.zeros(2)
            alpha = scipy.linalg.cho_solve(factor, y)
            yta = float(y @ alpha)
            logdet = 2.0 * np.log(np.diag(factor[0])).sum()
            lml = -0.5 * n * math.log(2 * math.pi * yta / n) - 0.5 * logdet - 0.5 * n
            Ainv = scipy.linalg.cho_solve(factor, np.eye(n))
            grad = np.array(
                [
                    0.5 * n * float(alpha @ dK @ alpha) / yta - 0.5 * float(np.sum(Ainv * dK)),
                    0.5 * n * gg * float(alpha @ alpha) / yta - 0.5 * gg * float(np.trace(Ainv)),
                ]
            )
            if self.kernel == "linear":
                grad[0] = 0.0
            if callback is not None:
                callback(step[0], {"log_marginal_likelihood": lml, "sigma": s, "g": gg})
            step[0] += 1
            return -lml, -grad

        lo, hi = [s_bounds[0], g_bounds[0]], [s_bounds[1], g_bounds[1]]
        # The likelihood is often multimodal in sigma: start from the best of a coarse grid.
        starts = [
            np.clip([math.log(s), math.log(g)], lo, hi)
            for s in (sigma, *(sigma * 2.0**k for k in (-2, -1, 1, 2, 3)))
        ]
        if self.kernel == "linear":
            starts = starts[:1]
        x0 = min(starts, key=lambda x: neg_lml(x)[0])
        res = scipy.optimize.minimize(
            neg_lml,
            x0,
            jac=True,
            method="L-BFGS-B",
            bounds=[s_bounds, g_bounds],
            options={"maxiter": 100},
        )
        self.X_train_, self.numbers_train_, self.batch_train_, self.n_train_ = full
        return math.exp(res.x[0]), math.exp(res.x[1])

    # -- prediction ------------------------------------------------------------------------------
    def _extra_outputs(self, K: torch.Tensor, data: AtomicData, X: torch.Tensor) -> dict:
        ds = data.dataset
        kuu = structure_self_kernel(
            X,
            torch.as_tensor(ds.numbers),
            torch.as_tensor(ds.batch),
            ds.n_structures,
            self.kernel,
            self.sigma_,
        ).numpy()
        v = scipy.linalg.solve_triangular(self.cholesky_, K.numpy().T, lower=True)  # (S_tr, S)
        latent = np.clip(kuu - (v * v).sum(0), 0.0, None)
        var = self.amplitude_**2 * latent + self.noise_
        return {"energy_std": np.sqrt(var)}

    # -- persistence -----------------------------------------------------------------------------
    def _state(self):
        state, tensors = super()._state()
        state.update(
            noise=self.noise_,
            amplitude=self.amplitude_,
            log_marginal_likelihood=self.log_marginal_likelihood_,
        )
        tensors["training"]["cholesky"] = torch.as_tensor(self.cholesky_)
        return state, tensors

    def _restore(self, state, tensors) -> None:
        super()._restore(state, tensors)
        self.noise_ = float(state["noise"])
        self.amplitude_ = float(state["amplitude"])
        self.log_marginal_likelihood_ = float(state["log_marginal_likelihood"])
        self.cholesky_ = tensors["training"]["cholesky"].numpy().astype(np.float64)
