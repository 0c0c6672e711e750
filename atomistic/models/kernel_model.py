"""The machinery shared by the kernel models (kernel ridge and Gaussian processes).

:class:`KernelModel` stores the training features (or, with ``forces=True``, the sparse model's
representative environments), builds the kernels against them, subtracts the per-element
baseline, predicts energies, forces and stresses from the weights ``alpha_`` (forces and
stresses by autograd through the kernel, the scaler and the featurizer), and saves and restores
its state. Subclasses implement ``_fit_dense`` and ``_fit_sparse``, which set ``sigma_`` and
``alpha_``, and may add outputs (``_extra_outputs``). :func:`validation_metrics` gives the
validation errors of a fitted model. The formulas are in :mod:`atomistic.models.kernelridge`
and :mod:`atomistic.models.gaussian_process`.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
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
from atomistic.models.kernels import KERNELS, DistanceBlocks, structure_kernel
from atomistic.models.keys import BATCH_KEY, NUMBERS_KEY, POSITIONS_KEY, ROWS_KEY, STRAIN_KEY
from atomistic.models.sparse_kernel import (
    SPARSE_METHODS,
    NormalEquations,
    accumulate,
    select_sparse,
)

__all__ = ["KernelModel", "validation_metrics"]


_BASELINES = (None, "lstsq")
_FORCE_CHUNK = 16  # structures per autograd pass when predicting forces


class _KernelModel(AtomisticModel):
    """Shared machinery of KernelRidge and GaussianProcess: training features, kernels against
    them, baselines, prediction and persistence (module docstring). Subclasses set ``sigma_``
    and ``alpha_`` in ``_fit_dense`` and ``_fit_sparse``.

    The leading underscore marks the class abstract for the registry of saved models (every
    subclass is registered by name); it is importable as :data:`KernelModel`.
    """

    # the hyperparameters both subclasses take (``__init__`` arguments, set by _store_params)
    kernel: str
    sigma: float
    baseline: str | None
    budget: int
    # the sparse (forces=True) model's
    forces: bool
    n_sparse: int
    sparse_method: str
    energy_noise: float
    force_noise: float
    seed: int
    # learned state
    X_train_: torch.Tensor
    numbers_train_: torch.Tensor
    batch_train_: torch.Tensor
    n_train_: int
    reference_: dict[str, float]
    sigma_: float
    alpha_: np.ndarray

    def _store_params(self, params: dict[str, Any]) -> None:
        """Keep the ``__init__`` arguments as attributes of the same names (what
        :meth:`get_params` reads back); ``params`` is the ``locals()`` of ``__init__``."""
        for name in inspect.signature(type(self).__init__).parameters:
            if name != "self":
                setattr(self, name, params[name])

    def fit(
        self,
        train: AtomicData,
        validation: AtomicData | None = None,
        callback=None,
        *,
        featurizer: Any = None,
        scaler: Any = None,
    ):
        """Fit the weights (and the subclass's hyperparameters) on ``train``.

        Parameters
        ----------
        train : AtomicData, ase.Atoms, list of ase.Atoms or path
            Training structures with energies (and forces, with ``forces=True``); structures
            that are not AtomicData are featurized with ``featurizer`` and ``scaler``
            (:meth:`AtomisticModel._fit_inputs`).
        validation : same as ``train``, optional
            Adds validation errors to ``metrics_`` (and calibrates the sparse GP's stds).
        callback : callable, optional
            ``callback(step, metrics)`` of a hyperparameter search; unused without one.
        featurizer, scaler : optional
            For inputs that are not AtomicData.

        Returns
        -------
        self
        """
        train, validation = self._fit_inputs(train, validation, featurizer, scaler)
        y = self._prepare(train)
        if self._sparse:
            return self._fit_sparse(train, y, validation, callback)
        return self._fit_dense(train, y, validation, callback)

    def _fit_dense(self, train: AtomicData, y: np.ndarray, validation, callback):
        raise NotImplementedError

    def _fit_sparse(self, train: AtomicData, y: np.ndarray, validation, callback):
        raise NotImplementedError

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


KernelModel = _KernelModel


def validation_metrics(model: AtomisticModel, validation: AtomicData | None) -> dict[str, Any]:
    """Energy errors per atom of ``model`` on ``validation`` (eV/atom).

    Parameters
    ----------
    model : AtomisticModel
        A fitted model.
    validation : AtomicData, optional
        Structures with energies.

    Returns
    -------
    dict
        ``val_energy_mae_per_atom`` and ``val_energy_rmse_per_atom``; empty without
        validation energies.
    """
    if validation is None or validation.dataset.energy is None:
        return {}
    ds = validation.dataset
    pred = model.predict(validation)["energy"]
    err = (pred - ds.energy) / np.diff(ds.offsets)
    return {
        "val_energy_mae_per_atom": float(np.abs(err).mean()),
        "val_energy_rmse_per_atom": float(np.sqrt((err**2).mean())),
    }
