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
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers
from torch import nn

from atomistic.device import resolve_device
from atomistic.features.jacobian import feature_jacobians, jacobian_nbytes
from atomistic.models.base import (
    AtomicData,
    AtomisticModel,
    NeighborCache,
    fit_reference_energies,
    reference_energy,
    scaled_features_torch,
    stress_from_strain_grad,
)
from atomistic.models.keys import (
    BATCH_KEY,
    FEATURES_KEY,
    FORCE_MASK_KEY,
    FORCES_KEY,
    JACOBIAN_KEY,
    N_ATOMS_KEY,
    NEIGHBORS_KEY,
    NUMBERS_KEY,
    POSITIONS_KEY,
    ROWS_KEY,
    SIZES_KEY,
    STRAIN_KEY,
    TARGET_KEY,
)
from atomistic.models.layers import ACTIVATIONS, mlp
from atomistic.models.training import History, TrainingConfig, minibatches
from atomistic.models.training import train as run_training

__all__ = ["NeuralNetwork", "AtomicNetworks", "TrainingWarning", "DTYPES"]

DTYPES = {"float32": torch.float32, "float64": torch.float64}
ENERGY_NORMALIZATIONS = ("atoms", "sqrt_atoms")
_PREDICT_CHUNK = 64  # structures per forward pass when predicting forces
_JACOBIAN_MEMORY = 2 * 1024**3  # default byte budget of precomputed feature Jacobians


class TrainingWarning(UserWarning):
    """A model trained without learning anything useful (best epoch 0, or no better than the
    per-element reference energies on the validation set)."""


class AtomicNetworks(nn.Module):
    """One fully connected network per element (``nn.ModuleDict`` keyed by symbol) with
    per-element output scale and shift buffers (float64).

    ``columns`` (buffer) are the feature columns the networks read: the columns that vary over
    the training atoms (a column constant in training, e.g. one of an element absent from the
    data, only shifts the first layer's bias, so it is left out of the input).

    ``residual(X, numbers)`` -> scale_Z NN_Z(x_i), shape (n_atoms,), in the networks' dtype;
    ``forward(X, numbers, batch, n_structures)`` -> energies (n_structures,) float64, eV.
    """

    columns: torch.Tensor
    shift: torch.Tensor
    scale: torch.Tensor
    z: torch.Tensor

    def __init__(
        self,
        elements: tuple[str, ...],
        columns: list[int],
        hiddenlayers: dict[str, tuple[int, ...]],
        activation: str,
    ) -> None:
        super().__init__()
        self.elements = tuple(elements)
        n_in = len(columns)
        self.nets = nn.ModuleDict(
            {s: mlp([n_in, *hiddenlayers[s], 1], activation) for s in self.elements}
        )
        self.register_buffer("columns", torch.as_tensor(columns, dtype=torch.long))
        self.register_buffer("shift", torch.zeros(len(self.elements), dtype=torch.float64))
        self.register_buffer("scale", torch.ones(len(self.elements), dtype=torch.float64))
        self.register_buffer(
            "z", torch.tensor([atomic_numbers[s] for s in self.elements], dtype=torch.long)
        )

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def residual_sorted(self, X: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        """scale_Z NN_Z(x) for rows already grouped by element (``sizes[k]`` rows of element k, in
        ``self.elements`` order); shape (n_atoms,)."""
        outs = []
        for k, (sym, part) in enumerate(zip(self.elements, X.split(sizes), strict=True)):
            if sizes[k]:
                outs.append(self.nets[sym](part).squeeze(1) * self.scale[k].to(X.dtype))
        return torch.cat(outs) if outs else X.new_zeros(0)

    def residual(self, X: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """scale_Z NN_Z(x_i) for rows of all the featurizer's columns in any order, (n_atoms,)."""
        X = X.index_select(1, self.columns)
        kind = torch.searchsorted(self.z, numbers)  # z is sorted by atomic number
        order = torch.argsort(kind, stable=True)
        sizes = torch.bincount(kind, minlength=len(self.elements)).tolist()
        out = torch.empty_like(order, dtype=X.dtype)
        out[order] = self.residual_sorted(X.index_select(0, order), sizes)
        return out

    def atomic_energies(self, X: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """(n_atoms,) E_i, eV, float64."""
        kind = torch.searchsorted(self.z, numbers)
        return self.residual(X.to(self.dtype), numbers).double() + self.shift[kind]

    def forward(self, X, numbers, batch, n_structures: int) -> torch.Tensor:
        e = self.atomic_energies(X, numbers)
        return e.new_zeros(n_structures).index_add_(0, batch, e)


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
        train_set = _TrainingSet(self, train, dtype)
        val_set = (
            None
            if validation is None
            else _TrainingSet(self, validation, dtype, columns=train_set.columns)
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
            with _on_device(module, self.featurizer_, device) as move:
                history = run_training(
                    module,
                    self._loss_fn(),
                    move(train_set.source(cfg.batch_size, pool, shuffle=True)),
                    None if val_set is None else move(val_set.source(cfg.batch_size, None, False)),
                    cfg,
                    callback,
                )
            if self.refit_shift:
                self._refit_shift(module, train, train_set)
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
        """Shift: the reference energies. Scale: the standard deviation of the residual energy
        per atom (energy training), or the RMS force component times 1 Å (force training: the
        networks' input gradients then start at the size of the forces they must learn; measured
        16 % lower force errors at equal epochs on ethanol than the energy scale, docs/training.md).
        """
        refs = np.array([self.reference_[s] for s in self.elements_])
        if self.force_weight > 0 and ds.forces is not None and ds.n_atoms:
            scale = float(np.sqrt(np.mean(np.asarray(ds.forces) ** 2)))
        else:
            resid = (ds.energy - reference_energy(ds, self.reference_)) / np.diff(ds.offsets)
            scale = float(resid.std()) if ds.n_structures > 1 else 1.0
        module.shift.copy_(torch.as_tensor(refs))
        module.scale.fill_(max(scale, 1e-3))

    def _refit_shift(self, module: AtomicNetworks, data: AtomicData, ts: _TrainingSet) -> None:
        """Least-squares correction of the per-element shifts to the trained networks' residuals
        on the training set (what TorchANI's EnergyShifter and MACE's E0s do before training, done
        after it: a force-dominated loss fixes energies only up to a constant per composition)."""
        ds = data.dataset
        X = torch.as_tensor(data.scaled_features(), dtype=module.dtype)
        with torch.no_grad():
            e = module.residual(X, torch.as_tensor(ds.numbers)).double()
        pred = e.new_zeros(ds.n_structures).index_add_(0, torch.as_tensor(ds.batch), e)
        resid = ds.energy - reference_energy(ds, self.reference_) - pred.numpy()
        counts = np.stack(
            [
                np.bincount(ds.batch[ds.numbers == atomic_numbers[s]], minlength=ds.n_structures)
                for s in self.elements_
            ],
            axis=1,
        ).astype(float)
        delta, *_ = np.linalg.lstsq(counts, resid, rcond=None)
        module.shift += torch.as_tensor(delta)

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

    def _loss_fn(self):
        fw, ew = float(self.force_weight), float(self.energy_weight)
        sqrt_n = self.energy_normalization == "sqrt_atoms"
        featurizer, scaler = self.featurizer_, self.scaler_

        def loss_fn(module: AtomicNetworks, b: dict[str, Any]) -> dict[str, torch.Tensor]:
            S = len(b[TARGET_KEY])
            n = b[N_ATOMS_KEY]
            if NEIGHBORS_KEY in b:  # on-the-fly features
                X = scaled_features_torch(featurizer, scaler, b).to(module.dtype)
                e_atom = module.residual(X, b[NUMBERS_KEY])
                wrt = b[POSITIONS_KEY]
            else:
                X = b[FEATURES_KEY].requires_grad_(fw > 0)
                e_atom = module.residual_sorted(X, b[SIZES_KEY])
                wrt = X
            E = e_atom.new_zeros(S).index_add_(0, b[BATCH_KEY], e_atom)
            err = (E - b[TARGET_KEY]) / (n.sqrt() if sqrt_n else n)
            e_mse = (err**2).mean()
            per_atom = ((E - b[TARGET_KEY]) / n) ** 2
            out = {
                "energy_mse": per_atom.mean().detach(),
                "weight": torch.tensor(float(S)),
            }
            loss = ew * e_mse
            if fw > 0:
                (g,) = torch.autograd.grad(e_atom.sum(), wrt, create_graph=module.training)
                if JACOBIAN_KEY in b:  # dE/dR_(s, a) = sum_(i in s) dE/dx_i . dx_i/dR_(s, a)
                    J = b[JACOBIAN_KEY]  # shape (atoms, F, n_max * 3)
                    dEdR = torch.bmm(g.unsqueeze(1), J).squeeze(1)  # shape (atoms, n_max * 3)
                    dEdR = dEdR.new_zeros((S, J.shape[2])).index_add_(0, b[BATCH_KEY], dEdR)
                    diff = (-dEdR - b[FORCES_KEY]) * b[FORCE_MASK_KEY]
                    f_mse = (diff**2).sum() / b[FORCE_MASK_KEY].sum()
                else:
                    f_mse = ((-g - b[FORCES_KEY]) ** 2).mean()
                out["force_mse"] = f_mse.detach()
                loss = loss + fw * f_mse
            out["loss"] = loss
            return out

        return loss_fn

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
                    with _on_device(m, None, device):
                        E[k] = m(X, numbers, batch, ds.n_structures).cpu().numpy()
            return self._combine(E, None)
        featurizer = data.featurizer if data.featurizer is not None else self.featurizer_
        if featurizer is None:
            raise ValueError("forces need a featurizer (none given and none stored)")
        scaler = data.scaler if data.featurizer is not None else self.scaler_
        cache = NeighborCache(featurizer, ds)
        F = np.zeros((len(members), ds.n_atoms, 3))
        W = np.zeros((len(members), ds.n_structures, 3, 3))
        with _on_device(members[0], featurizer, device) as move:
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
        out = self._combine(E, F if forces else None)
        if stress:
            out["stress"] = stress_from_strain_grad(W.mean(0), ds.cell)
        return out

    @staticmethod
    def _combine(E: np.ndarray, F: np.ndarray | None) -> dict[str, np.ndarray]:
        out = {"energy": E.mean(0)}
        if F is not None:
            out["forces"] = F.mean(0)
        if len(E) > 1:
            out["energy_std"] = E.std(0, ddof=1)
            if F is not None:
                out["forces_std"] = F.std(0, ddof=1)
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


class _TrainingSet:
    """A dataset prepared for training: tensors in the networks' dtype, residual energy targets
    (E minus the reference energies, so float32 keeps its precision), and minibatches whose atoms
    are grouped by element. Force training uses precomputed feature Jacobians when they fit in
    the model's ``jacobian_memory``, on-the-fly features otherwise."""

    def __init__(
        self,
        model: NeuralNetwork,
        data: AtomicData,
        dtype: torch.dtype,
        columns: list[int] | None = None,
    ) -> None:
        ds = data.dataset
        if ds.energy is None:
            raise ValueError("training needs a dataset with energies")
        self.ds, self.dtype = ds, dtype
        self.forces = model.force_weight > 0
        residual = ds.energy - reference_energy(ds, model.reference_)
        self.target = torch.as_tensor(residual, dtype=dtype)
        self.sizes = np.diff(ds.offsets)
        self.n_atoms = torch.as_tensor(self.sizes, dtype=dtype)
        self.kind = np.searchsorted([atomic_numbers[s] for s in model.elements_], ds.numbers)
        self.n_kinds = len(model.elements_)
        self.cache: NeighborCache | None = None
        self.X: torch.Tensor | None = None
        self.J: torch.Tensor | None = None
        if not self.forces:
            X = data.scaled_features()
            self.n_features = X.shape[1]
            self.columns = _varying(X) if columns is None else columns
            self.X = torch.as_tensor(X[:, self.columns], dtype=dtype)
            return
        f = data.featurizer
        self.n_features = int(f.n_features)
        n_cols = self.n_features if columns is None else len(columns)
        if jacobian_nbytes(n_cols, ds.offsets, dtype) <= model.jacobian_memory:
            Xt, J = feature_jacobians(
                f, ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets, dtype=torch.float64
            )
            if data.scaler is not None:
                scale, _ = data.scaler._rows(ds.numbers, ds.n_atoms)
                Xt = torch.as_tensor(data.scaler.transform(Xt.numpy(), ds.numbers))
                J *= torch.as_tensor(np.array(np.broadcast_to(scale, Xt.shape))).reshape(
                    *Xt.shape, 1, 1
                )
            self.columns = _varying(Xt.numpy()) if columns is None else columns
            keep = torch.as_tensor(self.columns)
            self.X = Xt.index_select(1, keep).to(dtype)
            self.J = J.index_select(1, keep).reshape(ds.n_atoms, len(keep), -1).to(dtype)
            del J
            n_max = int(self.sizes.max())
            local = np.arange(ds.n_atoms) - np.repeat(ds.offsets[:-1], self.sizes)
            forces = torch.zeros((ds.n_structures, n_max, 3), dtype=dtype)
            forces[torch.as_tensor(ds.batch), torch.as_tensor(local)] = torch.as_tensor(
                ds.forces, dtype=dtype
            )
            mask = torch.zeros((ds.n_structures, n_max, 1), dtype=dtype)
            mask[torch.as_tensor(ds.batch), torch.as_tensor(local)] = 1.0
            self.padded_forces = forces.reshape(ds.n_structures, -1)
            self.mask = mask.expand(-1, -1, 3).reshape(ds.n_structures, -1)
        else:
            self.columns = _varying(data.scaled_features()) if columns is None else columns
            self.cache = NeighborCache(f, ds)
            self.all_forces = torch.as_tensor(ds.forces, dtype=torch.float64)

    def batch(self, idx: np.ndarray) -> dict[str, Any]:
        """The tensors of structures ``idx`` (a 1-D integer array)."""
        ds = self.ds
        t_idx = torch.as_tensor(idx)
        common = {TARGET_KEY: self.target[t_idx], N_ATOMS_KEY: self.n_atoms[t_idx]}
        if self.cache is not None:
            b = self.cache.batch(idx)
            b[FORCES_KEY] = self.all_forces[b[ROWS_KEY]].to(self.dtype)
            return {**b, **common}
        assert self.X is not None  # precomputed features whenever there is no neighbour cache
        counts = self.sizes[idx]
        rows = np.repeat(ds.offsets[idx] - np.cumsum(counts) + counts, counts) + np.arange(
            counts.sum()
        )
        local_batch = np.repeat(np.arange(len(idx)), counts)
        order = np.argsort(self.kind[rows], kind="stable")
        rows, local_batch = rows[order], local_batch[order]
        t_rows = torch.as_tensor(rows)
        b = {
            **common,
            FEATURES_KEY: self.X.index_select(0, t_rows),
            SIZES_KEY: np.bincount(self.kind[rows], minlength=self.n_kinds).tolist(),
            BATCH_KEY: torch.as_tensor(local_batch),
        }
        if self.J is not None:
            b[JACOBIAN_KEY] = self.J.index_select(0, t_rows)
            b[FORCES_KEY] = self.padded_forces[t_idx]
            b[FORCE_MASK_KEY] = self.mask[t_idx]
        return b

    def source(self, batch_size: int, pool: np.ndarray | None, shuffle: bool):
        """A batch source for :func:`~atomistic.models.training.train`: structures ``pool`` (all
        when None) in minibatches, reshuffled every epoch; a fixed order is built once."""
        pool = np.arange(self.ds.n_structures) if pool is None else np.asarray(pool)
        if not shuffle:
            return [
                self.batch(pool[i.numpy()]) for i in minibatches(len(pool), batch_size, None, False)
            ]

        def make(generator: torch.Generator):
            for i in minibatches(len(pool), batch_size, generator, shuffle=True):
                yield self.batch(pool[i.numpy()])

        return make


@contextmanager
def _on_device(module: torch.nn.Module, featurizer: Any, device: str):
    """Train ``module`` (and ``featurizer``, for on-the-fly features) on ``device``; yields a
    function that moves a batch source's tensors there. Both are back on the CPU afterwards."""
    if device == "cpu":
        yield lambda source: source
        return

    def batch(b: dict[str, Any]) -> dict[str, Any]:
        return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in b.items()}

    def move(source: Any) -> Any:
        if callable(source):
            return lambda generator: (batch(b) for b in source(generator))
        return [batch(b) for b in source]

    movable = featurizer if isinstance(featurizer, torch.nn.Module) else None
    module.to(device)
    if movable is not None:
        movable.to(device)
    try:
        yield move
    finally:
        module.to("cpu")
        if movable is not None:
            movable.to("cpu")


def _varying(X: np.ndarray) -> list[int]:
    """Indices of the columns of X (n_atoms, n_features) that are not constant."""
    X = np.asarray(X)
    if len(X) < 2:
        return list(range(X.shape[1]))
    return np.flatnonzero(np.ptp(X, axis=0) > 0).tolist()
