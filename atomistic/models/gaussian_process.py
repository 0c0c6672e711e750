"""Gaussian-process regression of energies as sums of atomic terms (Rasmussen & Williams,
"Gaussian Processes for Machine Learning", MIT Press 2006, algorithm 2.1 and eq. 5.8), with the
structure kernel of :mod:`atomistic.models.kernels`.

Model: y = E - E_ref ~ GP(0, a^2 K0) + N(0, noise I), with K0 the structure kernel of width sigma
and amplitude a. With g = noise / a^2 and A = K0 + g I = L L^T:

    mean(u) = K0_u^T A^-1 y                                   (= KernelRidge with lamda = g)
    var(u)  = a^2 (K0_uu - K0_u^T A^-1 K0_u) + noise          (variance of a new label, eV^2)

Hyperparameters (``optimize=True``): sigma and g maximise the log marginal likelihood with a^2
profiled out, a^2 = y^T A^-1 y / n, i.e.
    log p(y) = -n/2 log(2 pi a^2) - 1/2 log|A| - n/2,
on at most ``optimize_max_structures`` structures
(:func:`~atomistic.models.marginal_likelihood.optimize_width_and_noise`): g exactly for each
width in the kernel's eigenbasis (A = Q diag(w + g) Q^T), the width by bounded Brent over
log sigma between the neighbours of the best of sigma * 2^k (k = -2..3, extended by factors of 2
while the best is at an end): one kernel per width. The atom-pair distances of the search are
computed once and reused at every width (:class:`~atomistic.models.kernels.DistanceBlocks`, at
most ``CACHE_BYTES`` of them kept).
With ``optimize=False`` the given sigma, noise and amplitude are used as they are.

With ``forces=True`` the GP is the sparse projected-process (DTC) model on energies and forces
of :mod:`atomistic.models.sparse_kernel` (GAP; Quiñonero-Candela & Rasmussen 2005): weights
w (M,) with precision A = K_MM / a^2 + Phi^T Lambda^-1 Phi, and for every energy and force
component the DTC predictive variance a^2 (k** - phi K_MM^-1 phi^T) + phi A^-1 phi^T + noise.
``optimize`` then takes sigma from {sigma/2, sigma, 2 sigma} and the noise-to-amplitude ratios
of energies and forces by the DTC log marginal likelihood (a^2 profiled), on at most
``optimize_max_structures`` structures; the final fit uses all of them, and the noise ratios
are optimised once more there (from the subset's values). Given a validation split, ``fit``
rescales the energy and force stds so that the validation z-scores have unit variance
(``energy_std_scale_``, ``force_std_scale_``; variance scaling, Kuleshov et al. 2018).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg
import scipy.optimize
import torch

from atomistic import interrupt
from atomistic.metrics import calibration
from atomistic.models.base import AtomicData
from atomistic.models.kernel_model import KernelModel, validation_metrics
from atomistic.models.kernels import (
    CACHE_BYTES,
    DEFAULT_BUDGET,
    DistanceBlocks,
    blas_threads,
    structure_self_kernel,
)
from atomistic.models.marginal_likelihood import optimize_width_and_noise
from atomistic.models.sparse_kernel import (
    design_blocks,
    log_marginal_likelihood,
    optimize_noise,
    solve,
)

__all__ = ["GaussianProcess", "calibration"]


class GaussianProcess(KernelModel):
    """Gaussian-process energies with a predictive standard deviation per structure.

    Parameters: ``kernel``, ``sigma`` as :class:`~atomistic.models.kernelridge.KernelRidge`;
    ``noise`` label noise variance (eV^2); ``amplitude`` a (eV; ``a**2`` multiplies the kernel);
    ``optimize`` fit sigma and noise/a^2 by the log marginal likelihood (a^2 profiled);
    ``optimize_max_structures`` largest random training subset used for the search (the final
    fit uses all structures); ``seed`` for that subset; ``baseline`` "lstsq" or None.

    Sparse energies-and-forces GP (``forces=True``, rbf only): ``n_sparse``,
    ``sparse_method``, ``energy_noise`` (eV per atom, std), ``force_noise`` (eV/Å, std) as in
    :class:`~atomistic.models.kernelridge.KernelRidge`; ``amplitude`` a (eV) is the prior std of
    a local energy; ``noise`` is unused. ``predict`` then also returns ``forces_std``
    (n_atoms, 3) eV/Å when forces are asked for.

    Learned state: ``sigma_``, ``noise_``, ``amplitude_``, ``alpha_`` (S,), ``cholesky_`` (S, S)
    lower factor of K0 + (noise/a^2) I, ``log_marginal_likelihood_``; sparse: ``alpha_`` (M,),
    ``cholesky_mm_`` (M, M) lower factor L_K of K_MM, ``cholesky_`` (M, M) lower factor of
    C = L_K^-1 A L_K^-T a^2 (:func:`~atomistic.models.sparse_kernel.solve`),
    ``energy_noise_``, ``force_noise_`` (``noise_`` = energy_noise_^2), ``energy_std_scale_``,
    ``force_std_scale_`` (1 without a validation split).
    """

    has_uncertainty = True
    std_optional = True  # predict(std=False): means only, much cheaper with forces
    noise: float
    amplitude: float
    optimize: bool
    optimize_max_structures: int

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
        forces: bool = False,
        n_sparse: int = 1000,
        sparse_method: str = "cur",
        energy_noise: float = 0.001,
        force_noise: float = 0.01,
    ) -> None:
        self._store_params(locals())

    # -- fitting ---------------------------------------------------------------------------------
    def _fit_dense(self, train: AtomicData, y: np.ndarray, validation, callback):
        """Fit the hyperparameters (if ``optimize``) and the exact posterior. Returns self."""
        sigma, g = float(self.sigma), float(self.noise) / float(self.amplitude) ** 2
        with blas_threads(len(y)):  # one BLAS thread for small systems: no oversubscription
            if self.optimize:
                sigma, g = self._optimize(y, sigma, callback)
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
        return self._record_metrics(validation, noise=self.noise_)

    def _record_metrics(self, validation: AtomicData | None, **noise: float):
        """Set ``metrics_``: the validation errors, the width, the fitted noise (``noise``), the
        amplitude and the log marginal likelihood. Returns self."""
        self.metrics_ = validation_metrics(self, validation)
        self.metrics_.update(
            sigma=self.sigma_,
            **noise,
            amplitude=self.amplitude_,
            log_marginal_likelihood=self.log_marginal_likelihood_,
        )
        return self

    def _optimize(self, y: np.ndarray, sigma: float, callback) -> tuple[float, float]:
        """(sigma, g) by the log marginal likelihood on at most ``optimize_max_structures``
        structures (:func:`~atomistic.models.marginal_likelihood.optimize_width_and_noise`)."""
        X, z, b = self.X_train_, self.numbers_train_, self.batch_train_
        n_all = len(y)
        if n_all > self.optimize_max_structures:
            rng = np.random.default_rng(self.seed)
            keep = np.sort(rng.choice(n_all, self.optimize_max_structures, replace=False))
            atoms = np.isin(b.numpy(), keep)
            remap = np.full(n_all, -1)
            remap[keep] = np.arange(len(keep))
            X, z, b = X[atoms], z[atoms], torch.as_tensor(remap[b.numpy()[atoms]])
            y = y[keep]
        # the search evaluates the kernel at many widths: distances built once, kept up to
        # CACHE_BYTES (the rest recomputed per width: DistanceBlocks' memory model)
        blocks = DistanceBlocks(X, z, b, len(y), self.kernel, CACHE_BYTES)
        width_free = self.kernel != "linear"
        return optimize_width_and_noise(blocks.evaluate, y, sigma, width_free, callback)

    def _fit_sparse(self, train: AtomicData, y: np.ndarray, validation, callback):
        """Sparse DTC fit on energies and forces (module docstring). Returns self."""
        amp = float(self.amplitude)
        rE, rF = float(self.energy_noise) / amp, float(self.force_noise) / amp
        sigma = float(self.sigma)
        if self.optimize:
            n_all = len(y)
            keep = np.arange(n_all)
            if n_all > self.optimize_max_structures:
                rng = np.random.default_rng(self.seed)
                keep = np.sort(rng.choice(n_all, self.optimize_max_structures, replace=False))
            sub = AtomicData(
                train.dataset.subset(keep),
                None,
                train.featurizer,
                train.scaler,
            )
            best: tuple[float, float, float, float] | None = None
            for step, s in enumerate((sigma / 2, sigma, 2 * sigma)):
                trial = type(self)(**{**self.get_params(), "optimize": False})
                trial._prepare(sub)
                trial._choose_sparse(sub)
                ne = trial._normal_equations(sub, y[keep], s)
                r_e, r_f, _, lml = optimize_noise(ne, rE, rF)
                if callback is not None:
                    callback(step, {"log_marginal_likelihood": lml, "sigma": s})
                if best is None or lml > best[0]:
                    best = (lml, s, r_e, r_f)
            assert best is not None  # three widths were tried
            _, sigma, rE, rF = best
        self._choose_sparse(train)
        ne = self._normal_equations(train, y, sigma)
        if self.optimize:
            # the noise ratios again on all structures and representatives: the subset's model
            # is less accurate, so its noise estimate is too large
            rE, rF, a2, lml = optimize_noise(ne, rE, rF, grid=False)
        else:
            a2 = amp**2
            lml, _, _ = log_marginal_likelihood(ne, 2 * math.log(rE), 2 * math.log(rF), amp)
        self.sigma_ = sigma
        self.amplitude_ = math.sqrt(a2)
        self.energy_noise_ = rE * self.amplitude_
        self.force_noise_ = rF * self.amplitude_
        self.noise_ = self.energy_noise_**2
        interrupt.check()
        self.alpha_, self.cholesky_ = solve(
            ne, self.energy_noise_, self.force_noise_, self.amplitude_
        )
        self.cholesky_mm_ = ne.L_K
        self.log_marginal_likelihood_ = lml
        self.energy_std_scale_, self.force_std_scale_ = 1.0, 1.0
        self._recalibrate(validation)
        return self._record_metrics(
            validation, energy_noise=self.energy_noise_, force_noise=self.force_noise_
        )

    def _recalibrate(self, validation: AtomicData | None) -> None:
        """Variance scaling on held-out labels (Kuleshov, Fenner & Ermon, ICML 2018; Levi et
        al., Sensors 22, 5540 (2022)): one factor each for energy and force stds, s^2 = mean
        z^2 of the validation errors, so that z has unit variance there. The DTC variance of
        a model whose amplitude was fitted by the DTC likelihood (which leaves k** - Q** out
        of the training covariance) is otherwise far too wide. No validation: factors 1."""
        if validation is None or validation.dataset.energy is None:
            return
        ds = validation.dataset
        has_f = ds.forces is not None and (validation.featurizer or self.featurizer_) is not None
        p = self.predict(validation, forces=has_f)
        zE = (p["energy"] - ds.energy) / p["energy_std"]
        self.energy_std_scale_ = float(np.sqrt(np.mean(zE**2)))
        if has_f:
            zF = (p["forces"] - ds.forces) / p["forces_std"]
            self.force_std_scale_ = float(np.sqrt(np.mean(zF**2)))

    # -- prediction ------------------------------------------------------------------------------
    def predict(
        self, data: AtomicData, forces: bool = False, stress: bool = False, std: bool = True
    ) -> dict[str, np.ndarray]:
        """energy (S,) eV and energy_std (S,) eV; with ``forces`` forces (n_atoms, 3) eV/Å and,
        for the sparse model, forces_std (n_atoms, 3) eV/Å (std of a new force label); with
        ``stress`` stress (S, 6) eV/Å^3 (mean only, by autograd as KernelRidge).

        ``std=False`` skips the force stds: the means then come from one reverse-mode pass
        (as KernelRidge's) instead of a forward-mode pass per atom and direction, which MD
        steps between uncertainty checks need."""
        data = self._as_data(data)
        if not (forces and self._sparse and std):
            return super().predict(data, forces, stress)
        if stress:
            return {**super().predict(data, False, True), **self.predict(data, True)}
        ds = data.dataset
        E, varE = np.zeros(ds.n_structures), np.zeros(ds.n_structures)
        F, varF = np.zeros(3 * ds.n_atoms), np.zeros(3 * ds.n_atoms)
        counts = np.diff(ds.offsets)
        with torch.no_grad():
            for d in self._force_design(data):
                assert d.KF is not None and d.kEE is not None and d.kFF is not None  # prior rows
                E[d.idx] = d.KE.numpy() @ self.alpha_
                varE[d.idx] = self._sparse_variance(d.KE.numpy(), d.kEE.numpy())
                varE[d.idx] += self.energy_noise_**2 * counts[d.idx]
                cols = (3 * d.rows[:, None] + np.arange(3)).reshape(-1)
                F[cols] = d.KF.numpy() @ self.alpha_
                varF[cols] = self._sparse_variance(d.KF.numpy(), d.kFF.numpy())
                varF[cols] += self.force_noise_**2
        return {
            "energy": E + self._baseline(ds),
            "forces": F.reshape(-1, 3),
            "energy_std": np.sqrt(varE) * self.energy_std_scale_,
            "forces_std": np.sqrt(varF).reshape(-1, 3) * self.force_std_scale_,
        }

    def _force_design(self, data: AtomicData):
        """The design rows of ``data``'s energies and forces against the representatives, with
        their prior variances, block by block (:func:`design_blocks`), through ``data``'s
        featurizer and scaler or the stored ones."""
        self._check_fitted()
        self._check_elements(data.dataset)
        featurizer = data.featurizer if data.featurizer is not None else self.featurizer_
        if featurizer is None:
            raise ValueError("forces need a featurizer (none given and none stored)")
        scaler = data.scaler if data.featurizer is not None else self.scaler_
        return design_blocks(
            data,
            self.X_train_,
            self.numbers_train_,
            self.sigma_,
            forces=True,
            prior=True,
            budget=self.budget,
            featurizer=featurizer,
            scaler=scaler,
        )

    def force_variance_terms(self, data: AtomicData) -> tuple[np.ndarray, np.ndarray]:
        """The parts of the predictive variance of every force component of ``data``: the
        whitened design rows V (M, 3 n_atoms), V_r = L_C^-1 L_K^-1 phi_r^T, and the rest c
        (3 n_atoms,), so that var_r = amplitude_^2 |V_r|^2 + c_r (eV^2/Å^2, before
        ``force_std_scale_``): the DTC residual a^2 (k** - phi K_MM^-1 phi^T) and the force
        noise. Only |V_r|^2 shrinks when labels are added (C grows by a^2 / force_noise^2 V V^T
        of the new rows): what a batch selection that accounts for its own picks updates
        (:func:`atomistic.active_select.variance_reduction_order`). Columns: atom-major,
        3 i + c. Sparse model on forces only."""
        data = self._as_data(data)
        if not self._sparse:
            raise ValueError("force_variance_terms needs the sparse GP on forces (forces=True)")
        ds = data.dataset
        V = np.zeros((len(self.alpha_), 3 * ds.n_atoms))
        rest = np.zeros(3 * ds.n_atoms)
        with torch.no_grad():
            for d in self._force_design(data):
                assert d.KF is not None and d.kFF is not None  # prior rows
                cols = (3 * d.rows[:, None] + np.arange(3)).reshape(-1)
                Phi = d.KF.numpy()
                v1 = scipy.linalg.solve_triangular(self.cholesky_mm_, Phi.T, lower=True)
                V[:, cols] = scipy.linalg.solve_triangular(self.cholesky_, v1, lower=True)
                projected = np.clip(d.kFF.numpy() - (v1 * v1).sum(0), 0.0, None)
                rest[cols] = self.amplitude_**2 * projected + self.force_noise_**2
        return V, rest

    def _sparse_variance(self, Phi: np.ndarray, prior: np.ndarray) -> np.ndarray:
        """Latent DTC variance of rows Phi (n, M) with prior variances ``prior`` (n,), eV^2."""
        v1 = scipy.linalg.solve_triangular(self.cholesky_mm_, Phi.T, lower=True)  # L_K^-1 phi
        v2 = scipy.linalg.solve_triangular(self.cholesky_, v1, lower=True)  # L_C^-1 L_K^-1 phi
        projected = np.clip(prior - (v1 * v1).sum(0), 0.0, None)
        return self.amplitude_**2 * (projected + (v2 * v2).sum(0))

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
        if self._sparse:
            var = self._sparse_variance(K.numpy(), kuu)
            var += self.energy_noise_**2 * np.diff(ds.offsets)
            return {"energy_std": np.sqrt(var) * self.energy_std_scale_}
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
        if self._sparse:
            state.update(
                energy_noise=self.energy_noise_,
                force_noise=self.force_noise_,
                energy_std_scale=self.energy_std_scale_,
                force_std_scale=self.force_std_scale_,
            )
            tensors["training"]["cholesky_mm"] = torch.as_tensor(self.cholesky_mm_)
        return state, tensors

    def _restore(self, state, tensors) -> None:
        super()._restore(state, tensors)
        self.noise_ = float(state["noise"])
        self.amplitude_ = float(state["amplitude"])
        self.log_marginal_likelihood_ = float(state["log_marginal_likelihood"])
        self.cholesky_ = tensors["training"]["cholesky"].numpy().astype(np.float64)
        if state.get("sparse"):
            self.energy_noise_ = float(state["energy_noise"])
            self.force_noise_ = float(state["force_noise"])
            self.energy_std_scale_ = float(state.get("energy_std_scale", 1.0))
            self.force_std_scale_ = float(state.get("force_std_scale", 1.0))
            self.cholesky_mm_ = tensors["training"]["cholesky_mm"].numpy().astype(np.float64)
