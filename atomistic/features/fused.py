"""Fused CPU kernels for features without derivatives (numba).

:meth:`Featurizer.forward` evaluates a term as a sequence of torch operations, each one a pass
over a (pairs or triplets) x columns temporary; that is what autograd and the GPU need. When only
the features are wanted on the CPU (:meth:`Featurizer.featurize_arrays`, the pipeline's
featurization stage), the kernels here visit each pair and each triplet once and add its
contribution to the output row of its centre, with nothing but a few scalars in flight: the same
sums, in a different order (the results agree to rounding, ~1e-15 relative; the tests compare
both paths with each other and with DScribe and TorchANI).

Supported: the terms of this package as they are (:class:`BehlerRadial`, :class:`ANIRadial`,
:class:`BehlerAngular` with integer zetas, G3 and G4, :class:`ANIAngular`) with the
:class:`CosineCutoff`, element-resolved or weighted. A subclass or another cutoff takes the torch
path (:func:`supports`). Formulas: docs/features.md; the two paths share the term constants (the
buffers of the term modules), so they cannot drift apart silently.

The kernels are compiled once per machine (``cache=True``: numba keeps the machine code next to
this file, or in its user cache directory when that is not writable) and release the GIL, so
threads of one process featurize in parallel.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from numba import njit

from .cutoff import CosineCutoff
from .terms import ANIAngular, ANIRadial, BehlerAngular, BehlerRadial, RadialTerm

if TYPE_CHECKING:
    from ..neighbors import NeighborList
    from .base import Featurizer

__all__ = ["supports", "features"]

_jit = njit(cache=True, nogil=True, error_model="numpy")


def supports(featurizer: Featurizer) -> bool:
    """Whether :func:`features` computes this featurizer's columns (else: the torch path)."""
    radial, angular = featurizer.radial, featurizer.angular
    if type(radial) not in (BehlerRadial, ANIRadial) or type(radial.cutoff_fn) is not CosineCutoff:
        return False
    if angular is None:
        return True
    if type(angular.cutoff_fn) is not CosineCutoff:
        return False
    if type(angular) is BehlerAngular:
        return angular.integer
    return type(angular) is ANIAngular


def features(
    featurizer: Featurizer,
    numbers: np.ndarray,
    positions: np.ndarray,
    cells: np.ndarray,
    batch: np.ndarray,
    nl: NeighborList,
) -> np.ndarray:
    """The columns of ``featurizer.forward`` for a flat batch, (N, n_features) float64.

    Parameters
    ----------
    featurizer
        a featurizer for which :func:`supports` is true, with its elements fixed.
    numbers
        (N,) atomic numbers.
    positions
        (N, 3) Å.
    cells
        (S, 3, 3) Å.
    batch
        (N,) structure of each atom.
    nl
        its neighbour list (numpy, sorted by centre).

    Returns
    -------
    numpy.ndarray
        (N, n_features) float64.
    """
    n_atoms = len(numbers)
    species_bin = featurizer.species_bin.cpu().numpy()
    bins = species_bin[numbers]
    i = np.ascontiguousarray(nl.i, dtype=np.int64)
    j = np.ascontiguousarray(nl.j, dtype=np.int64)
    vectors, distances = _pair_geometry(
        i, j, np.ascontiguousarray(nl.shifts, dtype=np.int64), positions, cells, batch
    )
    weights = numbers.astype(np.float64)[j] if featurizer.weighted else np.ones(len(j))
    nb, radial = featurizer.n_bins, featurizer.radial
    out = np.zeros((n_atoms, featurizer.n_features))
    exponent, shift, scale = _radial_constants(radial)
    _radial_sums(
        i, distances, bins[j] * len(exponent), weights, exponent, shift, scale, radial.cutoff, out
    )
    angular = featurizer.angular
    if angular is None:
        return out
    rc = angular.cutoff
    keep = np.flatnonzero(distances < rc)
    i, j, vectors, distances, weights = (
        i[keep],
        j[keep],
        vectors[keep],
        distances[keep],
        weights[keep],
    )
    unit = vectors / distances[:, None]
    counts = np.bincount(i, minlength=n_atoms)
    ends = np.cumsum(counts)
    starts = ends - counts
    pair_bin = featurizer.pair_bin.cpu().numpy()
    n_pairs = featurizer.n_pairs
    columns = out[:, radial.n_features * nb :]
    if isinstance(angular, ANIAngular):
        acc = np.zeros((n_atoms, n_pairs, len(angular.shifts), len(angular.sections)))
        _ani_triplets(
            starts,
            ends,
            unit,
            distances,
            weights,
            bins[j],
            pair_bin,
            rc,
            angular.eta,
            angular.zeta,
            np.asarray(angular.shifts),
            angular.cos_s.numpy(),
            angular.sin_s.numpy(),
            acc,
        )
        columns[:] = acc.reshape(n_atoms, -1)
        return out
    assert isinstance(angular, BehlerAngular)
    exponent = angular.exponent.numpy()
    # g(R_ij) = exp(-eta R_ij^2) f_c(R_ij) (times Z_j for wACSF), one column per eta
    c = np.cos(distances * (0.5 * math.pi / rc))
    factors = np.exp(-exponent * (distances * distances)[:, None]) * (c * c * weights)[:, None]
    n_power = angular.max_power + 1
    if angular.separable and _moments_pay(len(i) / max(n_atoms, 1), angular, n_pairs):
        n_mono = angular.mono_degree.shape[0]
        total = np.zeros((n_atoms * nb, len(exponent), n_mono + 1))
        _moments(i * nb + bins[j], unit, factors, angular.max_power, total)
        sums = _moment_products(total.reshape(n_atoms, nb, len(exponent), -1), angular)
    else:
        sums = np.zeros((n_atoms, n_pairs, len(exponent), n_power))
        _behler_triplets(
            starts,
            ends,
            unit,
            distances,
            factors,
            bins[j],
            pair_bin,
            angular.include_jk,
            exponent,
            rc,
            sums,
        )
    columns[:] = (sums @ angular.coef.numpy()).reshape(n_atoms, -1)
    return out


def _moments_pay(k: float, angular: BehlerAngular, n_bin_pairs: int) -> bool:
    """Whether per-atom moments beat explicit triplets in these kernels, for k neighbours per
    atom: triplets cost ~k (k - 1) / 2 visits, moments ~M (k + n_bin_pairs) for M monomials, a
    visit ~0.8x a triplet's (measured on Cu at 4 and 6.5 Å, k = 18 and 86, M = 35: triplets 1.7x
    faster at k = 18, moments 1.6x faster at k = 86)."""
    n_mono = angular.mono_degree.shape[0]
    return k * (k - 1.0) > 1.6 * n_mono * (k + n_bin_pairs)


def _radial_constants(radial: RadialTerm) -> tuple[np.ndarray, np.ndarray, float]:
    """(exponent, shift, scale) of exp(-exponent (R - shift)^2) * scale, one entry per column."""
    if isinstance(radial, ANIRadial):
        return np.full(len(radial.shifts), radial.eta), radial.shift.numpy(), 0.25
    assert isinstance(radial, BehlerRadial)
    return radial.exponent.numpy(), radial.shift.numpy(), 1.0


def _moment_products(total: np.ndarray, angular: BehlerAngular) -> np.ndarray:
    """Per-atom moments (N, nb, a, M + 1) -> triplet sums by degree (N, n_pairs, a, P):
    sum_{j<k} g_j g_k (u_j . u_k)^p = 1/2 (|sum_j g_j u_j^(x)p|^2 - sum_j g_j^2) within a bin."""
    nb = total.shape[1]
    left, right = np.triu_indices(nb)
    tl, tr = total[:, left], total[:, right]
    sums = (tl[..., :-1] * tr[..., :-1]) @ angular.mono_degree.numpy()
    same = left == right
    sums[:, same] = 0.5 * (sums[:, same] - tl[:, same][..., -1:])
    return sums


@_jit
def _pair_geometry(i, j, shifts, positions, cells, batch):  # pragma: no cover - compiled
    """r_ij = r_j - r_i + shifts @ cell (P, 3) and R_ij (P,)."""
    n = i.shape[0]
    vectors = np.empty((n, 3))
    distances = np.empty(n)
    for p in range(n):
        a, b = i[p], j[p]
        cell = cells[batch[a]]
        s0, s1, s2 = shifts[p, 0], shifts[p, 1], shifts[p, 2]
        sq = 0.0
        for x in range(3):
            v = (
                positions[b, x]
                - positions[a, x]
                + (s0 * cell[0, x] + s1 * cell[1, x] + s2 * cell[2, x])
            )
            vectors[p, x] = v
            sq += v * v
        distances[p] = math.sqrt(sq)
    return vectors, distances


@_jit
def _radial_sums(
    i, distances, col0, weights, exponent, shift, scale, cutoff, out
):  # pragma: no cover
    """out[i, col0 + f] += scale w exp(-exponent_f (R - shift_f)^2) f_c(R), R < cutoff."""
    k = 0.5 * math.pi / cutoff
    for p in range(i.shape[0]):
        r = distances[p]
        if r >= cutoff:
            continue
        c = math.cos(r * k)
        fc = c * c * weights[p]
        row, c0 = i[p], col0[p]
        for f in range(exponent.shape[0]):
            d = r - shift[f]
            out[row, c0 + f] += scale * math.exp(-exponent[f] * d * d) * fc


@_jit
def _behler_triplets(
    starts, ends, unit, distances, factors, bins, pair_bin, include_jk, exponent, cutoff, sums
):  # pragma: no cover - compiled
    """sums[i, pair, a, p] += R_a cos^p over j < k (BehlerAngular, integer zetas)."""
    n_pairs, n_eta, n_power = sums.shape[1], factors.shape[1], sums.shape[3]
    rc2, k2 = cutoff * cutoff, (0.5 * math.pi / cutoff) ** 2
    local = np.zeros((n_pairs, n_eta, n_power))  # one centre's sums
    radial = np.empty(n_eta)
    for atom in range(starts.shape[0]):
        local[:] = 0.0
        end = ends[atom]
        for p in range(starts[atom], end):
            ux, uy, uz, rj, bj = unit[p, 0], unit[p, 1], unit[p, 2], distances[p], bins[p]
            for q in range(p + 1, end):
                cos = ux * unit[q, 0] + uy * unit[q, 1] + uz * unit[q, 2]
                if include_jk:
                    rk = distances[q]
                    r_jk2 = rj * rj + rk * rk - 2.0 * (rj * rk) * cos
                    if r_jk2 >= rc2:
                        continue
                    c = _cos_sqrt(k2 * max(r_jk2, 0.0))
                    f_jk = c * c
                    for a in range(n_eta):
                        decay = math.exp(-exponent[a] * r_jk2) * f_jk
                        radial[a] = factors[p, a] * factors[q, a] * decay
                else:
                    for a in range(n_eta):
                        radial[a] = factors[p, a] * factors[q, a]
                block = pair_bin[bj, bins[q]]
                for a in range(n_eta):
                    w = radial[a]
                    local[block, a, 0] += w
                    for power in range(1, n_power):
                        w *= cos
                        local[block, a, power] += w
        sums[atom] += local


# cos(sqrt(x)) = sum_n (-1)^n x^n / (2n)!, x <= (pi/2)^2 for a distance within the cutoff:
# the twelfth term is below 1e-19, so the series is exact in float64 there (a square root and a
# cosine per triplet cost about twice as much)
_COS_SQRT = np.array([(-1.0) ** n / math.factorial(2 * n) for n in range(12)])


@_jit
def _cos_sqrt(x):  # pragma: no cover - compiled
    """cos(sqrt(x)) for 0 <= x <= (pi/2)^2 by its Taylor series in x (Horner)."""
    c = _COS_SQRT[11]
    for n in range(10, -1, -1):
        c = c * x + _COS_SQRT[n]
    return c


@_jit
def _moments(key, unit, factors, max_power, total):  # pragma: no cover - compiled
    """total[key, a, m] += g_a x^a y^b z^c (monomials of degree <= max_power, in the order of
    BehlerAngular.mono_exps), total[key, a, M] += g_a^2."""
    n_mono = total.shape[2] - 1
    mono = np.empty(n_mono)
    for p in range(key.shape[0]):
        x, y, z = unit[p, 0], unit[p, 1], unit[p, 2]
        mono[0] = 1.0
        p0, p1 = 0, 1  # rows of the previous degree
        for degree in range(1, max_power + 1):
            r = p1
            for m in range(p0, p1):
                mono[r] = mono[m] * x
                r += 1
            for m in range(p1 - degree, p1):
                mono[r] = mono[m] * y
                r += 1
            mono[r] = mono[p1 - 1] * z
            p0, p1 = p1, r + 1
        row = key[p]
        for a in range(factors.shape[1]):
            g = factors[p, a]
            for m in range(n_mono):
                total[row, a, m] += g * mono[m]
            total[row, a, n_mono] += g * g


@_jit
def _ani_triplets(
    starts,
    ends,
    unit,
    distances,
    weights,
    bins,
    pair_bin,
    cutoff,
    eta,
    zeta,
    shifts,
    cos_s,
    sin_s,
    acc,
):  # pragma: no cover - compiled
    """acc[i, pair, r, z] += 2 f_c f_c exp(-eta ((R_ij + R_ik)/2 - R_s)^2) ((1 + cos(theta' -
    theta_s)) / 2)^zeta over j < k (ANIAngular, as TorchANI)."""
    n_pairs, n_shift, n_section = acc.shape[1], shifts.shape[0], cos_s.shape[0]
    k = 0.5 * math.pi / cutoff
    integer = zeta == math.floor(zeta) and zeta >= 0
    power = int(zeta) if integer else 0
    half_cos, half_sin = 0.5 * cos_s, 0.5 * sin_s
    twice_shift, scale = 2.0 * shifts, -0.25 * eta
    ang = np.empty(n_section)
    local = np.zeros((n_pairs, n_shift, n_section))  # one centre's sums
    fc = np.empty(distances.shape[0])
    for p in range(distances.shape[0]):
        c = math.cos(distances[p] * k)
        fc[p] = c * c * weights[p]
    for atom in range(starts.shape[0]):
        local[:] = 0.0
        end = ends[atom]
        for p in range(starts[atom], end):
            ux, uy, uz, rj, fj, bj = (
                unit[p, 0],
                unit[p, 1],
                unit[p, 2],
                distances[p],
                fc[p],
                bins[p],
            )
            for q in range(p + 1, end):
                c = 0.95 * (ux * unit[q, 0] + uy * unit[q, 1] + uz * unit[q, 2])
                s = math.sqrt(1.0 - c * c)
                for z in range(n_section):
                    half = c * half_cos[z] + s * half_sin[z] + 0.5
                    ang[z] = _ipow(half, power) if integer else half**zeta
                gg = 2.0 * (fj * fc[q])
                block = pair_bin[bj, bins[q]]
                rsum = rj + distances[q]
                for r in range(n_shift):
                    d = rsum - twice_shift[r]
                    rad = gg * math.exp((d * d) * scale)
                    for z in range(n_section):
                        local[block, r, z] += rad * ang[z]
        acc[atom] += local


@_jit
def _ipow(x, n):  # pragma: no cover - compiled
    """x**n for an integer n >= 0 by repeated squaring, as terms._ipow."""
    result = 1.0
    first = True
    base = x
    while n:
        if n & 1:
            result = base if first else result * base
            first = False
        n >>= 1
        if n:
            base = base * base
    return result
