"""Training batches and the loss of a Behler–Parrinello potential.

:class:`TrainingSet` prepares a dataset once (residual energy targets in the networks' dtype,
features, and for force training either precomputed feature Jacobians or neighbour lists for
features on the fly) and serves minibatches whose atoms are grouped by element;
:func:`energy_force_loss` is the loss of docs/training.md over such a batch. Both serve
:class:`~atomistic.models.neuralnetwork.NeuralNetwork`; the batch keys are those of
:mod:`atomistic.models.keys`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from ase.data import atomic_numbers

from atomistic.features.jacobian import feature_jacobians, jacobian_nbytes
from atomistic.models.atomic_networks import AtomicNetworks
from atomistic.models.base import (
    AtomicData,
    NeighborCache,
    reference_energy,
    scaled_features_torch,
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
    TARGET_KEY,
)
from atomistic.models.training import minibatches

if TYPE_CHECKING:
    from atomistic.models.neuralnetwork import NeuralNetwork

__all__ = ["TrainingSet", "energy_force_loss", "varying_columns"]


class TrainingSet:
    """A dataset prepared for training: tensors in the networks' dtype, residual energy targets
    (E minus the reference energies, so float32 keeps its precision), and minibatches whose atoms
    are grouped by element. Force training uses precomputed feature Jacobians when they fit in
    the model's ``jacobian_memory``, on-the-fly features otherwise.

    Parameters
    ----------
    model : NeuralNetwork
        The model being fitted (its ``force_weight``, ``reference_``, ``elements_`` and
        ``jacobian_memory``).
    data : AtomicData
        The structures, with energies (and forces for force training).
    dtype : torch.dtype
        The networks' dtype.
    columns : list of int, optional
        The feature columns to keep; the columns that vary over ``data`` when None.
    """

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
            self.columns = varying_columns(X) if columns is None else columns
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
            self.columns = varying_columns(Xt.numpy()) if columns is None else columns
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
            self.columns = varying_columns(data.scaled_features()) if columns is None else columns
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


def energy_force_loss(
    force_weight: float,
    energy_weight: float,
    sqrt_atoms: bool,
    featurizer: Any,
    scaler: Any,
) -> Callable[..., dict[str, torch.Tensor]]:
    """The loss function of docs/training.md for :func:`~atomistic.models.training.train`.

    Parameters
    ----------
    force_weight, energy_weight : float
        Weights of the force and energy terms (``force_weight`` 0: energies only).
    sqrt_atoms : bool
        Divide each structure's energy error by sqrt(N) instead of N before squaring.
    featurizer, scaler
        Used for batches with features on the fly (those with neighbour lists).

    Returns
    -------
    callable
        ``loss_fn(module, batch)`` -> dict with ``loss``, ``energy_mse`` (per atom), ``weight``
        (structures in the batch) and, with forces, ``force_mse``.
    """
    fw, ew = float(force_weight), float(energy_weight)
    sqrt_n = sqrt_atoms

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


def varying_columns(X: np.ndarray) -> list[int]:
    """Indices of the columns of X (n_atoms, n_features) that are not constant."""
    X = np.asarray(X)
    if len(X) < 2:
        return list(range(X.shape[1]))
    return np.flatnonzero(np.ptp(X, axis=0) > 0).tolist()
