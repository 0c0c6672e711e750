"""Features together with their derivatives with respect to the positions of each structure's atoms.

For force training a model needs F_j = -sum_i (dE/dx_i) . (dx_i/dR_j). Recomputing the features and
their second derivatives through the featurizer at every optimisation step is what dominates the
cost of a plain training loop (TorchANI's, for one). The Jacobian dx_i/dR_j does not change during
training, so it can be computed once and stored; a training step then needs only the network,
its input gradient dE/dx and one batched contraction with the stored Jacobian (the approach of
n2p2 and RuNNer, which store dG/dR beside the symmetry functions).

Layout (ragged structures, padded to the largest one):

* ``X`` (N, F): the features of the N atoms of the batch (rows in dataset order).
* ``J`` (N, F, n_max, 3): ``J[i, f, a, c] = d x_if / d R_(s_i, a), c``, the derivative of feature
  f of atom i with respect to coordinate c of the a-th atom of i's own structure (zero for
  a >= n_(s_i)). Units: feature units per Å.

The derivatives are computed by forward-mode automatic differentiation, one tangent per
(local atom, coordinate): tangent k = 3 a + c moves coordinate c of the a-th atom of *every*
structure at once, which is exact because structures do not interact. That is 3 n_max forward
passes over the whole dataset, independent of the number of features. Memory: N F n_max 3 numbers;
:func:`jacobian_nbytes` gives it before anything is computed.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

__all__ = ["dual_level", "feature_jacobians", "jacobian_nbytes"]

# structures per forward pass: bounds the working memory of the featurizer's pair/triplet terms
_ATOMS_PER_CALL = 4096
_FORWARD_AD = threading.RLock()


@contextlib.contextmanager
def dual_level() -> Iterator[None]:
    """``torch.autograd.forward_ad.dual_level()``, one thread at a time. Forward-mode levels
    are global to the process: two threads opening them at once (a campaign fits its models
    concurrently) fail with "Nested forward mode AD is not supported". Every forward-mode pass
    in atompipe opens its level here."""
    with _FORWARD_AD, fwAD.dual_level():
        yield


def jacobian_nbytes(n_features: int, offsets: np.ndarray, dtype: torch.dtype) -> int:
    """Bytes of the Jacobian of a dataset with ``offsets`` (S+1,) and ``n_features`` columns."""
    sizes = np.diff(np.asarray(offsets))
    n_max = int(sizes.max()) if len(sizes) else 0
    itemsize = torch.empty((), dtype=dtype).element_size()
    return int(sizes.sum()) * n_features * n_max * 3 * itemsize


def feature_jacobians(
    featurizer, numbers, positions, cells, pbcs, offsets, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features X (N, F) and their position Jacobian J (N, F, n_max, 3) (module docstring).

    Shapes: numbers (N,), positions (N, 3) Å, cells (S, 3, 3) Å, pbcs (S, 3), offsets (S+1,).
    Computed in float64 on the featurizer's ``device`` (the CPU for one without) and returned
    on the CPU in ``dtype``.
    """
    numbers, positions, cells, pbcs, offsets = featurizer.batch_arrays(
        numbers, positions, cells, pbcs, offsets
    )
    sizes = np.diff(offsets)
    n_max = int(sizes.max()) if len(sizes) else 0
    n_atoms, n_feat = len(numbers), featurizer.n_features
    X = torch.zeros((n_atoms, n_feat), dtype=dtype)
    J = torch.zeros((n_atoms, n_feat, n_max, 3), dtype=dtype)
    local = np.arange(n_atoms) - np.repeat(offsets[:-1], sizes)  # index of each atom in its frame
    on_device = getattr(featurizer, "_compute_module", None)
    module = featurizer if on_device is None else on_device()
    buffer = next(iter(module.buffers()), None) if isinstance(module, torch.nn.Module) else None
    device = torch.device("cpu") if buffer is None else buffer.device
    s = 0
    while s < len(sizes):
        e = int(np.searchsorted(offsets, offsets[s] + _ATOMS_PER_CALL, side="right")) - 1
        e = min(max(e, s + 1), len(sizes))
        a, b = int(offsets[s]), int(offsets[e])
        sub = offsets[s : e + 1] - a
        nl = featurizer.neighbors(numbers[a:b], positions[a:b], cells[s:e], pbcs[s:e], sub)
        args = (
            torch.from_numpy(numbers[a:b]).to(device),
            torch.from_numpy(positions[a:b]).to(device),
            torch.from_numpy(cells[s:e]).to(device),
            torch.from_numpy(np.repeat(np.arange(e - s), np.diff(sub))).to(device),
            nl.to_torch(device),
        )
        loc = torch.from_numpy(local[a:b]).to(device)
        with torch.no_grad():
            X[a:b] = module(*args).to(dtype).cpu()
            for k in range(3 * int(sizes[s:e].max())):
                tangent = torch.zeros((b - a, 3), dtype=torch.float64, device=device)
                tangent[loc == k // 3, k % 3] = 1.0
                with dual_level():
                    dual = fwAD.make_dual(args[1], tangent)
                    out = module(args[0], dual, *args[2:])
                    J[a:b, :, k // 3, k % 3] = fwAD.unpack_dual(out).tangent.to(dtype).cpu()
        s = e
    return X, J
