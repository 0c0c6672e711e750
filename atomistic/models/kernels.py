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

import torch
from torch import Tensor

__all__ = ["KERNELS", "atomic_kernel", "structure_kernel", "structure_self_kernel"]

KERNELS = ("rbf", "laplacian", "exponential", "linear")
DEFAULT_BUDGET = 1 << 22  # kernel entries per block (32 MiB in float64)


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
    k = torch.exp(-d / sigma)
    return k, (k * d / sigma if with_dlogsigma else None)


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
