"""Behler–Parrinello neural-network potentials (Behler & Parrinello, PRL 98, 146401 (2007)).

E_s = sum_{i in s} E_i,  E_i = shift_Z + scale_Z * NN_Z(x_i)   (eq. 3 of the paper, with ML4Chem's
per-element output scale and shift), where x_i are the scaled atomic features of atom i and NN_Z a
fully connected network of element Z. shift_Z is the least-squares per-element reference energy
of the training set (:func:`~atomistic.models.base.fit_reference_energies`) and scale_Z the
standard deviation of the residual energy per atom, (E_s - sum_Z n_sZ shift_Z) / n_s, so the
networks start by learning an O(1) target. Forces F_i = -dE/dR_i by autograd through the networks,
the scaler and the featurizer.

Training minimises  mean_s ((E_pred_s - E_s) / n_s)^2 + force_weight * mean_(i,c) (F_pred - F)^2
(energies in eV, forces in eV/Å) with :func:`atomistic.models.training.train`. Energy-only training
uses precomputed scaled features (fast path); force training computes features on the fly, with
neighbour lists built once per structure and reused every epoch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers
from torch import nn

from atomistic.models.base import (
    AtomicData,
    AtomisticModel,
    NeighborCache,
    fit_reference_energies,
    scaled_features_torch,
)
from atomistic.models.training import History, TrainingConfig, minibatches
from atomistic.models.training import train as run_training

__all__ = ["NeuralNetwork", "AtomicNetworks"]

_ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "celu": nn.CELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
}
_PREDICT_CHUNK = 64  # structures per forward pass when predicting


class AtomicNetworks(nn.Module):
    """One fully connected network per element (``nn.ModuleDict`` keyed by symbol) with
    per-element output scale and shift buffers.

    forward(X (n_atoms, n_features), numbers (n_atoms,), batch (n_atoms,), n_structures)
    -> energies (n_structures,), eV.
    """

    def __init__(
        self,
        elements: tuple[str, ...],
        n_features: int,
        hiddenlayers: tuple[int, ...],
        activation: str,
    ) -> None:
        super().__init__()
        self.elements = tuple(elements)
        nets = {}
        for sym in self.elements:
            layers: list[nn.Module] = []
            width = n_features
            for h in hiddenlayers:
                layers += [nn.Linear(width, h), _ACTIVATIONS[activation]()]
                width = h
            layers.append(nn.Linear(width, 1))
            nets[sym] = nn.Sequential(*layers)
        self.nets = nn.ModuleDict(nets)
        self.register_buffer("shift", torch.zeros(len(self.elements), dtype=torch.float64))
        self.register_buffer("scale", torch.ones(len(self.elements), dtype=torch.float64))
        self.register_buffer(
            "z", torch.tensor([atomic_numbers[s] for s in self.elements], dtype=torch.long)
        )

    def atomic_energies(self, X: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """(n_atoms,) E_i, eV."""
        out = X.new_zeros(X.shape[0])
        for k, sym in enumerate(self.elements):
            idx = torch.nonzero(numbers == self.z[k]).squeeze(1)  # shape (n_Z,)
            if idx.numel():
                e = self.nets[sym](X[idx]).squeeze(1) * self.scale[k] + self.shift[k]
                out = out.index_put((idx,), e)
        return out

    def forward(self, X, numbers, batch, n_structures: int) -> torch.Tensor:
        e = self.atomic_energies(X, numbers)
        return e.new_zeros(n_structures).index_add_(0, batch, e)


class NeuralNetwork(AtomisticModel):
    """Behler–Parrinello network potential.

    Parameters: ``hiddenlayers`` sizes of the hidden layers of every element's network;
    ``activation`` one of relu, tanh, celu, silu, softplus (relu gives discontinuous forces:
    prefer a smooth one for MD); ``force_weight`` weight of the force term of the loss (0 trains on
    energies only); ``training`` a :class:`TrainingConfig` (or its dict); ``training.seed`` also
    seeds the weight initialisation.

    Learned state: ``module_`` (:class:`AtomicNetworks`), ``reference_`` (eV per element),
    ``history_``, ``n_features_``.
    """

    def __init__(
        self,
        hiddenlayers: tuple[int, ...] = (10, 10),
        activation: str = "relu",
        force_weight: float = 0.0,
        training: TrainingConfig | dict[str, Any] | None = None,
    ) -> None:
        self.hiddenlayers = tuple(hiddenlayers)
        self.activation = activation
        self.force_weight = force_weight
        self.training = training

    @classmethod
    def _params_from_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        return {**params, "hiddenlayers": tuple(params["hiddenlayers"])}

    def _config(self) -> TrainingConfig:
        t = self.training
        if t is None:
            return TrainingConfig()
        return t if isinstance(t, TrainingConfig) else TrainingConfig(**t)

    def _json_params(self) -> dict[str, Any]:
        return {**super()._json_params(), "training": self._config().to_dict()}

    # -- fitting ---------------------------------------------------------------------------------
    def fit(self, train: AtomicData, validation: AtomicData | None = None, callback=None):
        """Train on ``train`` (energies, and forces when ``force_weight > 0``); early stopping and
        the plateau scheduler watch ``validation`` when given. Returns self."""
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {list(_ACTIVATIONS)}")
        use_forces = self.force_weight > 0
        if use_forces and (train.featurizer is None or train.dataset.forces is None):
            raise ValueError("force training needs a featurizer and a dataset with forces")
        config = self._config()
        self._remember_inputs(train)
        ds = train.dataset
        torch.manual_seed(config.seed)
        if use_forces:
            n_features = int(train.featurizer.n_features)
        else:
            X_train = train.scaled_features()
            n_features = X_train.shape[1]
        module = AtomicNetworks(self.elements_, n_features, self.hiddenlayers, self.activation)
        module.double()
        self.reference_ = fit_reference_energies(ds, self.elements_)
        self._init_output(module, ds)

        def make_source(data: AtomicData, shuffle: bool):
            S = data.dataset.n_structures
            if use_forces:
                cache = NeighborCache(data.featurizer, data.dataset)
                fetch = _force_batches(cache, data)
            else:
                fetch = _feature_batches(data, X_train if data is train else None)
            return lambda g: [
                fetch(i.numpy()) for i in minibatches(S, config.batch_size, g, shuffle=shuffle)
            ]

        train_source = make_source(train, True)
        val_source = None if validation is None else make_source(validation, False)
        self.history_: History = run_training(
            module, self._loss_fn(use_forces), train_source, val_source, config, callback
        )
        self.module_ = module
        self.n_features_ = n_features
        h = self.history_
        self.metrics_ = {k: v[h.best_epoch] for k, v in h.metrics.items() if k != "lr"}
        return self

    def _init_output(self, module: AtomicNetworks, ds) -> None:
        n = np.diff(ds.offsets)
        refs = np.array([self.reference_[s] for s in self.elements_])
        per_atom_ref = np.zeros(ds.n_structures)
        for k, sym in enumerate(self.elements_):
            per_atom_ref += (
                np.bincount(ds.batch[ds.numbers == atomic_numbers[sym]], minlength=ds.n_structures)
                * refs[k]
            )
        resid = (ds.energy - per_atom_ref) / n
        scale = float(resid.std()) if ds.n_structures > 1 else 1.0
        module.shift.copy_(torch.as_tensor(refs))
        module.scale.fill_(max(scale, 1e-3))

    def _loss_fn(self, use_forces: bool):
        fw = float(self.force_weight)
        featurizer, scaler = self.featurizer_, self.scaler_

        def loss_fn(module: AtomicNetworks, b: dict[str, Any]) -> dict[str, torch.Tensor]:
            S = len(b["energy"])
            X = scaled_features_torch(featurizer, scaler, b) if use_forces else b["X"]
            E = module(X, b["numbers"], b["batch"], S)
            e_mse = (((E - b["energy"]) / b["n_atoms"]) ** 2).mean()
            out = {"energy_mse": e_mse, "weight": torch.tensor(float(S))}
            loss = e_mse
            if use_forces:
                (g,) = torch.autograd.grad(E.sum(), b["positions"], create_graph=module.training)
                f_mse = ((-g - b["forces"]) ** 2).mean()
                out["force_mse"] = f_mse
                loss = loss + fw * f_mse
            out["loss"] = loss
            return out

        return loss_fn

    # -- prediction ------------------------------------------------------------------------------
    def predict(self, data: AtomicData, forces: bool = False) -> dict[str, np.ndarray]:
        """energy (S,) eV and, with ``forces``, forces (n_atoms, 3) eV/Å."""
        self._check_fitted()
        self._check_elements(data.dataset)
        ds = data.dataset
        module = self.module_
        E = np.zeros(ds.n_structures)
        if not forces:
            X = torch.as_tensor(data.scaled_features())
            with torch.no_grad():
                E[:] = module(
                    X, torch.as_tensor(ds.numbers), torch.as_tensor(ds.batch), ds.n_structures
                ).numpy()
            return {"energy": E}
        featurizer = data.featurizer if data.featurizer is not None else self.featurizer_
        if featurizer is None:
            raise ValueError("forces need a featurizer (none given and none stored)")
        scaler = data.scaler if data.featurizer is not None else self.scaler_
        cache = NeighborCache(featurizer, ds)
        F = np.zeros((ds.n_atoms, 3))
        for idx in np.array_split(
            np.arange(ds.n_structures), max(1, -(-ds.n_structures // _PREDICT_CHUNK))
        ):
            b = cache.batch(idx)
            X = scaled_features_torch(featurizer, scaler, b)
            e = module(X, b["numbers"], b["batch"], len(idx))
            (g,) = torch.autograd.grad(e.sum(), b["positions"])
            E[idx] = e.detach().numpy()
            F[b["rows"].numpy()] = -g.numpy()
        return {"energy": E, "forces": F}

    # -- persistence -----------------------------------------------------------------------------
    def _state(self):
        state = {
            "reference": self.reference_,
            "n_features": self.n_features_,
            "best_epoch": self.history_.best_epoch if hasattr(self, "history_") else None,
        }
        return state, {"weights": dict(self.module_.state_dict())}

    def _restore(self, state, tensors) -> None:
        self.reference_ = dict(state["reference"])
        self.n_features_ = int(state["n_features"])
        module = AtomicNetworks(
            self.elements_, self.n_features_, self.hiddenlayers, self.activation
        ).double()
        module.load_state_dict(tensors["weights"])
        module.eval()
        self.module_ = module


def _feature_batches(data: AtomicData, X: np.ndarray | None):
    ds = data.dataset
    Xt = torch.as_tensor(data.scaled_features() if X is None else X)
    numbers, energy = torch.as_tensor(ds.numbers), torch.as_tensor(ds.energy)
    offsets = ds.offsets

    def fetch(idx: np.ndarray) -> dict[str, Any]:
        counts = offsets[idx + 1] - offsets[idx]
        rows = torch.as_tensor(
            np.repeat(offsets[idx] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        )
        return {
            "X": Xt[rows],
            "numbers": numbers[rows],
            "batch": torch.repeat_interleave(torch.arange(len(idx)), torch.as_tensor(counts)),
            "n_atoms": torch.as_tensor(counts, dtype=torch.float64),
            "energy": energy[torch.as_tensor(idx)],
        }

    return fetch


def _force_batches(cache: NeighborCache, data: AtomicData):
    ds = data.dataset
    energy, forces = torch.as_tensor(ds.energy), torch.as_tensor(ds.forces)
    memo: dict[tuple[int, ...], dict[str, Any]] = {}

    def fetch(idx: np.ndarray) -> dict[str, Any]:
        key = tuple(idx.tolist())
        if key not in memo:  # a fixed (unshuffled) batch is sliced once
            b = cache.batch(idx)
            b["energy"] = energy[torch.as_tensor(idx)]
            b["forces"] = forces[b["rows"]]
            memo[key] = b
            if len(memo) > 64:
                memo.pop(next(iter(memo)))
        return memo[key]

    return fetch
