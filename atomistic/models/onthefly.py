"""Features computed on the fly, for forces and stress: neighbour lists of a dataset built once
and sliced per batch of structures (:class:`NeighborCache`), scaled features as a differentiable
function of the positions (:func:`scaled_features_torch`), and the stress from the derivative
of the energy with respect to a homogeneous strain (:func:`stress_from_strain_grad`).
Shared by the network, kernel ridge and sparse kernel models.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from atomistic.data import Dataset
from atomistic.features.scaling import Scaler
from atomistic.models.keys import (
    BATCH_KEY,
    CELLS_KEY,
    N_ATOMS_KEY,
    NEIGHBORS_KEY,
    NUMBERS_KEY,
    POSITIONS_KEY,
    ROWS_KEY,
    STRAIN_KEY,
)
from atomistic.neighbors import NeighborList

__all__ = ["NeighborCache", "scaled_features_torch", "stress_from_strain_grad"]


def _slice_nl(nl: NeighborList, pair_offsets: np.ndarray, atom_offsets: np.ndarray, idx):
    counts = pair_offsets[idx + 1] - pair_offsets[idx]
    starts = pair_offsets[idx]
    rows = np.repeat(starts - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    n_atoms = atom_offsets[idx + 1] - atom_offsets[idx]
    new_start = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    delta = np.repeat(new_start - atom_offsets[idx], counts)
    i = np.asarray(nl.i)[rows] + delta
    j = np.asarray(nl.j)[rows] + delta
    return NeighborList(i, j, np.asarray(nl.shifts)[rows], nl.cutoff).to_torch()


class NeighborCache:
    """Neighbour lists of a dataset, built once with ``featurizer.neighbors`` and sliced per batch
    of structures. Lists of the atompipe :class:`~atomistic.neighbors.NeighborList` type (alone, or
    in a tuple/list/dict) are sliced; any other type is rebuilt per distinct batch and cached."""

    def __init__(self, featurizer: Any, dataset: Dataset) -> None:
        self.featurizer, self.dataset = featurizer, dataset
        d = dataset
        self._nl = featurizer.neighbors(d.numbers, d.positions, d.cell, d.pbc, d.offsets)
        self._pair_offsets = self._map(
            lambda nl: np.searchsorted(np.asarray(nl.i), d.offsets), self._nl
        )
        self._other: dict[tuple[int, ...], Any] = {}

    @staticmethod
    def _map(fn, nl):
        if isinstance(nl, NeighborList):
            return fn(nl)
        if isinstance(nl, (tuple, list)) and all(isinstance(x, NeighborList) for x in nl):
            return type(nl)(fn(x) for x in nl)
        if isinstance(nl, dict) and all(isinstance(x, NeighborList) for x in nl.values()):
            return {k: fn(x) for k, x in nl.items()}
        return None

    def batch(self, idx: np.ndarray, strain: bool = False) -> dict[str, Any]:
        """Tensors of structures ``idx`` for ``featurizer.forward``; positions require grad.

        With ``strain``, a zero strain leaf ``strain`` (S, 3, 3) requiring grad is added and
        the positions and cells are strained by it, R' = R (I + eps_s), h' = h (I + eps_s)
        (rows are vectors): then dE/d eps at eps = 0 is the virial derivative of the stress
        (:func:`stress_from_strain_grad`), and dE/dR' the negative forces."""
        idx = np.asarray(idx, dtype=np.int64)
        d = self.dataset
        counts = d.offsets[idx + 1] - d.offsets[idx]
        rows = np.repeat(d.offsets[idx] - np.cumsum(counts) + counts, counts) + np.arange(
            counts.sum()
        )
        if self._pair_offsets is None:
            key = tuple(idx.tolist())
            if key not in self._other:
                sub = d.subset(idx)
                self._other[key] = self.featurizer.neighbors(
                    sub.numbers, sub.positions, sub.cell, sub.pbc, sub.offsets
                )
            nl = self._other[key]
        else:
            po = self._pair_offsets
            if isinstance(self._nl, NeighborList):
                nl = _slice_nl(self._nl, po, d.offsets, idx)
            elif isinstance(self._nl, dict):
                nl = {k: _slice_nl(v, po[k], d.offsets, idx) for k, v in self._nl.items()}
            else:
                nl = type(self._nl)(
                    _slice_nl(v, p, d.offsets, idx) for v, p in zip(self._nl, po, strict=True)
                )
        out = {
            ROWS_KEY: torch.as_tensor(rows),
            NUMBERS_KEY: torch.as_tensor(d.numbers[rows]),
            POSITIONS_KEY: torch.tensor(d.positions[rows], dtype=torch.float64, requires_grad=True),
            CELLS_KEY: torch.as_tensor(d.cell[idx], dtype=torch.float64),
            BATCH_KEY: torch.repeat_interleave(torch.arange(len(idx)), torch.as_tensor(counts)),
            N_ATOMS_KEY: torch.as_tensor(counts, dtype=torch.float64),
            NEIGHBORS_KEY: nl,
        }
        if strain:
            eps = torch.zeros((len(idx), 3, 3), dtype=torch.float64, requires_grad=True)
            deform = torch.eye(3, dtype=torch.float64) + eps  # shape (S, 3, 3)
            pos = out[POSITIONS_KEY]
            out[POSITIONS_KEY] = torch.bmm(pos.unsqueeze(1), deform[out[BATCH_KEY]]).squeeze(1)
            out[CELLS_KEY] = torch.bmm(out[CELLS_KEY], deform)
            out[STRAIN_KEY] = eps
        return out


def stress_from_strain_grad(dE_deps: torch.Tensor | np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Stress (S, 6) eV/Å^3 in ASE's convention and Voigt order (xx, yy, zz, yz, xz, xy) from
    dE/d eps (S, 3, 3) at zero strain: sigma = (1/V) sym(dE/d eps), V = |det h|; the virial
    is -V sigma. Structures without a 3-D cell (zero volume) get NaN."""
    g = np.asarray(torch.as_tensor(dE_deps).detach().numpy(), dtype=np.float64).reshape(-1, 3, 3)
    vol = np.abs(np.linalg.det(np.asarray(cells, dtype=np.float64).reshape(-1, 3, 3)))
    sym = 0.5 * (g + g.transpose(0, 2, 1))
    with np.errstate(divide="ignore", invalid="ignore"):
        sigma = np.where((vol > 1e-12)[:, None, None], sym / vol[:, None, None], np.nan)
    return sigma[:, [0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]


def scaled_features_torch(featurizer: Any, scaler: Scaler | None, b: dict[str, Any]):
    """Differentiable scaled features (n_atoms, n_features) of a :meth:`NeighborCache.batch`."""
    X = featurizer(b[NUMBERS_KEY], b[POSITIONS_KEY], b[CELLS_KEY], b[BATCH_KEY], b[NEIGHBORS_KEY])
    return X if scaler is None else scaler.transform_torch(X, b[NUMBERS_KEY])
