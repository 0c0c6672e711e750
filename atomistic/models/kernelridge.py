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

from typing import Any

import numpy as np
import scipy.linalg
import torch

from atomistic import interrupt
from atomistic.models.base import (
    AtomicData,
    AtomisticModel,
    NeighborCache,
    fit_reference_energies,
    reference_energy,
    scaled_features_torch,
    stress_from_strain_grad,
)
from atomistic.models.kernels import (
    DEFAULT_BUDGET,
    KERNELS,
    DistanceBlocks,
    blas_threads,
    structure_kernel,
)
from atomistic.models.keys import BATCH_KEY, NUMBERS_KEY, POSITIONS_KEY, ROWS_KEY, STRAIN_KEY
from atomistic.models.sparse_kernel import (
    SPARSE_METHODS,
    NormalEquations,
    accumulate,
    select_sparse,
    solve,
)

__all__ = ["KernelRidge"]

_BASELINES = (None, "lstsq")
_FORCE_CHUNK = 16  # structures per autograd pass when predicting forces


class _KernelModel(AtomisticModel):
    """Shared machinery of KernelRidge and GaussianProcess: training features, kernels against
    them, baselines and persistence. Subclasses set ``sigma_`` and ``alpha_`` in ``fit``."""

    kernel: str
    baseline: str | None
    budget: int
    # the sparse (forces=True) model's hyperparameters; both subclasses set them in __init__
    forces: bool
    n_sparse: int
    sparse_method: str
    seed: int
    # learned state
    X_train_: torch.Tensor
    numbers_train_: torch.Tensor
    batch_train_: torch.Tensor
    n_train_: int
    reference_: dict[str, float]
    sigma_: float
    alpha_: np.ndarray

    def _check_hyper(self) -> None:
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel {self.kernel!r} is not one of {KERNELS}")
        if self.baseline not in _BASELINES:
            raise ValueError(f"baseline {self.baseline!r} is not one of {_BASELINES}")
        if self._sparse:
            if self.kernel != "rbf":
                raise ValueError(f"forces=True needs kernel='rbf', not {self.kernel!r}")
            if self.sparse_method not in SPARSE_METHODS:
                raise ValueError(
                    f"sparse_method {self.sparse_method!r} is not one of {SPARSE_METHODS}"
                )

    @property
    def _sparse(self) -> bool:
        return bool(getattr(self, "forces", False))

    def _choose_sparse(self, train: AtomicData) -> None:
        """Replace the stored training atoms by the representatives (forces=True)."""
        if train.featurizer is None:
            raise ValueError(
                "forces=True needs a differentiable featurizer (latent features have none)"
            )
        if train.dataset.forces is None:
            raise ValueError("forces=True needs a training set with forces")
        X = self.X_train_.numpy()
        numbers = train.dataset.numbers
        rows = select_sparse(X, numbers, int(self.n_sparse), self.sparse_method, int(self.seed))
        self.X_train_ = torch.as_tensor(X[rows])
        self.numbers_train_ = torch.as_tensor(numbers[rows])
        self.batch_train_ = torch.arange(len(rows))
        self.n_train_ = len(rows)

    def _normal_equations(self, train: AtomicData, y: np.ndarray, sigma: float) -> NormalEquations:
        return accumulate(
            train, y, self.X_train_, self.numbers_train_, sigma, forces=True, budget=self.budget
        )

    def _prepare(self, train: AtomicData) -> np.ndarray:
        """Store the training features; return the targets y (S,) eV."""
        self._check_hyper()
        self._remember_inputs(train)
        ds = train.dataset
        self.X_train_ = torch.as_tensor(train.scaled_features())
        self.numbers_train_ = torch.as_tensor(ds.numbers)
        self.batch_train_ = torch.as_tensor(ds.batch)
        self.n_train_ = ds.n_structures
        if self.baseline == "lstsq":
            self.reference_ = fit_reference_energies(ds, self.elements_)
        else:
            self.reference_ = {s: 0.0 for s in self.elements_}
        return ds.energy - reference_energy(ds, self.reference_)

    def _train_kernel(
        self, sigma: float, with_dlogsigma: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """K between the training structures, (S, S), and optionally dK/dlog sigma, numpy:
        the upper triangle of atom pairs only, streamed in cache-sized chunks (nothing kept)."""
        X, z, b, n = self.X_train_, self.numbers_train_, self.batch_train_, self.n_train_
        with torch.no_grad():
            K, dK = DistanceBlocks(X, z, b, n, self.kernel, max_bytes=0).evaluate(
                sigma, with_dlogsigma
            )
        interrupt.check()  # the kernel is the long part of a fit: stop before its solve
        return K, dK

    def _kernel_to_train(self, X: torch.Tensor, numbers, batch, n: int) -> torch.Tensor:
        """K between new structures and the training structures, shape (n, S_train)."""
        K, _ = structure_kernel(
            X,
            numbers,
            batch,
            n,
            self.X_train_,
            self.numbers_train_,
            self.batch_train_,
            self.n_train_,
            self.kernel,
            self.sigma_,
            budget=self.budget,
        )
        return K

    def _baseline(self, ds) -> np.ndarray:
        return reference_energy(ds, self.reference_)

    def _extra_outputs(self, K: torch.Tensor, data: AtomicData, X: torch.Tensor) -> dict:
        return {}

    def predict(
        self, data: AtomicData, forces: bool = False, stress: bool = False
    ) -> dict[str, np.ndarray]:
        """energy (S,) eV; forces (n_atoms, 3) eV/Å with ``forces``; stress (S, 6) eV/Å^3 with
        ``stress`` (ASE's Voigt order); energy_std (S,) eV for models with uncertainty.
        ``data`` may also be ase.Atoms, a list of them or a file path (stored featurizer)."""
        data = self._as_data(data)
        self._check_fitted()
        self._check_elements(data.dataset)
        ds = data.dataset
        alpha = torch.as_tensor(self.alpha_)
        numbers, batch = torch.as_tensor(ds.numbers), torch.as_tensor(ds.batch)
        out: dict[str, np.ndarray] = {}
        if not forces and not stress:
            X = torch.as_tensor(data.scaled_features())
            with torch.no_grad():
                K = self._kernel_to_train(X, numbers, batch, ds.n_structures)
                out["energy"] = (K @ alpha).numpy() + self._baseline(ds)
                out.update(self._extra_outputs(K, data, X))
            return out
        featurizer = data.featurizer if data.featurizer is not None else self.featurizer_
        if featurizer is None:
            raise ValueError("forces need a featurizer (none given and none stored)")
        scaler = data.scaler if data.featurizer is not None else self.scaler_
        cache = NeighborCache(featurizer, ds)
        E = np.zeros(ds.n_structures)
        F = np.zeros((ds.n_atoms, 3))
        W = np.zeros((ds.n_structures, 3, 3))
        Xall = torch.zeros((ds.n_atoms, int(self.X_train_.shape[1])), dtype=torch.float64)
        chunks = max(1, -(-ds.n_structures // _FORCE_CHUNK))
        for idx in np.array_split(np.arange(ds.n_structures), chunks):
            b = cache.batch(idx, strain=stress)
            X = scaled_features_torch(featurizer, scaler, b)
            e = self._kernel_to_train(X, b[NUMBERS_KEY], b[BATCH_KEY], len(idx)) @ alpha
            wrt = [b[POSITIONS_KEY], b[STRAIN_KEY]] if stress else [b[POSITIONS_KEY]]
            grads = torch.autograd.grad(e.sum(), wrt)
            E[idx] = e.detach().numpy()
            F[b[ROWS_KEY].numpy()] = -grads[0].numpy()
            if stress:
                W[idx] = grads[1].numpy()
            Xall[b[ROWS_KEY]] = X.detach()
        out["energy"] = E + self._baseline(ds)
        if forces:
            out["forces"] = F
        if stress:
            out["stress"] = stress_from_strain_grad(W, ds.cell)
        if self.has_uncertainty:
            with torch.no_grad():
                K = self._kernel_to_train(Xall, numbers, batch, ds.n_structures)
                out.update(self._extra_outputs(K, data, Xall))
        return out

    # persistence ------------------------------------------------------------------------------
    def _state(self):
        state = {
            "reference": self.reference_,
            "sigma": self.sigma_,
            "n_train": self.n_train_,
            "sparse": self._sparse,
        }
        tensors = {
            "training": {
                "features": self.X_train_,
                "numbers": self.numbers_train_,
                "batch": self.batch_train_,
                "alpha": torch.as_tensor(self.alpha_),
            }
        }
        return state, tensors

    def _restore(self, state, tensors) -> None:
        t = tensors["training"]
        self.reference_ = dict(state["reference"])
        self.sigma_ = float(state["sigma"])
        self.n_train_ = int(state["n_train"])
        self.X_train_ = t["features"].to(torch.float64)
        self.numbers_train_ = t["numbers"].to(torch.long)
        self.batch_train_ = t["batch"].to(torch.long)
        self.alpha_ = t["alpha"].numpy().astype(np.float64)


class KernelRidge(_KernelModel):
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
    """

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
        self.kernel = kernel
        self.sigma = sigma
        self.lamda = lamda
        self.baseline = baseline
        self.budget = budget
        self.forces = forces
        self.n_sparse = n_sparse
        self.sparse_method = sparse_method
        self.energy_noise = energy_noise
        self.force_noise = force_noise
        self.seed = seed

    def fit(
        self,
        train: AtomicData,
        validation: AtomicData | None = None,
        callback=None,
        *,
        featurizer: Any = None,
        scaler: Any = None,
    ):
        """Solve (K + lamda I) alpha = E - E_ref by Cholesky (or, with ``forces``, the sparse
        normal equations on energies and forces). Returns self.

        ``validation`` only adds validation errors to ``metrics_``; ``callback`` is unused
        (accepted for a uniform model interface). ``train``/``validation`` may be ase.Atoms (a
        list) or a file path, featurized with ``featurizer`` and ``scaler``
        (:meth:`AtomisticModel._fit_inputs`)."""
        train, validation = self._fit_inputs(train, validation, featurizer, scaler)
        y = self._prepare(train)
        self.sigma_ = float(self.sigma)
        if self._sparse:
            self._choose_sparse(train)
            ne = self._normal_equations(train, y, self.sigma_)
            interrupt.check()
            self.alpha_, _ = solve(ne, float(self.energy_noise), float(self.force_noise))
            self.metrics_ = _validation_metrics(self, validation)
            return self
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
        self.metrics_ = _validation_metrics(self, validation)
        return self


def _validation_metrics(model: AtomisticModel, validation: AtomicData | None) -> dict[str, Any]:
    if validation is None or validation.dataset.energy is None:
        return {}
    ds = validation.dataset
    pred = model.predict(validation)["energy"]
    err = (pred - ds.energy) / np.diff(ds.offsets)
    return {
        "val_energy_mae_per_atom": float(np.abs(err).mean()),
        "val_energy_rmse_per_atom": float(np.sqrt((err**2).mean())),
    }
