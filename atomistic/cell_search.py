"""Neighbour search in small periodic cells by testing every pair of atoms against every
periodic image that can be within the cutoff (numba).

A cell-list search (vesin, :mod:`atomistic.neighbors`) bins atoms into boxes of the cutoff's
size; a cell of 108 fcc Cu atoms (10.8 Å) at R_c = 6.5 Å is one box, and the search tests
108 x 108 x 27 candidates in ~2 ms. Testing each pair only against the images its fractional
separation allows (2-3 per direction here) costs a fraction of that; above a few hundred atoms
per cell the cell list wins and :mod:`atomistic.neighbors` uses it.

Convention as :mod:`atomistic.neighbors`: the vector from ``i`` to ``j`` is
``positions[j] - positions[i] + shifts @ cell``; pairs within ``cutoff`` (inclusive), sorted by
``i``, images of ``i`` itself included.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

__all__ = ["periodic_pairs"]


def periodic_pairs(
    positions: np.ndarray, cell: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i, j, shift) of a cell periodic in all three directions within ``cutoff``.

    Parameters
    ----------
    positions
        (n, 3) Å, inside the cell or not.
    cell
        (3, 3) lattice vectors as rows, Å, non-singular.
    cutoff
        radius, Å.

    Returns
    -------
    tuple
        ``i`` (pairs,), ``j`` (pairs,), ``shifts`` (pairs, 3), int64, sorted by ``i`` then ``j``.
    """
    inverse = np.linalg.inv(cell)
    fractional = positions @ inverse
    wrap = np.floor(fractional)
    fractional -= wrap
    # |fractional difference + n| <= cutoff / (spacing of the lattice planes) along each axis
    reach = cutoff * np.linalg.norm(inverse, axis=0)
    estimate = max(16, int(len(positions) ** 2 * np.prod(2 * reach + 1)))
    i, j, shifts, count = _pairs(
        fractional @ cell, fractional, cell, reach, float(cutoff), estimate
    )
    i, j, shifts = i[:count], j[:count], shifts[:count]
    # the search ran on wrapped positions w = r - wrap @ cell: shift = shift' + wrap_i - wrap_j
    shifts += (wrap[i] - wrap[j]).astype(np.int64)
    return i, j, shifts


@njit(cache=True, nogil=True)
def _pairs(wrapped, fractional, cell, reach, cutoff, capacity):  # pragma: no cover - compiled
    """(i, j, shifts, count): pairs of wrapped positions within cutoff, arrays grown as needed."""
    n = wrapped.shape[0]
    rc2 = cutoff * cutoff
    i_out = np.empty(capacity, np.int64)
    j_out = np.empty(capacity, np.int64)
    s_out = np.empty((capacity, 3), np.int64)
    count = 0
    for a in range(n):
        for b in range(n):
            d0 = wrapped[b, 0] - wrapped[a, 0]
            d1 = wrapped[b, 1] - wrapped[a, 1]
            d2 = wrapped[b, 2] - wrapped[a, 2]
            lo0 = math.ceil(-reach[0] - (fractional[b, 0] - fractional[a, 0]))
            hi0 = math.floor(reach[0] - (fractional[b, 0] - fractional[a, 0]))
            lo1 = math.ceil(-reach[1] - (fractional[b, 1] - fractional[a, 1]))
            hi1 = math.floor(reach[1] - (fractional[b, 1] - fractional[a, 1]))
            lo2 = math.ceil(-reach[2] - (fractional[b, 2] - fractional[a, 2]))
            hi2 = math.floor(reach[2] - (fractional[b, 2] - fractional[a, 2]))
            for n0 in range(lo0, hi0 + 1):
                for n1 in range(lo1, hi1 + 1):
                    e0 = d0 + n0 * cell[0, 0] + n1 * cell[1, 0]
                    e1 = d1 + n0 * cell[0, 1] + n1 * cell[1, 1]
                    e2 = d2 + n0 * cell[0, 2] + n1 * cell[1, 2]
                    for n2 in range(lo2, hi2 + 1):
                        if a == b and n0 == 0 and n1 == 0 and n2 == 0:
                            continue
                        v0 = e0 + n2 * cell[2, 0]
                        v1 = e1 + n2 * cell[2, 1]
                        v2 = e2 + n2 * cell[2, 2]
                        if v0 * v0 + v1 * v1 + v2 * v2 <= rc2:
                            if count == i_out.shape[0]:
                                i_out = _grown(i_out)
                                j_out = _grown(j_out)
                                s_out = _grown(s_out)
                            i_out[count], j_out[count] = a, b
                            s_out[count, 0], s_out[count, 1], s_out[count, 2] = n0, n1, n2
                            count += 1
    return i_out, j_out, s_out, count


@njit(cache=True, nogil=True)
def _grown(x):  # pragma: no cover - compiled
    out = np.empty((2 * x.shape[0],) + x.shape[1:], x.dtype)
    out[: x.shape[0]] = x
    return out
