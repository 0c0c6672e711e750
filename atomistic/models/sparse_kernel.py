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
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.linalg
import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor

from atomistic import interrupt
from atomistic.models.base import AtomicData, NeighborCache, scaled_features_torch

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
    d2 = _sqdist(X, X)  # shape (M, M)
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


def _sqdist(A: Tensor, B: Tensor) -> Tensor:
    return ((A * A).sum(1, keepdim=True) + (B * B).sum(1) - 2.0 * A @ B.T).clamp_min(0.0)


def _pairs(numbers: Tensor, batch: Tensor) -> tuple[Tensor, Tensor]:
    """All ordered pairs (i, j), i = j included, of like atoms within one structure."""
    same = (batch[:, None] == batch[None, :]) & (numbers[:, None] == numbers[None, :])
    i, j = torch.nonzero(same, as_tuple=True)
    return i, j


def _energy_rows(X, numbers, batch, B, XM, blocks, sigma):
    KE = X.new_zeros((B, XM.shape[0]))
    ks = []
    for ia, c0, c1 in blocks:
        k = torch.exp(-_sqdist(X[ia], XM[c0:c1]) / (2.0 * sigma**2))  # shape (n_z, M_z)
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
    budget: int = 1 << 22,
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
    inv_s2 = 1.0 / sigma**2
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
        b: dict[str, Any] = cache.batch(idx)
        pos: Tensor = b["positions"].detach()
        z, batch, n = b["numbers"], b["batch"], int(pos.shape[0])
        starts = np.repeat(ds.offsets[idx] - ds.offsets[idx[0]], counts[idx])
        local = torch.arange(n) - torch.as_tensor(starts)  # index of an atom in its structure
        blocks = _element_blocks(z, numbers_M)
        KF = pos.new_zeros((n, 3, M))
        kFF = pos.new_zeros((n, 3))
        # the features, energy rows and like-atom pairs come with the first tangent's pass
        X: Tensor | None = None
        KE = pos.new_zeros((len(idx), M))
        ks: list[Tensor] = []
        pairs = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        kij = pos.new_zeros(0)
        for a in range(int(counts[idx].max())):
            interrupt.check()  # and at the next atom: 3 featurizer passes each
            moved = torch.nonzero(local == a).squeeze(1)  # atom a of every structure, shape (B',)
            for c in range(3):
                tangent = torch.zeros_like(pos)
                tangent[moved, c] = 1.0
                with fwAD.dual_level():
                    dual = fwAD.make_dual(pos, tangent)
                    out = scaled_features_torch(featurizer, scaler, {**b, "positions": dual})
                    Xp, dX = fwAD.unpack_dual(out)
                Xp = Xp.detach()
                dX = torch.zeros_like(Xp) if dX is None else dX.detach()
                if X is None:
                    X = Xp
                    KE, ks = _energy_rows(X, z, batch, len(idx), XM, blocks, sigma)
                    if prior:
                        pairs = _pairs(z, batch)
                        kij = torch.exp(-((X[pairs[0]] - X[pairs[1]]) ** 2).sum(1) * 0.5 * inv_s2)
                p = (X * dX).sum(1)  # x_i . dx_i, shape (n,)
                seg = X.new_zeros((len(idx), M))
                for (ia, c0, c1), k in zip(blocks, ks, strict=True):
                    q = dX[ia] @ XM[c0:c1].T  # dx_i . x_m, shape (n_z, M_z)
                    seg[:, c0:c1].index_add_(0, batch[ia], k * (p[ia, None] - q) * inv_s2)
                KF[moved, c] = seg[batch[moved]]
                if prior:
                    i, j = pairs
                    dd = (dX[i] * dX[j]).sum(1)
                    u = ((X[i] - X[j]) * dX[i]).sum(1)
                    v = ((X[i] - X[j]) * dX[j]).sum(1)
                    val = kij * inv_s2 * (dd - u * v * inv_s2)
                    kFF[moved, c] = X.new_zeros(len(idx)).index_add_(0, batch[i], val)[batch[moved]]
        d = Design(idx, b["rows"].numpy(), KE, KF.reshape(3 * n, M))
        if prior:
            d.kEE = pos.new_zeros(len(idx)).index_add_(0, batch[pairs[0]], kij)
            d.kFF = kFF.reshape(-1)
        yield d


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
    budget: int = 1 << 22,
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
