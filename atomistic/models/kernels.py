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
from threadpoolctl import threadpool_info, threadpool_limits
from torch import Tensor

from atomistic import interrupt

__all__ = [
    "KERNELS",
    "atomic_kernel",
    "structure_kernel",
    "structure_self_kernel",
    "DistanceBlocks",
    "blas_threads",
    "squared_distances",
]

KERNELS = ("rbf", "laplacian", "exponential", "linear")
DEFAULT_BUDGET = 1 << 22  # kernel entries per block (32 MiB in float64)
# largest distance cache of a hyperparameter search (DistanceBlocks), bytes
CACHE_BYTES = 1 << 30
# kernel entries per chunk of DistanceBlocks (1 MiB in float64: the exp and the structure sums
# of one chunk stay in the CPU's cache)
CHUNK = 1 << 17
# below this many structures a factorisation is faster on one BLAS thread than on several
# (thread start-up; on a loaded machine a 200 x 200 Cholesky took 122 ms on two threads, 0.1 ms
# on one)
_SMALL_SYSTEM = 1000


def _cpus() -> int:
    """CPUs this process may run on (its affinity mask, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def blas_threads(n: int) -> AbstractContextManager:
    """Thread limit of BLAS (numpy/scipy) and OpenMP (torch's intra-op pool) inside a kernel
    fit on n x n matrices, by threadpoolctl.

    The policy: one thread below ``_SMALL_SYSTEM`` structures (thread start-up costs more than
    it saves there); else the smallest of the CPUs this process may use (its affinity mask),
    torch's thread count, and the thread count each pool already had. Taking the minimum means a
    fit never raises a limit set from outside (``OMP_NUM_THREADS=1`` in a Dask worker, a
    ``threadpool_limits`` of the caller, ``torch.set_num_threads``), so kernel fits running
    beside Dask workers or torch training never start more threads than cores. The previous
    limits are restored on exit.

    Parameters
    ----------
    n : int
        Order of the matrices to factorise (training structures).

    Returns
    -------
    contextmanager
        A ``threadpoolctl.threadpool_limits`` context.
    """
    limit = 1
    if n >= _SMALL_SYSTEM:
        current = [p["num_threads"] for p in threadpool_info() if p["user_api"] in _APIS]
        limit = max(1, min([_cpus(), torch.get_num_threads(), *current]))
    return threadpool_limits(limits={api: limit for api in _APIS})


_APIS = ("blas", "openmp")


def squared_distances(A: Tensor, B: Tensor) -> Tensor:
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
        d2 = squared_distances(A, B)
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
    """The structure kernel ``structure_kernel(X, X, ...)`` of one set of structures at many
    widths sigma (a marginal-likelihood search), from atom-pair distances computed once.

    The quantity each kernel exponentiates depends on the data only: |x - y|^2 for rbf,
    |x - y|_2 or |x - y|_1 for exponential and laplacian (x . y for linear, then the kernel
    itself). It is computed per element for the upper triangle of atom pairs, in chunks of
    rows i against the atoms j >= i's chunk start (at most ``chunk`` entries), and kept; the
    kernel at a new width is then one elementwise exp per cached entry and two segment sums
    (``np.add.reduceat`` over the structure boundaries, atoms of a structure being contiguous),
    chunk by chunk in a buffer that stays in the CPU's cache.

    Memory model: the cache holds ``8 * sum_z N_z (N_z + 1) / 2`` bytes (N_z atoms of element
    z; within a few rows of the exact count), e.g. 385 MB for 300 structures of 32 Cu atoms.
    Chunks are cached in order until ``max_bytes`` would be passed; the others are recomputed
    from the features at every evaluation (``max_bytes=0``: nothing is kept, one evaluation
    costs what a direct kernel costs, about half of :func:`structure_kernel`'s work since it
    exploits the symmetry). An evaluation further needs two ``chunk``-sized buffers and two
    (n, n) arrays (four with the width derivative).

    Parameters
    ----------
    X : Tensor
        Atomic features, shape (N, F).
    numbers : Tensor
        Atomic numbers, shape (N,).
    batch : Tensor
        Structure index of each atom, shape (N,), nondecreasing in [0, n).
    n : int
        Number of structures.
    kernel : str
        One of :data:`KERNELS`.
    max_bytes : int
        Largest cache, bytes (default :data:`CACHE_BYTES`).
    chunk : int
        Kernel entries per chunk (default :data:`CHUNK`).
    """

    def __init__(
        self,
        X: Tensor,
        numbers: Tensor,
        batch: Tensor,
        n: int,
        kernel: str,
        max_bytes: int = CACHE_BYTES,
        chunk: int = CHUNK,
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel {kernel!r} is not one of {KERNELS}")
        seg = batch.cpu().numpy()
        if np.any(np.diff(seg) < 0):
            raise ValueError("DistanceBlocks needs the atoms of each structure contiguous")
        self.n, self.kernel = n, kernel
        z_all = numbers.cpu().numpy()
        X_np = X.detach().cpu().numpy().astype(np.float64, copy=False)
        self._X: list[np.ndarray] = []  # features of each element's atoms, shape (N_z, F)
        self._sq: list[np.ndarray] = []  # their |x|^2, shape (N_z,)
        self._chunks: list[_Chunk] = []
        for z in np.unique(z_all).tolist():
            ia = np.flatnonzero(z_all == z)
            self._X.append(np.ascontiguousarray(X_np[ia]))
            self._sq.append(np.einsum("ij,ij->i", self._X[-1], self._X[-1]))
            r0 = 0
            while r0 < ia.size:
                r1 = min(ia.size, r0 + max(1, chunk // (ia.size - r0)))
                self._chunks.append(_Chunk(len(self._X) - 1, r0, r1, seg[ia[r0:]]))
                r0 = r1
        used = 0
        for c in self._chunks:
            c.keep = used + 8 * c.size <= max_bytes
            used += 8 * c.size if c.keep else 0
        self._bytes = used

    def nbytes(self) -> int:
        """Bytes the cached distances take (at most ``max_bytes``), float64."""
        return self._bytes

    @property
    def entries(self) -> int:
        """Atom pairs (kernel entries) per evaluation, cached or not."""
        return sum(c.size for c in self._chunks)

    def _distances(self, c: _Chunk) -> np.ndarray:
        """The chunk's distances (kernel for linear), float64, shape c.shape."""
        Xz = self._X[c.element]
        A, B = Xz[c.r0 : c.r1], Xz[c.r0 :]
        if self.kernel in ("rbf", "linear"):
            D = np.matmul(A, B.T)  # shape (rows, columns)
            if self.kernel == "rbf":  # |a|^2 + |b|^2 - 2 a.b, clamped at 0 (as squared_distances)
                sq = self._sq[c.element]
                D *= -2.0
                D += sq[c.r0 : c.r1, None]
                D += sq[None, c.r0 :]
                np.maximum(D, 0.0, out=D)
            return D
        with torch.no_grad():
            D = _distance(torch.from_numpy(A), torch.from_numpy(B), self.kernel)
        return np.ascontiguousarray(D.numpy(), dtype=np.float64)

    def evaluate(
        self, sigma: float, with_dlogsigma: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """K (n, n) and, if asked, dK/dlog(sigma) (n, n), numpy, symmetric; equal to
        ``structure_kernel(X, .., X, ..)`` up to the order of summation."""
        n, linear = self.n, self.kernel == "linear"
        parts = [np.zeros((n, n)), np.zeros((n, n))]  # square chunks; rectangles (mirrored)
        dparts = [np.zeros((n, n)), np.zeros((n, n))] if with_dlogsigma else None
        scale = -0.5 / sigma**2 if self.kernel == "rbf" else -1.0 / sigma
        dscale = 1.0 / sigma**2 if self.kernel == "rbf" else 1.0 / sigma
        size = max((c.size for c in self._chunks), default=0)
        buf, dbuf = np.empty(size), np.empty(size)
        for c in self._chunks:
            interrupt.check()  # a stop request (SIGINT/SIGTERM): at the next chunk
            D = c.D
            if D is None:
                D = self._distances(c)
                if c.keep:
                    c.D = D
            if linear:
                k = D
            else:  # exp(-d2 / (2 sigma^2)), exp(-d / sigma)
                k = np.multiply(D, scale, out=buf[: c.size].reshape(c.shape))
                np.exp(k, out=k)
            c.add(k, parts)
            if dparts is not None and not linear:
                c.add(np.multiply(k, D, out=dbuf[: c.size].reshape(c.shape)), dparts)
        K = parts[0] + parts[1] + parts[1].T
        if dparts is None:
            return K, None
        if linear:
            return K, np.zeros((n, n))
        return K, dscale * (dparts[0] + dparts[1] + dparts[1].T)


class _Chunk:
    """Rows r0:r1 of one element's atoms against its atoms r0: (a chunk of DistanceBlocks),
    with the structure boundaries of its rows and columns; ``seg`` (N_z - r0,) structure index
    of the columns."""

    def __init__(self, element: int, r0: int, r1: int, seg: np.ndarray) -> None:
        self.element, self.r0, self.r1 = element, r0, r1
        b = r1 - r0
        self.shape = (b, seg.size)
        self.size = b * seg.size
        self.keep = False
        self.D: np.ndarray | None = None
        starts = np.ones(seg.size, dtype=bool)
        starts[1:] = seg[1:] != seg[:-1]
        self.r_start = np.flatnonzero(starts[:b])  # first row of each row structure
        starts[b % seg.size] = True  # the square part ends at column b
        self.c_start = np.flatnonzero(starts)
        self.nsq = int(np.searchsorted(self.c_start, b))
        rs, cs = seg[self.r_start], seg[self.c_start]
        self.square = _block(rs, cs[: self.nsq])
        self.rect = _block(rs, cs[self.nsq :]) if self.nsq < cs.size else None

    def add(self, k: np.ndarray, parts: list[np.ndarray]) -> None:
        """Add the structure sums of the chunk's kernel ``k`` (shape self.shape) to
        ``parts`` = [square part, rectangle part], each (n, n)."""
        cols = np.add.reduceat(k, self.c_start, axis=1)  # shape (rows, column structures)
        sums = np.add.reduceat(cols, self.r_start, axis=0)  # shape (row structs, col structs)
        parts[0][self.square] += sums[:, : self.nsq]
        if self.rect is not None:
            parts[1][self.rect] += sums[:, self.nsq :]


def _block(rows: np.ndarray, cols: np.ndarray):
    """Index of the (rows, cols) block of an (n, n) array: slices when both are ranges."""

    def as_slice(a: np.ndarray):
        return slice(int(a[0]), int(a[-1]) + 1) if a[-1] - a[0] + 1 == a.size else None

    r, c = as_slice(rows), as_slice(cols)
    if r is not None and c is not None:
        return r, c
    return np.ix_(rows, cols)
