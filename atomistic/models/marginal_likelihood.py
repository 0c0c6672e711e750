"""Type-II maximum likelihood of a Gaussian process's kernel width and noise ratio
(Rasmussen & Williams, "Gaussian Processes for Machine Learning", MIT Press 2006, eqs. 5.8-5.9),
with the amplitude profiled out and the noise ratio solved in the kernel's eigenbasis.

Model: y ~ N(0, a^2 (K + g I)), K (n, n) the structure kernel of width sigma, g = noise / a^2.
With a^2 at its maximum, a^2 = y^T A^-1 y / n (A = K + g I), the log marginal likelihood is

    L(sigma, g) = -n/2 log(2 pi y^T A^-1 y / n) - 1/2 log|A| - n/2.

With K = Q diag(w) Q^T (``scipy.linalg.eigh``) and q = Q^T y, every g costs O(n):

    y^T A^-1 y = sum_i q_i^2 / (w_i + g),   log|A| = sum_i log(w_i + g),

so g is maximised exactly for each width (a grid over the bounds, then bounded Brent around its
best point; a bound is kept when it is better), and the search over the width is one-dimensional,
on the profile P(sigma) = max_g L(sigma, g): its maximum is the joint maximum of L over
(sigma, g) that a two-dimensional search finds. The width is bracketed on a grid of factors of
2 and refined by bounded Brent (derivative-free). One kernel per width, instead of one per
(width, noise) step of a two-dimensional L-BFGS-B: near g -> 0 the kernel's smallest
eigenvalues are rounding noise (relative ~1e-16 of the largest), L is rough on that scale (a few
1e-4 in the demo campaign) and a gradient line search stalls on it; the demo's search went from
82 kernels to 19.

The gradient of the profile (envelope theorem: the partial derivative at the optimal g),

    dP/dlog sigma = n/2 (alpha^T dK alpha) / (y^T alpha) - 1/2 tr(A^-1 dK),  alpha = A^-1 y,

is :func:`profile_gradient`, for a caller's gradient-based search and for tests.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import scipy.linalg
import scipy.optimize

from atomistic import interrupt

__all__ = ["profile_in_noise", "profile_gradient", "optimize_width_and_noise"]

KernelAt = Callable[[float, bool], tuple[np.ndarray, np.ndarray | None]]
XATOL = 1e-4  # tolerance of log sigma: the likelihood's rounding noise is larger below
_LOG2 = math.log(2.0)
_GRID = 64  # noise ratios tried over the bounds before the bounded Brent refinement


def _lml(w: np.ndarray, q2: np.ndarray, log_g: np.ndarray) -> np.ndarray:
    """L at noise ratios exp(log_g) (m,) for eigenvalues w (n,) and squared projections q2."""
    lam = w[None, :] + np.exp(log_g)[:, None]  # shape (m, n)
    n = w.size
    with np.errstate(divide="ignore", invalid="ignore"):
        yta = (q2 / lam).sum(1)
        out = -0.5 * n * np.log(2 * math.pi * yta / n) - 0.5 * np.log(lam).sum(1) - 0.5 * n
    return np.where((lam > 0).all(1) & (yta > 0), out, -np.inf)


def profile_in_noise(
    w: np.ndarray, q: np.ndarray, log_g_bounds: tuple[float, float]
) -> tuple[float, float]:
    """The noise ratio that maximises L for one kernel.

    Parameters
    ----------
    w : ndarray
        Eigenvalues of K, shape (n,).
    q : ndarray
        Q^T y, the targets in K's eigenbasis, shape (n,) (eV).
    log_g_bounds : tuple of float
        Bounds of log g.

    Returns
    -------
    tuple of float
        (log g at the maximum, L there); L = -inf when no g in the bounds makes A positive
        definite.
    """
    q2 = q * q
    lo, hi = log_g_bounds
    if w.min() <= 0:  # A = K + g I must stay positive definite
        lo = max(lo, math.log(-w.min()) + 1e-9) if w.min() < 0 else lo
    if lo >= hi:
        return hi, float(_lml(w, q2, np.array([hi]))[0])
    grid = np.linspace(lo, hi, _GRID)
    values = _lml(w, q2, grid)
    i = int(np.argmax(values))
    best = (float(grid[i]), float(values[i]))
    if not np.isfinite(best[1]):
        return best
    a, b = grid[max(i - 1, 0)], grid[min(i + 1, _GRID - 1)]
    res = scipy.optimize.minimize_scalar(
        lambda x: -float(_lml(w, q2, np.array([x]))[0]),
        bounds=(a, b),
        method="bounded",
        options={"xatol": 1e-10},
    )
    if -res.fun > best[1]:
        best = (float(res.x), float(-res.fun))
    return best


def profile_gradient(K: np.ndarray, dK: np.ndarray, y: np.ndarray, g: float) -> float:
    """dL/dlog sigma at noise ratio g: n/2 (alpha^T dK alpha) / (y^T alpha) - 1/2 tr(A^-1 dK).

    Parameters
    ----------
    K, dK : ndarray
        The kernel and its derivative with respect to log sigma, shape (n, n).
    y : ndarray
        Targets, shape (n,).
    g : float
        Noise ratio; at the g of :func:`profile_in_noise` this is dP/dlog sigma.

    Returns
    -------
    float
        The derivative.
    """
    factor = scipy.linalg.cho_factor(K + g * np.eye(len(y)), lower=True)
    alpha = scipy.linalg.cho_solve(factor, y)
    Ainv = scipy.linalg.cho_solve(factor, np.eye(len(y)))
    yta = float(y @ alpha)
    return 0.5 * len(y) * float(alpha @ dK @ alpha) / yta - 0.5 * float(np.sum(Ainv * dK))


def optimize_width_and_noise(
    kernel_at: KernelAt,
    y: np.ndarray,
    sigma: float,
    width_free: bool = True,
    callback=None,
    xatol: float = XATOL,
) -> tuple[float, float]:
    """Maximise L over (sigma, g) (module docstring).

    The width starts from the best of sigma * 2^k, k = -2..3, by P (the likelihood is often
    multimodal in sigma), steps on by factors of 2 while the best is at an end, and is refined
    by bounded Brent between the best point's neighbours to ``xatol`` in log sigma. Bounds:
    sigma in [1e-3, 1e3], g in [1e-10 s, 10 s] with s the mean diagonal of K at the given sigma.

    Parameters
    ----------
    kernel_at : callable
        ``kernel_at(sigma, with_dlogsigma)`` -> (K (n, n), dK/dlog sigma (n, n) or None), e.g.
        :meth:`atomistic.models.kernels.DistanceBlocks.evaluate` (called with False).
    y : ndarray
        Targets, shape (n,) (eV).
    sigma : float
        Initial width (no initial noise ratio is needed: g is solved for at each width).
    width_free : bool
        False for a kernel without a width (linear): only g is fitted.
    callback : callable, optional
        ``callback(step, {"log_marginal_likelihood", "sigma", "g"})`` after every kernel.
    xatol : float
        Tolerance of log sigma.

    Returns
    -------
    tuple of float
        (sigma, g) at the maximum.
    """
    seen: dict[float, tuple[float, float]] = {}  # log sigma -> (-P, its best log g)
    scale = 0.0
    g_bounds = (0.0, 0.0)

    def neg_profile(x: float) -> float:
        if x in seen:
            return seen[x][0]
        interrupt.check()  # a stop request: at the next likelihood evaluation
        K, _ = kernel_at(math.exp(x), False)
        nonlocal scale, g_bounds
        if not seen:  # the bounds of g from the kernel at the given width
            scale = float(np.mean(np.diag(K)))
            g_bounds = (math.log(1e-10 * scale), math.log(10.0 * scale))
        w, Q = scipy.linalg.eigh(K)
        log_g, lml = profile_in_noise(w, Q.T @ y, g_bounds)
        seen[x] = (-lml if np.isfinite(lml) else 1e30, log_g)
        if callback is not None:
            info = {"log_marginal_likelihood": lml, "sigma": math.exp(x), "g": math.exp(log_g)}
            callback(len(seen) - 1, info)
        return seen[x][0]

    lo, hi = math.log(1e-3), math.log(1e3)
    x0 = float(np.clip(math.log(sigma), lo, hi))
    neg_profile(x0)
    if not width_free:
        return math.exp(x0), math.exp(seen[x0][1])
    for k in (-2, -1, 1, 2, 3):
        neg_profile(float(np.clip(x0 + k * _LOG2, lo, hi)))
    while True:  # step on while the best width is at an end of the tried ones
        xs = sorted(seen)
        best = min(xs, key=lambda x: seen[x][0])
        if best == xs[0] and best > lo:
            neg_profile(max(lo, best - _LOG2))
        elif best == xs[-1] and best < hi:
            neg_profile(min(hi, best + _LOG2))
        else:
            break
    i = xs.index(best)
    a, b = xs[max(i - 1, 0)], xs[min(i + 1, len(xs) - 1)]
    if b - a > xatol:
        res = scipy.optimize.minimize_scalar(
            neg_profile, bounds=(a, b), method="bounded", options={"xatol": xatol}
        )
        best = min((best, float(res.x)), key=lambda x: seen[x][0])
    return math.exp(best), math.exp(seen[best][1])
