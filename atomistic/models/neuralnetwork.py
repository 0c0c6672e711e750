"""Behler–Parrinello neural-network potentials (Behler & Parrinello, PRL 98, 146401 (2007)).

E_s = sum_{i in s} E_i,  E_i = e_Z + scale_Z NN_Z(x_i)   (eq. 3 of the paper, with a per-element
output scale and shift), where x_i are the scaled atomic features of atom i and NN_Z a fully
connected network of element Z. The shift e_Z is the per-element reference energy: fitted by least
squares over the training set (:func:`~atomistic.models.base.fit_reference_energies`) or given
(``reference_energies``); scale_Z is the standard deviation of the residual energy per atom
(energy training) or the RMS force component times 1 Å (force training), so the networks start
by learning an O(1) target. The networks compute in ``dtype`` (float32 by default);
the reference energies are added in float64. Forces F_i = -dE/dR_i by autograd through the
networks, the scaler and the featurizer.

Why one module of just over 400 lines: it is the model class alone (its networks, batches and
loss are in atomic_networks.py and nn_batches.py); splitting the class would scatter its fit.

Loss (docs/training.md), per minibatch of B structures with N_s atoms each::

    L = energy_weight * mean_s (dE_s / n_s)^2 + force_weight * mean_(i,c) (dF_ic)^2

with n_s = N_s (``energy_normalization="atoms"``: per-atom energy MSE, eV^2/atom^2, as NequIP and
MACE) or n_s = sqrt(N_s) (``"sqrt_atoms"``: (dE)^2/N, eV^2/atom, as TorchANI); the force term is the
MSE per Cartesian component, eV^2/Å^2. ``energy_weight`` is dimensionless; ``force_weight``
converts the force term into energy-term units (atom^-2 Å^2 or atom^-1 Å^2).

Force training precomputes the features and their position Jacobian once
(:mod:`atomistic.features.jacobian`) when they fit in ``jacobian_memory`` bytes, so that a step
costs the networks and one batched contraction, not a featurizer pass and its second derivatives;
otherwise features are computed on the fly with neighbour lists built once.

A committee (``ensemble > 1``) trains members with seeds ``seed + k`` (and, with ``bootstrap``,
each on a resample of the training structures with replacement); predictions are the members'
mean, with their standard deviation as ``energy_std`` and ``forces_std``.
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np
import torch

from atomistic.device import resolve_device
from atomistic.models.atomic_networks import (
    DTYPES,
    AtomicNetworks,
    combine_members,
    init_output,
    on_device,
    refit_shift,
)
from atomistic.models.base import (
    AtomicData,
    AtomisticModel,
    NeighborCache,
    fit_reference_energies,
    reference_energy,
    scaled_features_torch,
    stress_from_strain_grad,
)
from atomistic.models.keys import BATCH_KEY, NUMBERS_KEY, POSITIONS_KEY, ROWS_KEY, STRAIN_KEY
from atomistic.models.layers import ACTIVATIONS
from atomistic.models.nn_batches import TrainingSet, energy_force_loss
from atomistic.models.training import History, TrainingConfig
from atomistic.models.training import train as run_training

__all__ = ["NeuralNetwork", "AtomicNetworks", "TrainingWarning", "DTYPES"]

ENERGY_NORMALIZATIONS = ("atoms", "sqrt_atoms")
_PREDICT_CHUNK = 64  # structures per forward pass when predicting forces
_JACOBIAN_MEMORY = 2 * 1024**3  # default byte budget of precomputed feature Jacobians


class TrainingWarning(UserWarning):
    """A model trained without learning anything useful (best epoch 0, or no better than the
    per-element reference energies on the validation set)."""


class NeuralNetwork(AtomisticModel):
    """Behler–Parrinello network potential (module docstring; docs/training.md).

    Parameters
    ----------
    hiddenlayers : tuple of int, or dict of element symbol -> tuple of int
        Hidden layer widths of every element's network, or per element (ANI-1x: H (160, 128, 96),
        C (144, 112, 96), N and O (128, 112, 96)).
    activation : str
        One of :data:`atomistic.models.layers.ACTIVATIONS` (relu gives discontinuous forces:
        prefer a smooth one for MD; ``celu0.1`` is ANI's).
    force_weight, energy_weight : float
        Weights of the force and energy terms of the loss (``force_weight`` 0: energies only).
    energy_normalization : {"atoms", "sqrt_atoms"}
        Energy error per structure divided by N or by sqrt(N) before squaring.
    dtype : {"float32", "float64"}
        Precision of the networks in training and prediction.
    ensemble : int
        Committee size; members differ by seed (and resample with ``bootstrap``).
    bootstrap : bool
        Train each member on a resample of the training structures with replacement.
    reference_energies : dict of element symbol -> float, optional
        Per-element reference energies e_Z (eV); fitted by least squares when None.
    refit_shift : bool
        After training, correct the per-element output shifts by least squares on the training
        residuals (the networks are unchanged; energies move by a constant per composition).
    jacobian_memory : int
        Byte budget for precomputed feature Jacobians in force training.
    training : TrainingConfig or dict
        Optimisation settings; ``training.seed`` also seeds the weight initialisation, and
        ``training.max_time`` bounds the whole fit (feature Jacobians included; a committee's
        members share it equally).
    device : {"cpu", "cuda"}
        Where the networks train and predict (and the featurizer runs, for forces); "cuda"
        without a GPU falls back to the CPU with one message (:mod:`atomistic.device`).
        The saved model is the same either way (its tensors are kept on the CPU).

    Learned state: ``members_`` (list of :class:`AtomicNetworks`; ``module_`` is the first),
    ``reference_`` (eV per element), ``history_`` (the first member's), ``histories_``,
    ``n_features_``.
    """

    def __init__(
        self,
        hiddenlayers: tuple[int, ...] | dict[str, tuple[int, ...]] = (10, 10),
        activation: str = "relu",
        force_weight: float = 0.0,
        energy_weight: float = 1.0,
        energy_normalization: str = "atoms",
        dtype: str = "float32",
        ensemble: int = 1,
        bootstrap: bool = False,
        reference_energies: dict[str, float] | None = None,
        refit_shift: bool = True,
        jacobian_memory: int = _JACOBIAN_MEMORY,
        training: TrainingConfig | dict[str, Any] | None = None,
        device: str = "cpu",
    ) -> None:
        self.hiddenlayers = hiddenlayers
        self.activation = activation
        self.force_weight = force_weight
        self.energy_weight = energy_weight
        self.energy_normalization = energy_normalization
        self.dtype = dtype
        self.ensemble = ensemble
        self.bootstrap = bootstrap
        self.reference_energies = reference_energies
        self.refit_shift = refit_shift
        self.jacobian_memory = jacobian_memory
        self.training = training
        self.device = device

    @property
    def has_uncertainty(self) -> bool:  # type: ignore[override]
        return int(self.ensemble) > 1

    @classmethod
    def _params_from_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        h = params["hiddenlayers"]
        h = {k: tuple(v) for k, v in h.items()} if isinstance(h, dict) else tuple(h)
        return {**params, "hiddenlayers": h}

    def _json_params(self) -> dict[str, Any]:
        out = {**super()._json_params(), "training": self._config().to_dict()}
        if isinstance(self.hiddenlayers, dict):
            out["hiddenlayers"] = {k: list(v) for k, v in self.hiddenlayers.items()}
        return out

    def _config(self) -> TrainingConfig:
        t = self.training
        if t is None:
            return TrainingConfig()
        return t if isinstance(t, TrainingConfig) else TrainingConfig(**t)

    def _layers(self) -> dict[str, tuple[int, ...]]:
        h = self.hiddenlayers
        if isinstance(h, dict):
            missing = sorted(set(self.elements_) - set(h))
            if missing:
                raise ValueError(f"hiddenlayers gives no widths for element(s) {missing}")
            return {s: tuple(int(w) for w in h[s]) for s in self.elements_}
        return {s: tuple(int(w) for w in h) for s in self.elements_}

    def _check_params(self, data: AtomicData) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.energy_normalization not in ENERGY_NORMALIZATIONS:
            raise ValueError(
                f"energy_normalization must be one of {ENERGY_NORMALIZATIONS}, "
                f"got {self.energy_normalization!r}"
            )
        if int(self.ensemble) < 1:
            raise ValueError(f"ensemble must be >= 1, got {self.ensemble}")
        for name in ("force_weight", "energy_weight"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, got {v}")
        if self.force_weight > 0:
            if data.featurizer is None:
                raise ValueError("force training needs a featurizer (features alone carry no dR)")
            if data.dataset.forces is None:
                raise ValueError("force training needs a dataset with forces")

    def _references(self, ds) -> dict[str, float]:
        if self.reference_energies is None:
            return fit_reference_energies(ds, self.elements_)
        missing = sorted(set(self.elements_) - set(self.reference_energies))
        if missing:
            raise ValueError(f"reference_energies gives no value for element(s) {missing}")
        return {s: float(self.reference_energies[s]) for s in self.elements_}

    # -- fitting ---------------------------------------------------------------------------------
    def fit(
        self,
        train: AtomicData,
        validation: AtomicData | None = None,
        callback=None,
        *,
        featurizer: Any = None,
        scaler: Any = None,
    ):
        """Train on ``train`` (energies, and forces when ``force_weight > 0``); early stopping and
        the schedule watch ``validation`` when given. Returns self.

        ``train``/``validation`` may be AtomicData, ase.Atoms (a list) or a file path; then
        ``featurizer`` and ``scaler`` apply (:meth:`AtomisticModel._fit_inputs`)."""
        start = time.perf_counter()
        train, validation = self._fit_inputs(train, validation, featurizer, scaler)
        self._check_params(train)
        config = self._config()
        self._remember_inputs(train)
        dtype = DTYPES[self.dtype]
        device = resolve_device(getattr(self, "device", "cpu"))
        ds = train.dataset
        self.reference_ = self._references(ds)
        train_set = TrainingSet(self, train, dtype)
        val_set = (
            None
            if validation is None
            else TrainingSet(self, validation, dtype, columns=train_set.columns)
        )
        n_members = int(self.ensemble)
        self.members_: list[AtomicNetworks] = []
        self.histories_: list[History] = []
        for k in range(n_members):
            changes: dict[str, Any] = {"seed": config.seed + k}
            if config.max_time is not None:  # the budget covers the whole fit, shared equally
                left = config.max_time - (time.perf_counter() - start)
                changes["max_time"] = max(left / (n_members - k), 1e-3)
            if k and config.checkpoint_dir is not None:
                changes["checkpoint_dir"] = f"{config.checkpoint_dir}/member{k}"
            cfg = TrainingConfig(**{**config.to_dict(), **changes})
            torch.manual_seed(cfg.seed)
            module = AtomicNetworks(
                self.elements_, train_set.columns, self._layers(), self.activation
            ).to(dtype)
            self._init_output(module, ds)
            pool = None
            if self.bootstrap:
                rng = np.random.default_rng(cfg.seed)
                pool = rng.integers(0, ds.n_structures, ds.n_structures)
            with on_device(module, self.featurizer_, device) as move:
                history = run_training(
                    module,
                    energy_force_loss(
                        self.force_weight,
                        self.energy_weight,
                        self.energy_normalization == "sqrt_atoms",
                        self.featurizer_,
                        self.scaler_,
                    ),
                    move(train_set.source(cfg.batch_size, pool, shuffle=True)),
                    None if val_set is None else move(val_set.source(cfg.batch_size, None, False)),
                    cfg,
                    callback,
                )
            if self.refit_shift:
                refit_shift(module, train, self.reference_)
            self.members_.append(module)
            self.histories_.append(history)
        self.module_ = self.members_[0]
        self.history_ = self.histories_[0]
        self.n_features_ = train_set.n_features
        h = self.history_
        self.metrics_ = {k: v[h.best_epoch] for k, v in h.metrics.items() if k != "lr"}
        self.metrics_.update(best_epoch=h.best_epoch, epochs_completed=h.epochs_completed)
        self._warn_if_useless(validation if validation is not None else train)
        return self

    def _init_output(self, module: AtomicNetworks, ds) -> None:
        """Set a new member's output shift and scale (:func:`~atomistic.models.atomic_networks.
        init_output`); a hook, replaced per instance by :func:`atomistic.active.warm_start`."""
        init_output(module, ds, self.reference_, self.force_weight > 0)

    def _warn_if_useless(self, data: AtomicData) -> None:
        """Warn when the best epoch is 0 or the energies are no better than the references."""
        ds = data.dataset
        n = np.diff(ds.offsets)
        base = float(
            np.sqrt(np.mean(((ds.energy - reference_energy(ds, self.reference_)) / n) ** 2))
        )
        pred = self.predict(data)["energy"]
        rmse = float(np.sqrt(np.mean(((pred - ds.energy) / n) ** 2)))
        problems = []
        if self.history_.best_epoch <= 0 and self.history_.epochs_completed > 1:
            problems.append(f"its best epoch is {self.history_.best_epoch}")
        if rmse >= base:
            problems.append(
                f"its energy RMSE {rmse * 1e3:.3g} meV/atom is no better than the per-element "
                f"reference energies' {base * 1e3:.3g} meV/atom"
            )
        self.metrics_["baseline_energy_rmse_per_atom"] = base
        if problems:
            self.metrics_["useless"] = 1.0
            warnings.warn(
                f"NeuralNetwork(hiddenlayers={self.hiddenlayers}, force_weight="
                f"{self.force_weight}) learned nothing useful: {'; '.join(problems)}",
                TrainingWarning,
                stacklevel=3,
            )

    # -- prediction ------------------------------------------------------------------------------
    def predict(
        self, data: AtomicData, forces: bool = False, stress: bool = False
    ) -> dict[str, np.ndarray]:
        """energy (S,) eV and, with ``forces``, forces (n_atoms, 3) eV/Å; a committee adds
        energy_std (S,) eV and forces_std (n_atoms, 3) eV/Å (standard deviation of the members).
        With ``stress``, stress (S, 6) eV/Å^3 (ASE's Voigt order; NaN without a 3-D cell).
        ``data`` may also be ase.Atoms, a list of them or a file path (stored featurizer)."""
        data = self._as_data(data)
        self._check_fitted()
        self._check_elements(data.dataset)
        ds = data.dataset
        members = self.members_
        device = resolve_device(getattr(self, "device", "cpu"))
        numbers = torch.as_tensor(ds.numbers, device=device)
        batch = torch.as_tensor(ds.batch, device=device)
        E = np.zeros((len(members), ds.n_structures))
        if not forces and not stress:
            X = torch.as_tensor(data.scaled_features(), device=device)
            with torch.no_grad():
                for k, m in enumerate(members):
                    with on_device(m, None, device):
                        E[k] = m(X, numbers, batch, ds.n_structures).cpu().numpy()
            return combine_members(E, None)
        featurizer = data.featurizer if data.featurizer is not None else self.featurizer_
        if featurizer is None:
            raise ValueError("forces need a featurizer (none given and none stored)")
        scaler = data.scaler if data.featurizer is not None else self.scaler_
        cache = NeighborCache(featurizer, ds)
        F = np.zeros((len(members), ds.n_atoms, 3))
        W = np.zeros((len(members), ds.n_structures, 3, 3))
        with on_device(members[0], featurizer, device) as move:
            for m in members[1:]:
                m.to(device)
            try:
                for idx in np.array_split(
                    np.arange(ds.n_structures), max(1, -(-ds.n_structures // _PREDICT_CHUNK))
                ):
                    b = cache.batch(idx, strain=stress)
                    rows = b[ROWS_KEY].numpy()
                    b = move([b])[0]
                    X = scaled_features_torch(featurizer, scaler, b)
                    wrt = [b[POSITIONS_KEY], b[STRAIN_KEY]] if stress else [b[POSITIONS_KEY]]
                    for k, m in enumerate(members):
                        e = m(X, b[NUMBERS_KEY], b[BATCH_KEY], len(idx))
                        grads = torch.autograd.grad(e.sum(), wrt, retain_graph=True)
                        E[k, idx] = e.detach().cpu().numpy()
                        F[k, rows] = -grads[0].cpu().numpy()
                        if stress:
                            W[k, idx] = grads[1].cpu().numpy()
            finally:
                for m in members[1:]:
                    m.to("cpu")
        out = combine_members(E, F if forces else None)
        if stress:
            out["stress"] = stress_from_strain_grad(W.mean(0), ds.cell)
        return out

    # -- persistence -----------------------------------------------------------------------------
    def _state(self):
        state = {
            "reference": self.reference_,
            "n_features": self.n_features_,
            "best_epoch": self.history_.best_epoch if hasattr(self, "history_") else None,
            "members": len(self.members_),
            "columns": self.module_.columns.tolist(),
        }
        weights = {
            f"member{k}.{name}": t
            for k, m in enumerate(self.members_)
            for name, t in m.state_dict().items()
        }
        return state, {"weights": weights}

    def _restore(self, state, tensors) -> None:
        self.reference_ = dict(state["reference"])
        self.n_features_ = int(state["n_features"])
        weights = tensors["weights"]
        self.members_ = []
        for k in range(int(state.get("members", 1))):
            columns = state.get("columns", list(range(self.n_features_)))
            module = AtomicNetworks(self.elements_, columns, self._layers(), self.activation).to(
                DTYPES[self.dtype]
            )
            prefix = f"member{k}."
            module.load_state_dict(
                {n.removeprefix(prefix): t for n, t in weights.items() if n.startswith(prefix)}
            )
            module.eval()
            self.members_.append(module)
        self.module_ = self.members_[0]
