"""Sparse kernel regression on energies and forces: the projected-process (DTC) model of GAP.

References: Bartók & Csányi, "Gaussian approximation potentials: a brief tutorial introduction",
Int. J. Quantum Chem. 115, 1051 (2015), eqs. 18-27 (sparsification, derivative observations);
Quiñonero-Candela & Rasmussen, JMLR 6, 1939 (2005), sec. 5 (DTC/projected process, eq. 20-21
predictive variance); Mahoney & Drineas, PNAS 106, 697 (2009) (CUR leverage sampling).

Model. M representative atomic environments x_m (scaled features, grouped by element) carry
weights w_m; the local energy of atom i is e_i = sum_{m: Z_m = Z_i} k(x_i, x_m) w_m (rbf kernel
k(x, y) = exp(-|x - y|^2 / (2 sigma^2))), and for a structure s

    E_s = E_ref(s) + sum_{i in s} e_i                         (energy row  phi_E[s, m])
    F_ac = -dE/dR_ac = sum_{i in s} k_im (x_i - x_m) . (dx_i/dR_ac) / sigma^2
                                                              (force row   phi_F[(a, c), m])

where dx_i/dR_ac, the derivative of the featurizer (and scaler) with respect to atom a's
coordinate c, comes from forward-mode autograd: one Jacobian-vector product per local
coordinate (3 n_max tangents for a block of structures; structures are independent, so one
tangent moves atom a of every structure at once). Nothing is differenced numerically.

Prior and noise. w ~ N(0, delta^2 K_MM^-1) (u = K_MM w ~ N(0, delta^2 K_MM): the projected
process), energy labels with noise variance sigma_E^2 n_s (``energy_noise`` is per atom, as GAP's
``sigma_per_atom``), force components with sigma_F^2. With Phi the stacked rows and Lambda the
noise, the posterior of w has precision and mean

    A = K_MM / delta^2 + Phi^T Lambda^-1 Phi,     w = A^-1 Phi^T Lambda^-1 y,         (M x M)

so only M x M matrices are formed: Phi^T Lambda^-1 Phi and Phi^T Lambda^-1 y are accumulated over
blocks of structures (memory bounded by the block, time linear in the number of structures) and
A is Cholesky-factorised in float64. A new quantity with row phi* (energy or force component)
has the DTC predictive variance

    var* = delta^2 (k** - phi* K_MM^-1 phi*^T) + phi* A^-1 phi*^T + noise,

with k** its prior variance: sum_{i, j in s} k(x_i, x_j) for an energy, and for a force
component sum_{i, j} (dx_i)^T [d^2 k / dx dy] (dx_j) with
d^2 k / dx dy = k / sigma^2 (I - (x - y)(x - y)^T / sigma^2).

The log marginal likelihood of the labels, y ~ N(0, delta^2 (Q + D)), Q = Phi K_MM^-1 Phi^T,
D = Lambda / delta^2, is evaluated from the same M x M statistics with the matrix determinant
lemma and Woodbury's identity (:func:`log_marginal_likelihood`).

The representatives and the design rows Phi (with k**) are built by
:mod:`atomistic.models.sparse_design`; their names stay importable from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from atomistic import interrupt
from atomistic.models.base import AtomicData
from atomistic.models.kernels import DEFAULT_BUDGET
from atomistic.models.sparse_design import (
    JITTER,
    SPARSE_METHODS,
    Design,
    cur_selection,
    design_blocks,
    farthest_point_sampling,
    rbf_kernel_mm,
    select_sparse,
)

__all__ = [
    "JITTER",
    "SPARSE_METHODS",
    "Design",
    "NormalEquations",
    "accumulate",
    "cur_selection",
    "design_blocks",
    "farthest_point_sampling",
    "log_marginal_likelihood",
    "optimize_noise",
    "rbf_kernel_mm",
    "select_sparse",
    "solve",
]


# -- normal equations --------------------------------------------------------------------------
@dataclass
class NormalEquations:
    """The M x M statistics of a training set (unit noise, unit amplitude), whitened by the
    Cholesky factor of K_MM = L_K L_K^T (with JITTER):

    Gw_E = W_E W_E^T, W_E = L_K^-1 Phi_E^T N^-1/2;  cw_E = L_K^-1 Phi_E^T N^-1 y_E;
    Gw_F = W_F W_F^T, W_F = L_K^-1 Phi_F^T;         cw_F = L_K^-1 Phi_F^T f;

    yy_E = y_E^T N^-1 y_E, yy_F = f^T f (N = diag(n_s), atoms per structure); n_E structures,
    n_F force components, log_counts = sum_s log n_s. Accumulating whitened rows keeps every Gw
    positive semi-definite to rounding (forming Phi^T Phi first and whitening afterwards does
    not: K_MM is often ill-conditioned and the noise small), so that
    A = L_K (I / delta^2 + Gw_E / sigma_E^2 + Gw_F / sigma_F^2) L_K^T is factorised through a
    matrix whose eigenvalues are >= 1 / delta^2."""

    K_MM: np.ndarray
    L_K: np.ndarray
    Gw_E: np.ndarray
    cw_E: np.ndarray
    yy_E: float
    n_E: int
    log_counts: float
    Gw_F: np.ndarray
    cw_F: np.ndarray
    yy_F: float
    n_F: int


def accumulate(
    data: AtomicData,
    y: np.ndarray,
    XM: Tensor,
    numbers_M: Tensor,
    sigma: float,
    forces: bool = True,
    budget: int = DEFAULT_BUDGET,
) -> NormalEquations:
    """Sum the statistics block by block. y (S,) eV targets (energies less the baseline);
    force labels from ``data.dataset.forces`` (n_atoms, 3) eV/Å when ``forces``."""
    ds = data.dataset
    M = int(XM.shape[0])
    if forces and ds.forces is None:
        raise ValueError("fitting on forces needs a dataset with forces")
    counts = np.diff(ds.offsets).astype(np.float64)
    with torch.no_grad():
        K_MM = rbf_kernel_mm(XM, numbers_M, sigma).numpy()
    L = scipy.linalg.cholesky(K_MM, lower=True)
    Gw_E, Gw_F = np.zeros((M, M)), np.zeros((M, M))
    cw_E, cw_F = np.zeros(M), np.zeros(M)
    yy_F, n_F = 0.0, 0
    with torch.no_grad():
        for d in design_blocks(data, XM, numbers_M, sigma, forces=forces, budget=budget):
            r = 1.0 / np.sqrt(counts[d.idx])
            W = scipy.linalg.solve_triangular(L, (d.KE.numpy() * r[:, None]).T, lower=True)
            Gw_E += W @ W.T
            cw_E += W @ (y[d.idx] * r)
            if forces and d.KF is not None:
                W = scipy.linalg.solve_triangular(L, d.KF.numpy().T, lower=True)
                f = np.asarray(ds.forces, dtype=np.float64)[d.rows].reshape(-1)
                Gw_F += W @ W.T
                cw_F += W @ f
                yy_F += float(f @ f)
                n_F += f.size
    return NormalEquations(
        K_MM=K_MM,
        L_K=L,
        Gw_E=0.5 * (Gw_E + Gw_E.T),
        cw_E=cw_E,
        yy_E=float((y**2 / counts).sum()),
        n_E=len(y),
        log_counts=float(np.log(counts).sum()),
        Gw_F=0.5 * (Gw_F + Gw_F.T),
        cw_F=cw_F,
        yy_F=yy_F,
        n_F=n_F,
    )


def solve(
    ne: NormalEquations, energy_noise: float, force_noise: float, amplitude: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean weights w (M,) and the lower Cholesky factor L_C (M, M) of
    C = I + delta^2 (Gw_E / sigma_E^2 + Gw_F / sigma_F^2), so that the precision is
    A = L_K C L_K^T / delta^2 (module docstring; L_K = ``ne.L_K``) and
    w = delta^2 L_K^-T C^-1 (cw_E / sigma_E^2 + cw_F / sigma_F^2)."""
    d2 = amplitude**2
    C = ne.Gw_E * (d2 / energy_noise**2)
    rhs = ne.cw_E / energy_noise**2
    if ne.n_F:
        C = C + ne.Gw_F * (d2 / force_noise**2)
        rhs = rhs + ne.cw_F / force_noise**2
    C[np.diag_indices_from(C)] += 1.0
    try:
        L = scipy.linalg.cholesky(C, lower=True, check_finite=True)
    except np.linalg.LinAlgError as exc:
        raise np.linalg.LinAlgError(
            "the sparse normal equations are not positive definite; raise energy_noise / "
            "force_noise or lower n_sparse"
        ) from exc
    u = d2 * scipy.linalg.cho_solve((L, True), rhs)
    return scipy.linalg.solve_triangular(ne.L_K, u, lower=True, trans="T"), L


def log_marginal_likelihood(
    ne: NormalEquations, log_rE2: float, log_rF2: float, amplitude: float | None = None
) -> tuple[float, np.ndarray, float]:
    """log p(y) of the DTC model and its gradient with respect to (log r_E^2, log r_F^2), where
    r = noise / amplitude; with ``amplitude=None`` delta^2 is profiled out (delta^2 = y^T (Q +
    D)^-1 y / n; the gradient is then that of the profiled likelihood). Returns (lml, grad,
    delta^2).

    In whitened form (C = I + Gw_E / r_E^2 + Gw_F / r_F^2, cw = cw_E / r_E^2 + cw_F / r_F^2):
    log|Q + D| = log|D| + log|C|;  y^T (Q + D)^-1 y = y^T D^-1 y - cw^T C^-1 cw.
    """
    sE, sF = math.exp(-log_rE2), math.exp(-log_rF2) if ne.n_F else 0.0
    n = ne.n_E + ne.n_F
    C = sE * ne.Gw_E + sF * ne.Gw_F
    C[np.diag_indices_from(C)] += 1.0
    L = scipy.linalg.cholesky(C, lower=True)
    c = sE * ne.cw_E + sF * ne.cw_F
    v = scipy.linalg.cho_solve((L, True), c)
    quad = sE * ne.yy_E + sF * ne.yy_F - float(c @ v)
    logdet = (
        ne.n_E * log_rE2
        + ne.log_counts
        + (ne.n_F * log_rF2 if ne.n_F else 0.0)
        + 2.0 * np.log(np.diag(L)).sum()
    )
    Cinv = scipy.linalg.cho_solve((L, True), np.eye(len(C)))
    grads = []
    groups = ((sE, ne.Gw_E, ne.cw_E, ne.yy_E, ne.n_E), (sF, ne.Gw_F, ne.cw_F, ne.yy_F, ne.n_F))
    for s, G, cc, yy, nn in groups:
        dlogdet = nn - s * float(np.sum(Cinv * G))
        dquad = -s * yy + 2.0 * s * float(cc @ v) - s * float(v @ G @ v)
        grads.append((dlogdet, dquad))
    if amplitude is None:
        d2 = quad / n
        lml = -0.5 * n * math.log(2 * math.pi * d2) - 0.5 * logdet - 0.5 * n
        grad = np.array([-0.5 * n * dq / quad - 0.5 * dl for dl, dq in grads])
    else:
        d2 = amplitude**2
        lml = -0.5 * n * math.log(2 * math.pi * d2) - 0.5 * logdet - 0.5 * quad / d2
        grad = np.array([-0.5 * dq / d2 - 0.5 * dl for dl, dq in grads])
    if not ne.n_F:
        grad[1] = 0.0
    return float(lml), grad, float(d2)


def optimize_noise(
    ne: NormalEquations, energy_ratio: float, force_ratio: float, grid: bool = True
) -> tuple[float, float, float, float]:
    """Maximise the profiled log marginal likelihood over the noise-to-amplitude ratios
    (r_E, r_F) by L-BFGS-B, from the best point of a 3 x 3 grid around the given ratios
    (``grid``) or from the given ratios. Returns (r_E, r_F, delta^2, lml)."""
    import scipy.optimize

    n = ne.n_E + ne.n_F

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:  # per label: a first step of order 1
        interrupt.check()  # a stop request: at the next likelihood evaluation
        try:
            lml, g, _ = log_marginal_likelihood(ne, theta[0], theta[1])
        except np.linalg.LinAlgError:
            return 1e30, np.zeros(2)
        return -lml / n, -g / n

    start = np.array([2 * math.log(energy_ratio), 2 * math.log(force_ratio)])
    bounds = [(x - 9.2, x + 9.2) for x in start]  # ratios within 100x of the start
    # the likelihood can be multimodal: start from the best of a coarse grid (factors of e)
    steps_F = (-2.0, 0.0, 2.0) if ne.n_F else (0.0,)
    starts = [start + np.array([a, b]) for a in (-2.0, 0.0, 2.0) for b in steps_F]
    x0 = min(starts, key=lambda x: f(x)[0]) if grid else start
    res = scipy.optimize.minimize(
        f, x0, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 100}
    )
    lml, _, d2 = log_marginal_likelihood(ne, res.x[0], res.x[1])
    return math.exp(0.5 * res.x[0]), math.exp(0.5 * res.x[1]), d2, lml
