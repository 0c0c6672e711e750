"""The design rows of the sparse (projected-process) kernel model of GAP.

Representative environments (:func:`select_sparse`: CUR leverage sampling, Mahoney & Drineas,
PNAS 106, 697 (2009), or farthest points), the kernel between them (:func:`rbf_kernel_mm`) and,
block by block of structures, the rows of energies and force components against them with their
prior variances (:func:`design_blocks`; force rows by forward-mode autograd through the
featurizer). The model, its normal equations and its likelihood are in
:mod:`atomistic.models.sparse_kernel`, whose docstring gives the formulas.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from atomistic import interrupt
from atomistic.features.jacobian import dual_level
from atomistic.models.base import AtomicData, NeighborCache, scaled_features_torch
from atomistic.models.kernels import DEFAULT_BUDGET, squared_distances
from atomistic.models.keys import BATCH_KEY, NUMBERS_KEY, POSITIONS_KEY, ROWS_KEY

__all__ = [
    "JITTER",
    "SPARSE_METHODS",
    "Design",
    "cur_selection",
    "design_blocks",
    "farthest_point_sampling",
    "rbf_kernel_mm",
    "select_sparse",
]

JITTER = 1e-8  # added to K_MM's diagonal (rbf: k(x, x) = 1), so that it is positive definite
SPARSE_METHODS = ("cur", "fps")
_ATOMS_PER_BLOCK = 1024


# -- representative environments ---------------------------------------------------------------
def farthest_point_sampling(X: np.ndarray, m: int) -> np.ndarray:
    """Indices of ``m`` rows of X (n, F) by farthest-point sampling (Euclidean), starting from the
    row farthest from the mean; deterministic."""
    X = np.asarray(X, dtype=np.float64)
    first = int(np.argmax(((X - X.mean(0)) ** 2).sum(1)))
    picked = [first]
    d2 = ((X - X[first]) ** 2).sum(1)  # shape (n,)
    for _ in range(m - 1):
        nxt = int(np.argmax(d2))
        picked.append(nxt)
        d2 = np.minimum(d2, ((X - X[nxt]) ** 2).sum(1))
    return np.array(picked, dtype=np.int64)


def cur_selection(X: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """Indices of ``m`` rows of X (n, F) sampled without replacement with probability
    proportional to their leverage scores on the top-k left singular vectors, k = min(m, rank)
    (CUR decomposition, Mahoney & Drineas 2009; GAP's ``sparse_method=cur_points``)."""
    U, s, _ = np.linalg.svd(np.asarray(X, dtype=np.float64), full_matrices=False)
    rank = int((s > s[0] * 1e-12).sum()) if s.size else 0
    k = max(1, min(m, rank))
    lev = (U[:, :k] ** 2).sum(1)  # shape (n,)
    p = lev + 1e-12 * lev.max()  # every row remains possible (m may exceed the rank)
    return rng.choice(len(X), size=m, replace=False, p=p / p.sum())


def select_sparse(
    X: np.ndarray, numbers: np.ndarray, n_sparse: int, method: str, seed: int = 0
) -> np.ndarray:
    """Rows of the representative environments: up to ``n_sparse`` per element (all of an
    element's atoms when it has fewer), elements in ascending atomic number, rows ascending
    within an element. X (n_atoms, F) scaled features, numbers (n_atoms,)."""
    if method not in SPARSE_METHODS:
        raise ValueError(f"sparse_method {method!r} is not one of {SPARSE_METHODS}")
    if n_sparse < 1:
        raise ValueError(f"n_sparse must be at least 1, got {n_sparse}")
    rng = np.random.default_rng(seed)
    out = []
    for z in np.unique(numbers):
        rows = np.flatnonzero(numbers == z)
        m = min(int(n_sparse), len(rows))
        if m == len(rows):
            pick = np.arange(len(rows))
        elif method == "fps":
            pick = farthest_point_sampling(X[rows], m)
        else:
            pick = cur_selection(X[rows], m, rng)
        out.append(rows[np.sort(pick)])
    return np.concatenate(out)


# -- kernel rows -------------------------------------------------------------------------------
def rbf_kernel_mm(X: Tensor, numbers: Tensor, sigma: float) -> Tensor:
    """K_MM (M, M) between representatives (zero across elements), with JITTER on the diagonal."""
    d2 = squared_distances(X, X)  # shape (M, M)
    K = torch.exp(-d2 / (2.0 * sigma**2)) * (numbers[:, None] == numbers[None, :])
    return K + JITTER * torch.eye(len(X), dtype=X.dtype)


@dataclass
class Design:
    """Rows of one block of structures ``idx``: energies ``KE`` (B, M), force components ``KF``
    (3 n, M) ordered as ``forces[rows].reshape(-1)``, and optionally prior variances ``kEE`` (B,)
    and ``kFF`` (3 n,) (eV^2 / delta^2, i.e. for unit amplitude)."""

    idx: np.ndarray
    rows: np.ndarray
    KE: Tensor
    KF: Tensor | None = None
    kEE: Tensor | None = None
    kFF: Tensor | None = None


def _element_blocks(numbers: Tensor, reps_numbers: Tensor) -> list[tuple[Tensor, int, int]]:
    """(atom indices of element z, first and last+1 representative column of z)."""
    out = []
    for z in torch.unique(reps_numbers).tolist():
        cols = torch.nonzero(reps_numbers == z).squeeze(1)
        ia = torch.nonzero(numbers == z).squeeze(1)
        if ia.numel():
            out.append((ia, int(cols[0]), int(cols[-1]) + 1))
    return out


def _pairs(numbers: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
    """All ordered pairs (i, j), i = j included, of like atoms within one structure."""
    same = (batch[:, None] == batch[None, :]) & (numbers[:, None] == numbers[None, :])
    i, j = torch.nonzero(same, as_tuple=True)
    return i, j


def _energy_rows(X, numbers, batch, B, XM, blocks, sigma):
    KE = X.new_zeros((B, XM.shape[0]))
    ks = []
    for ia, c0, c1 in blocks:
        k = torch.exp(-squared_distances(X[ia], XM[c0:c1]) / (2.0 * sigma**2))  # shape (n_z, M_z)
        KE[:, c0:c1].index_add_(0, batch[ia], k)
        ks.append(k)
    return KE, ks


def _energy_design_blocks(
    data: AtomicData, XM: Tensor, numbers_M: Tensor, sigma: float, per: int, prior: bool
) -> Iterator[Design]:
    """The energy rows of :func:`design_blocks` from stored features, ``per`` structures a
    block."""
    ds = data.dataset
    counts = np.diff(ds.offsets)
    Xall = torch.as_tensor(data.scaled_features())
    numbers_all = torch.as_tensor(ds.numbers)
    for s0 in range(0, ds.n_structures, per):
        interrupt.check()
        idx = np.arange(s0, min(ds.n_structures, s0 + per))
        a, b = int(ds.offsets[idx[0]]), int(ds.offsets[idx[-1] + 1])
        X, z = Xall[a:b], numbers_all[a:b]
        batch = torch.repeat_interleave(torch.arange(len(idx)), torch.as_tensor(counts[idx]))
        KE, _ = _energy_rows(X, z, batch, len(idx), XM, _element_blocks(z, numbers_M), sigma)
        d = Design(idx, np.arange(a, b), KE)
        if prior:
            i, j = _pairs(z, batch)
            kij = torch.exp(-((X[i] - X[j]) ** 2).sum(1) / (2.0 * sigma**2))
            d.kEE = X.new_zeros(len(idx)).index_add_(0, batch[i], kij)
        yield d


def design_blocks(
    data: AtomicData,
    XM: Tensor,
    numbers_M: Tensor,
    sigma: float,
    forces: bool = True,
    prior: bool = False,
    budget: int = DEFAULT_BUDGET,
    featurizer: Any = None,
    scaler: Any = None,
) -> Iterator[Design]:
    """The design rows of ``data`` against representatives XM (M, F), numbers_M (M,), block by
    block of whole structures (about ``budget`` entries of KF per block).

    Without ``forces`` the energy rows use ``data.scaled_features()`` (no featurizer needed);
    with ``forces`` the features and their derivatives come from ``featurizer`` (default
    ``data.featurizer``) and ``scaler`` by forward-mode autograd. ``prior`` adds the prior
    variances kEE, kFF (for the predictive variance)."""
    ds = data.dataset
    M = int(XM.shape[0])
    counts = np.diff(ds.offsets)
    n_max = int(counts.max()) if len(counts) else 1
    # structures per block: KF within ``budget`` entries, and at most _ATOMS_PER_BLOCK atoms
    # per forward-mode featurizer pass (its three-body temporaries dominate otherwise)
    per = max(1, min(budget // max(1, 3 * n_max * M), _ATOMS_PER_BLOCK // n_max))
    XM = XM.to(torch.float64)
    if not forces:
        yield from _energy_design_blocks(data, XM, numbers_M, sigma, per, prior)
        return
    if featurizer is None:
        featurizer, scaler = data.featurizer, data.scaler
    if featurizer is None:
        raise ValueError("force rows need a differentiable featurizer (none given)")
    cache = NeighborCache(featurizer, ds)
    for s0 in range(0, ds.n_structures, per):
        interrupt.check()  # a stop request: at the next block of structures
        idx = np.arange(s0, min(ds.n_structures, s0 + per))
        n = int(counts[idx].sum())
        # a small block (a single structure in MD) is copied so that one featurizer pass carries
        # several tangents, copy r moving atom a_r along c_r: passes cost Python dispatch, not
        # only flops
        copies = max(1, _ATOMS_PER_BLOCK // n)
        tangents = [(a, c) for a in range(int(counts[idx].max())) for c in range(3)]
        starts = np.repeat(ds.offsets[idx] - ds.offsets[idx[0]], counts[idx])
        local = torch.arange(n) - torch.as_tensor(starts)  # index of an atom in its structure
        KF: Tensor | None = None
        kFF: Tensor | None = None
        X: Tensor | None = None
        for g0 in range(0, len(tangents), copies):
            interrupt.check()  # and at the next group of tangents
            group = tangents[g0 : g0 + copies]
            b: dict[str, Any] = cache.batch(np.tile(idx, len(group)))
            pos: Tensor = b[POSITIONS_KEY].detach()
            tangent = torch.zeros_like(pos)
            moved = [torch.nonzero(local == a).squeeze(1) for a, _ in group]  # atom a, each (B',)
            for r, ((_, c), m) in enumerate(zip(group, moved, strict=True)):
                tangent[r * n + m, c] = 1.0
            with dual_level():  # one thread at a time: the levels are global to the process
                dual = fwAD.make_dual(pos, tangent)
                out = scaled_features_torch(featurizer, scaler, {**b, POSITIONS_KEY: dual})
                Xp, dX = fwAD.unpack_dual(out)
            dX = torch.zeros_like(Xp) if dX is None else dX.detach()
            if X is None:  # the features, energy rows and like-atom pairs: with the first pass
                X = Xp[:n].detach()
                z, batch = b[NUMBERS_KEY][:n], b[BATCH_KEY][:n]
                rows = b[ROWS_KEY][:n].numpy()
                rows_design = _ForceRows(X, z, batch, len(idx), XM, numbers_M, sigma, prior)
                KF = X.new_zeros((n, 3, M))
                kFF = X.new_zeros((n, 3))
            assert KF is not None and kFF is not None
            for r, ((_, c), m) in enumerate(zip(group, moved, strict=True)):
                seg, prior_f = rows_design.tangent(dX[r * n : (r + 1) * n])
                KF[m, c] = seg[batch[m]]
                if prior_f is not None:
                    kFF[m, c] = prior_f[batch[m]]
        assert KF is not None and kFF is not None
        d = Design(idx, rows, rows_design.KE, KF.reshape(3 * n, M))
        if prior:
            d.kEE = rows_design.kEE
            d.kFF = kFF.reshape(-1)
        yield d


class _ForceRows:
    """The energy rows of one block of structures (features X (n, F), numbers z, structure
    ``batch``) against representatives XM, and, per featurizer tangent dX (n, F) (the features'
    derivative along one displacement), the force rows' segment (B, M) and, with ``prior``, the
    prior variance terms (B,) of that displacement, per structure."""

    def __init__(self, X, z, batch, B, XM, numbers_M, sigma, prior):
        self.X, self.batch, self.B, self.XM, self.inv_s2 = X, batch, B, XM, 1.0 / sigma**2
        self.blocks = _element_blocks(z, numbers_M)
        self.KE, self.ks = _energy_rows(X, z, batch, B, XM, self.blocks, sigma)
        self.prior = prior
        if prior:
            self.pairs = _pairs(z, batch)
            i, j = self.pairs
            self.kij = torch.exp(-((X[i] - X[j]) ** 2).sum(1) * 0.5 * self.inv_s2)
            self.kEE = X.new_zeros(B).index_add_(0, batch[i], self.kij)

    def tangent(self, dX: Tensor) -> tuple[Tensor, Tensor | None]:
        X, batch, inv_s2 = self.X, self.batch, self.inv_s2
        p = (X * dX).sum(1)  # x_i . dx_i, shape (n,)
        seg = X.new_zeros((self.B, self.XM.shape[0]))
        for (ia, c0, c1), k in zip(self.blocks, self.ks, strict=True):
            q = dX[ia] @ self.XM[c0:c1].T  # dx_i . x_m, shape (n_z, M_z)
            seg[:, c0:c1].index_add_(0, batch[ia], k * (p[ia, None] - q) * inv_s2)
        if not self.prior:
            return seg, None
        i, j = self.pairs
        dd = (dX[i] * dX[j]).sum(1)
        u = ((X[i] - X[j]) * dX[i]).sum(1)
        v = ((X[i] - X[j]) * dX[j]).sum(1)
        val = self.kij * inv_s2 * (dd - u * v * inv_s2)
        return seg, X.new_zeros(self.B).index_add_(0, batch[i], val)
