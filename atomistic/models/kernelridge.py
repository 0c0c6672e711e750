"""Kernel ridge regression of energies as sums of atomic terms (Rupp, Int. J. Quantum Chem. 115,
1058 (2015), eqs. 10-14).

With the structure kernel K_st = sum_{i in s, j in t} k(x_i, x_j) (:mod:`atomistic.models.kernels`)
and targets y_s = E_s - E_ref(s), the regression coefficients solve (K + lamda I) alpha = y by a
Cholesky factorisation and two triangular solves (no explicit inverse). A new structure u gets

    E(u) = E_ref(u) + sum_t K_ut alpha_t = E_ref(u) + sum_{i in u} e_i,
    e_i  = sum_{j in training atoms, Z_j = Z_i} k(x_i, x_j) alpha_{s(j)},

and forces F = -dE/dR by autograd through the kernel, the scaler and the featurizer (training
features are constants). E_ref is the least-squares per-element reference energy
(``baseline="lstsq"``, :func:`~atomistic.models.base.fit_reference_energies`) or 0
(``baseline=None``; then a linear kernel on one-atom structures is exactly scikit-learn's
``KernelRidge(alpha=lamda, kernel="linear")``).

With ``forces=True`` the model is instead the sparse (projected-process) model of GAP over
``n_sparse`` representative environments per element, fitted on energies and forces together
(:mod:`atomistic.models.sparse_kernel`): "training" then means the representatives, each its own
one-atom "structure", and ``alpha_`` their weights w, so the prediction code above is unchanged.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

from atomistic import interrupt
from atomistic.models.base import AtomicData
from atomistic.models.kernel_model import KernelModel, validation_metrics
from atomistic.models.kernels import DEFAULT_BUDGET, blas_threads
from atomistic.models.sparse_kernel import solve

__all__ = ["KernelRidge"]


class KernelRidge(KernelModel):
    """Kernel ridge regression (Rupp 2015).

    Parameters: ``kernel`` rbf | laplacian | exponential | linear (see
    :mod:`atomistic.models.kernels` for the exact formulas); ``sigma`` kernel width
    (dimensionless, in scaled-feature units); ``lamda`` ridge regulariser added to K's diagonal
    (eV-free: K is dimensionless); ``baseline`` "lstsq" (per-element least-squares reference
    energies subtracted before fitting) or None; ``budget`` kernel entries per block.

    Sparse energies-and-forces model (``forces=True``, rbf kernel only; GAP, Bartók & Csányi
    2015; :mod:`atomistic.models.sparse_kernel`): ``n_sparse`` representative environments per
    element chosen by ``sparse_method`` "cur" (leverage sampling, seeded by ``seed``) or "fps"
    (farthest points); weights from the regularised least squares on energies and forces with
    noise ``energy_noise`` (eV per atom; a structure's energy noise is energy_noise * sqrt(n))
    and ``force_noise`` (eV/Å), kernel amplitude 1 eV (only the noise-to-amplitude ratios
    matter for the mean); ``lamda`` is then unused.

    Learned state: ``alpha_`` (S_train,) or (M,) weights, ``X_train_`` (N_train, F) or the
    representatives (M, F), ``numbers_train_``, ``batch_train_``, ``reference_`` (eV per
    element), ``sigma_``.

    ``fit`` solves (K + lamda I) alpha = E - E_ref by Cholesky, or with ``forces`` the sparse
    normal equations on energies and forces; a validation set only adds validation errors to
    ``metrics_``.
    """

    lamda: float

    def __init__(
        self,
        kernel: str = "rbf",
        sigma: float = 1.0,
        lamda: float = 1e-5,
        baseline: str | None = "lstsq",
        budget: int = DEFAULT_BUDGET,
        forces: bool = False,
        n_sparse: int = 1000,
        sparse_method: str = "cur",
        energy_noise: float = 0.001,
        force_noise: float = 0.01,
        seed: int = 0,
    ) -> None:
        self._store_params(locals())

    def _fit_sparse(self, train: AtomicData, y: np.ndarray, validation, callback):
        """The sparse weights from the normal equations on energies and forces. Returns self."""
        self.sigma_ = float(self.sigma)
        self._choose_sparse(train)
        ne = self._normal_equations(train, y, self.sigma_)
        interrupt.check()
        self.alpha_, _ = solve(ne, float(self.energy_noise), float(self.force_noise))
        self.metrics_ = validation_metrics(self, validation)
        return self

    def _fit_dense(self, train: AtomicData, y: np.ndarray, validation, callback):
        """Solve (K + lamda I) alpha = E - E_ref by Cholesky; ``validation`` only adds
        validation errors to ``metrics_``, ``callback`` is unused. Returns self."""
        self.sigma_ = float(self.sigma)
        K, _ = self._train_kernel(self.sigma_)
        K[np.diag_indices_from(K)] += self.lamda
        with blas_threads(len(y)):  # one BLAS thread for small systems: no oversubscription
            try:
                factor = scipy.linalg.cho_factor(K, lower=True, check_finite=True)
            except np.linalg.LinAlgError as exc:
                raise np.linalg.LinAlgError(
                    f"K + lamda I is not positive definite (lamda={self.lamda}); increase lamda"
                ) from exc
            self.alpha_ = scipy.linalg.cho_solve(factor, y)
        self.metrics_ = validation_metrics(self, validation)
        return self
