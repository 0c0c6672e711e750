"""Atomic kernels and their structure sums, built in blocks (Rupp, Int. J. Quantum Chem. 115,
1058 (2015), "Machine learning for quantum mechanics in a nutshell", eqs. 10-14).

Atomic kernels between atomic feature vectors x, y (n_features,), dimensionless:

* ``rbf``:          k(x, y) = exp(-|x - y|_2^2 / (2 sigma^2))
* ``laplacian``:    k(x, y) = exp(-|x - y|_1 / sigma)
* ``exponential``:  k(x, y) = exp(-|x - y|_2 / sigma)
* ``linear``:       k(x, y) = x . y                      (sigma unused)

Atoms of different elements do not interact: k = 0 across elements. The kernel between
structures s and t is the sum over their atom pairs, K_st = sum_{i in s} sum_{j in t} k(x_i, x_j),
so a property that is a sum of atomic terms is learned. :func:`structure_kernel` never holds the
full atoms x atoms matrix: it takes row blocks of one element's atoms against all training atoms
of that element (at most ``budget`` entries per block) and reduces each block per structure with
``index_add_`` (a segment sum) before the next. Everything is torch, so gradients of K with respect
to the first argument's features flow by autograd (forces).
"""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch import Tensor

from atomistic import interrupt

__all__ = [
    "KERNELS",
    "atomic_kernel",
    "structure_kernel",
    "structure_self_kernel",
    "DistanceBlocks",
    "blas_threads",
]

KERNELS = ("rbf", "laplacian", "exponential", "linear")
DEFAULT_BUDGET = 1 << 22  # kernel entries per block (32 MiB in float64)
# largest distance cache of a hyperparameter search (DistanceBlocks), bytes
CACHE_BYTES = 1 << 30
# below this many structures a factorisation is faster on one BLAS thread than on several
# (thread start-up; on a loaded machine a 200 x 200 Cholesky took 122 ms on two threads, 0.1 ms
# on one)
_SMALL_SYSTEM = 1000


def blas_threads(n: int) -> AbstractContextManager:
    """BLAS threads for linear algebra on n x n matrices: one below ``_SMALL_SYSTEM``, else
    torch's thread count bounded by the CPUs this process may use, so a fit never starts more
    BLAS threads than cores (oversubscription)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limit = 1 if n < _SMALL_SYSTEM else max(1, min(torch.get_num_threads(), cpus or 1))
    return threadpool_limits(limits=limit, user_api="blas")


def _sqdist(A: Tensor, B: Tensor) -> Tensor:
    """|a - b|^2, shape (n, m), by the expansion |a|^2 + |b|^2 - 2 a.b (clamped at 0)."""
    d2 = (A * A).sum(1, keepdim=True) + (B * B).sum(1) - 2.0 * A @ B.T  # shape (n, m)
    return d2.clamp_min(0.0)


def atomic_kernel(
    A: Tensor, B: Tensor, kernel: str, sigma: float, with_dlogsigma: bool = False
) -> tuple[Tensor, Tensor | None]:
    """k(A_i, B_j), shape (n, m), and optionally dk/dlog(sigma), same shape.

    A (n, F) and B (m, F) are atomic features of one element.
    """
    if kernel == "linear":
        k = A @ B.T
        return k, (torch.zeros_like(k) if with_dlogsigma else None)
    if kernel == "rbf":
        d2 = _sqdist(A, B)
        k = torch.exp(-d2 / (2.0 * sigma**2))
        return k, (k * d2 / sigma**2 if with_dlogsigma else None)
    d = _distance(A, B, kernel)
    k = torch.exp(-d / sigma)
    return k, (k * d / sigma if with_dlogsigma else None)


def _distance(A: Tensor, B: Tensor, kernel: str) -> Tensor:
    """|a - b|_2 (exponential) or |a - b|_1 (laplacian), shape (n, m)."""
    if kernel == "exponential":
        # direct differences, not the |a|^2 + |b|^2 - 2 a.b expansion: its rounding error
        # (~1e-16) becomes ~1e-8 under the square root for nearly equal vectors
        d = torch.cdist(
            A.unsqueeze(0), B.unsqueeze(0), p=2.0, compute_mode="donot_use_mm_for_euclid_dist"
        ).squeeze(0)
    elif kernel == "laplacian":
        d = torch.cdist(A.unsqueeze(0), B.unsqueeze(0), p=1).squeeze(0)
    else:
        raise ValueError(f"kernel {kernel!r} is not one of {KERNELS}")
    return d


def structure_kernel(
    XA: Tensor,
    numbers_a: Tensor,
    batch_a: Tensor,
    n_a: int,
    XB: Tensor,
    numbers_b: Tensor,
    batch_b: Tensor,
    n_b: int,
    kernel: str,
    sigma: float,
    with_dlogsigma: bool = False,
    budget: int = DEFAULT_BUDGET,
) -> tuple[Tensor, Tensor | None]:
    """K_st = sum_{i in s, j in t, Z_i = Z_j} k(x_i, x_j), shape (n_a, n_b), and optionally
    dK/dlog(sigma).

    XA (N_a, F), numbers_a (N_a,), batch_a (N_a,) structure index in [0, n_a); likewise for B.
    """
    K = XA.new_zeros((n_a, n_b))
    dK = XA.new_zeros((n_a, n_b)) if with_dlogsigma else None
    for z in torch.unique(numbers_a).tolist():
        ib = torch.nonzero(numbers_b == z).squeeze(1)
        if ib.numel() == 0:
            continue
        ia = torch.nonzero(numbers_a == z).squeeze(1)
        Bz, seg_b = XB[ib], batch_b[ib]
        rows = max(1, budget // ib.numel())
        for r0 in range(0, ia.numel(), rows):
            interrupt.check()  # a stop request (SIGINT/SIGTERM): at the next block
            blk = ia[r0 : r0 + rows]
            k, dk = atomic_kernel(XA[blk], Bz, kernel, sigma, with_dlogsigma)  # shape (b, m)
            kc = k.new_zeros((blk.numel(), n_b)).index_add_(1, seg_b, k)  # shape (b, n_b)
            K = K.index_add(0, batch_a[blk], kc)
            if dK is not None and dk is not None:
                dkc = dk.new_zeros((blk.numel(), n_b)).index_add_(1, seg_b, dk)
                dK = dK.index_add(0, batch_a[blk], dkc)
    return K, dK


def structure_self_kernel(
    X: Tensor, numbers: Tensor, batch: Tensor, n: int, kernel: str, sigma: float
) -> Tensor:
    """Diagonal K_ss, shape (n,), without the off-diagonal structure pairs.

    Computed per block of structures (atoms of a structure are contiguous rows)."""
    out = X.new_zeros(n)
    counts = torch.bincount(batch, minlength=n)
    starts = torch.cumsum(counts, 0) - counts
    per = max(1, int(DEFAULT_BUDGET**0.5) // max(1, int(counts.max()) if n else 1))
    for s0 in range(0, n, per):
        s1 = min(n, s0 + per)
        a, b = int(starts[s0]), int(starts[s1 - 1] + counts[s1 - 1])
        local = batch[a:b] - s0
        K, _ = structure_kernel(
            X[a:b],
            numbers[a:b],
            local,
            s1 - s0,
            X[a:b],
            numbers[a:b],
            local,
            s1 - s0,
            kernel,
            sigma,
        )
        out[s0:s1] = torch.diagonal(K)
    return out


class DistanceBlocks:
    """The atom-pair distances of ``structure_kernel(X, X, ...)`` built once, for the kernels of
    many widths sigma (a marginal-likelihood search): each evaluation then costs one exp and
    two segment sums per atom pair, not a distance computation.

    Distances are kept per element for the upper triangle of atom pairs only (row blocks of at
    most ``budget`` entries against the atoms from the block's first row on), as the quantity
    the kernel exponentiates: |x - y|^2 for rbf, |x - y|_2 or |x - y|_1 for exponential and
    laplacian, x . y for linear (then the kernel itself). Structure sums use ``np.add.reduceat``
    over the contiguous atoms of each structure. :meth:`nbytes` is the memory it needs, known
    before anything is built.

    Args: X (N, F) features, numbers (N,), batch (N,) nondecreasing structure index in [0, n).
    """

    def __init__(
        self,
        X: Tensor,
        numbers: Tensor,
        batch: Tensor,
        n: int,
        kernel: str,
        budget: int = DEFAULT_BUDGET,
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel {kernel!r} is not one of {KERNELS}")
        self.n, self.kernel = n, kernel
        z_all, seg_all = numbers.cpu().numpy(), batch.cpu().numpy()
        self._plan = []
        for z in np.unique(z_all).tolist():
            ia = np.flatnonzero(z_all == z)
            rows = max(1, budget // ia.size)
            for r0 in range(0, ia.size, rows):
                r1 = min(ia.size, r0 + rows)
                self._plan.append((ia, r0, r1))
        self.X = X.detach()
        self.seg = seg_all
        self._blocks: list | None = None

    def nbytes(self) -> int:
        """Bytes the distance blocks take, float64."""
        return 8 * sum((r1 - r0) * (ia.size - r0) for ia, r0, r1 in self._plan)

    def _build(self) -> list:
        blocks = []
        with torch.no_grad():
            for ia, r0, r1 in self._plan:
                interrupt.check()
                idx = torch.from_numpy(ia)
                A, B = self.X[idx[r0:r1]], self.X[idx[r0:]]
                if self.kernel == "rbf":
                    D = _sqdist(A, B)
                elif self.kernel == "linear":
                    D = A @ B.T
                else:
                    D = _distance(A, B, self.kernel)
                seg_r, seg_c = self.seg[ia[r0:r1]], self.seg[ia[r0:]]
                # structures and first positions of the row atoms, the square part's columns
                # (rows again) and the columns beyond the block
                rs, r_start = np.unique(seg_r, return_index=True)
                cs, c_start = np.unique(seg_c[r1 - r0 :], return_index=True)
                blocks.append((D, r1 - r0, rs, r_start, cs, c_start))
        return blocks

    def evaluate(self, sigma: float, with_dlogsigma: bool = False):
        """(K, dK/dlog sigma or None), numpy (n, n), symmetric; equal to
        ``structure_kernel(X, .., X, ..)`` up to the order of summation."""
        if self._blocks is None:
            self._blocks = self._build()
        n = self.n
        diag, off = np.zeros((n, n)), np.zeros((n, n))
        ddiag, doff = (np.zeros((n, n)), np.zeros((n, n))) if with_dlogsigma else (None, None)
        scale = {"rbf": -2.0 * sigma**2, "linear": 1.0}.get(self.kernel, -sigma)
        dscale = {"rbf": 1.0 / sigma**2, "linear": 0.0}.get(self.kernel, 1.0 / sigma)
        size = max((D.numel() for D, *_ in self._blocks), default=0)
        buffer = torch.empty(size, dtype=self.X.dtype)
        for D, b, rs, r_start, cs, c_start in self._blocks:
            if self.kernel == "linear":
                k = D.numpy().copy()
            else:  # exp(-d2 / (2 sigma^2)), exp(-d / sigma); one buffer for every block
                out = buffer[: D.numel()].view(D.shape)
                k = torch.div(D, scale, out=out).exp_().numpy()
            self._add(k, b, rs, r_start, cs, c_start, diag, off)
            if with_dlogsigma and self.kernel != "linear":
                dk = np.multiply(k, D.numpy(), out=k)
                self._add(dk, b, rs, r_start, cs, c_start, ddiag, doff)
        K = diag + off + off.T
        if ddiag is None or doff is None:
            return K, None
        return K, dscale * (ddiag + doff + doff.T)

    @staticmethod
    def _add(k, b, rs, r_start, cs, c_start, diag, off) -> None:
        rows = np.add.reduceat(k, r_start, axis=0)  # shape (row structures, columns)
        diag[np.ix_(rs, rs)] += np.add.reduceat(rows[:, :b], r_start, axis=1)
        if k.shape[1] > b:
            off[np.ix_(rs, cs)] += np.add.reduceat(rows[:, b:], c_start, axis=1)
