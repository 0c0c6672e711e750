"""Three-body sums: every unordered pair {j, k} of neighbours of each centre i, once.

An angular term (:class:`atomistic.features.terms.AngularTerm`) evaluates its summand on a
:class:`Triplets` object; the functions here enumerate the triplets and sum the summand per centre
and per unordered pair of neighbour elements. Two layouts, the same numbers:

* **sparse** (:func:`sparse_sums`, :class:`SparseTriplets`): one entry per triplet, enumerated
  from the pair list (sorted by centre) by index arithmetic, without padding, as TorchANI's
  ``triple_by_molecule``; per-pair values (unit vectors, distances, cutoff functions, radial
  exponentials) are computed once per pair and gathered; triplets a term marks as zero
  (``jk_cutoff``: f_c(R_jk) = 0) are dropped first; sums by ``index_add_``. Cheapest when
  gradients are needed (autograd only sees the surviving triplets) and for ragged neighbour counts.
* **blocks** (:func:`block_sums`, :class:`BlockTriplets`): neighbours padded to m slots (m odd),
  slot j paired with slots (j + s) mod m, s = 1 .. (m - 1) / 2, which lists each unordered pair of
  slots once; k-side values are strided views, so nothing is gathered. Cheapest without gradients
  when neighbour counts are uniform (bulk crystals at large cutoffs); sums by ``bmm``.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch
from torch import Tensor

__all__ = ["Triplets", "SparseTriplets", "BlockTriplets", "sparse_sums", "block_sums"]

# Chunks of centres are sized by a memory model, not an atom count: a term makes some twenty
# passes over each (triplets x columns) temporary, so one temporary should stay in a core's L2
# cache (1-2 MiB): CHUNK_BYTES per float64 temporary. Dense Cu at 6.5 Å (one thread): 2 MiB
# chunks run 1.5x faster than 32 MiB ones and repeat within 1.25x (32 MiB: up to 1.7x, fresh
# pages from the allocator at every call).
CHUNK_BYTES = 1 << 21
# elements of a (triplets x columns) array per chunk of centres
TRIPLET_BUDGET = CHUNK_BYTES // 8


class Triplets:
    """Geometry of a set of triplets (i; j, k); subclasses supply the j- and k-side values of a
    per-pair array (:meth:`sides`), in shapes that broadcast to the triplet shape S
    (sparse: (T,); blocks: (n, m, h)). Attributes are computed on first use.

    Parameters
    ----------
    unit
        (3, ...) unit vectors r_ij / R_ij, one row per Cartesian component.
    distances
        (...) R_ij, Å.
    factors
        (..., a) the angular term's per-neighbour factor g(R_ij).
    """

    def __init__(self, unit: Tensor, distances: Tensor, factors: Tensor) -> None:
        self.unit, self.distances, self.factors = unit, distances, factors

    def sides(self, x: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:  # pragma: no cover
        """(x_j, x_k) of a per-pair array x whose pair axis is ``dim``."""
        raise NotImplementedError

    @cached_property
    def _r(self) -> tuple[Tensor, Tensor]:
        return self.sides(self.distances)

    @property
    def r_j(self) -> Tensor:
        """R_ij, Å, broadcasting to S."""
        return self._r[0]

    @property
    def r_k(self) -> Tensor:
        """R_ik, Å, broadcasting to S."""
        return self._r[1]

    @cached_property
    def cos(self) -> Tensor:
        """cos theta_ijk = u_ij . u_ik, shape S."""
        x_j, x_k = self.sides(self.unit, 1)
        out = x_j[0] * x_k[0]
        out = torch.addcmul(out, x_j[1], x_k[1])
        return torch.addcmul(out, x_j[2], x_k[2])

    @cached_property
    def dots(self) -> Tensor:
        """r_ij . r_ik, shape S, Å^2."""
        return self.cos * self.r_j * self.r_k

    @cached_property
    def gg(self) -> Tensor:
        """g_j g_k, shape S + (a,)."""
        g_j, g_k = self.sides(self.factors)
        return g_j * g_k

    @cached_property
    def r_jk2(self) -> Tensor:
        """R_jk^2 = R_ij^2 + R_ik^2 - 2 R_ij R_ik cos theta_ijk, shape S, Å^2 (three passes over
        the triplets: the squares are per pair; not clamped, so it may round to just below 0 for
        coincident j, k: clamp before a square root)."""
        sq_j, sq_k = self.sides(self.distances * self.distances)
        return torch.addcmul(sq_j + sq_k, self.r_j * self.r_k, self.cos, value=-2.0)


class SparseTriplets(Triplets):
    """Triplets as flat tensors of length T: triplet t pairs the pairs ``p[t]`` and ``q[t]`` (same
    centre) of the per-pair arrays (unit (3, P), distances (P,), factors (P, a))."""

    _cached = ("_r", "cos", "dots", "gg", "r_jk2")

    def __init__(
        self, p: Tensor, q: Tensor, unit: Tensor, distances: Tensor, factors: Tensor
    ) -> None:
        super().__init__(unit, distances, factors)
        self.p, self.q = p, q

    def sides(self, x: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
        return x.index_select(dim, self.p), x.index_select(dim, self.q)

    def select(self, keep: Tensor) -> SparseTriplets:
        """The triplets ``keep`` (long indices), with the attributes computed so far."""
        out = SparseTriplets(self.p[keep], self.q[keep], self.unit, self.distances, self.factors)
        for name in self._cached:
            value = self.__dict__.get(name)
            if isinstance(value, tuple):
                out.__dict__[name] = tuple(v.index_select(0, keep) for v in value)
            elif value is not None:
                out.__dict__[name] = value.index_select(0, keep)
        return out


class BlockTriplets(Triplets):
    """Triplets of n centres with neighbours padded to m slots (m odd; padding: unit 0, distance
    1, factor 0): slot j with slots (j + s) mod m, s = 1 .. h = (m - 1) / 2. Per-pair arrays have
    shape (n, m[, a]) (unit (3, n, m)); j-sides have shape (n, m, 1[, a]), k-sides are strided
    views of shape (n, m, h[, a])."""

    def sides(self, x: Tensor, dim: int = 0) -> tuple[Tensor, Tensor]:
        return x.unsqueeze(dim + 2), shifted(x, dim + 1)


def tracks_derivatives(*tensors: torch.Tensor) -> bool:
    """Whether derivatives flow through any of ``tensors``: reverse mode (requires_grad with
    gradients enabled) or forward mode (a dual tensor with a tangent, as in
    :mod:`atomistic.features.jacobian`). Code paths that write into buffers (``out=``) or detach
    are only for sums that need neither."""
    import torch.autograd.forward_ad as fwAD

    for t in tensors:
        if (t.requires_grad and torch.is_grad_enabled()) or fwAD.unpack_dual(t).tangent is not None:
            return True
    return False


def shifted(x: Tensor, dim: int) -> Tensor:
    """View y of x with a new axis after ``dim`` (size m, m odd): y[.., j, s, ..] =
    x[.., (j + 1 + s) mod m, ..], s = 0 .. (m - 3) / 2."""
    m = x.shape[dim]
    twice = torch.cat([x, x], dim=dim).narrow(dim, 1, 2 * m - 1)
    return twice.unfold(dim, (m - 1) // 2, 1).narrow(dim, 0, m).movedim(-1, dim + 1)


def _flatnonzero(mask: Tensor) -> Tensor:
    """Indices of the true entries of a 1-D bool tensor (numpy's is ~20x faster on CPU)."""
    if mask.device.type == "cpu":
        return torch.from_numpy(np.flatnonzero(mask.numpy()))
    return torch.nonzero(mask).squeeze(-1)


def _chunks(cost: np.ndarray, budget: int):
    """Ranges [c0, c1) of whole centres whose summed ``cost`` stays within ``budget`` (a centre
    over budget gets a range of its own)."""
    cum = np.cumsum(cost)
    c0, n = 0, len(cost)
    while c0 < n:
        done = int(cum[c0 - 1]) if c0 else 0
        c1 = min(max(int(np.searchsorted(cum, done + budget, side="right")), c0 + 1), n)
        yield c0, c1
        c0 = c1


def _products(radial: Tensor, angular) -> Tensor:
    """R (S, a) and A (S, b) or b x (S,) (None: 1) -> R A, shape (S, a, b)."""
    if isinstance(angular, Tensor):
        return radial.unsqueeze(-1) * angular.unsqueeze(-2)
    return torch.stack([radial if A is None else radial * A.unsqueeze(-1) for A in angular], -1)


def sparse_sums(
    term,
    pair_bin: Tensor,
    i: Tensor,
    vectors: Tensor,
    distances: Tensor,
    factors: Tensor,
    bins: Tensor,
    n_atoms: int,
) -> Tensor:
    """Angular columns by sparse triplets, shape (n_atoms, n_pairs * term.n_features).

    Parameters
    ----------
    term
        the AngularTerm.
    pair_bin
        (nb, nb) column block of each (unordered) pair of neighbour bins.
    i
        (P,) centre of each pair, sorted.
    vectors
        (P, 3) r_ij, Å.
    distances
        (P,) R_ij, Å.
    factors
        (P, a) g(R_ij).
    bins
        (P,) element bin of each neighbour j.
    """
    nb, npairs = pair_bin.shape[0], int(pair_bin.max()) + 1
    device = distances.device
    unit = (vectors / distances.unsqueeze(-1)).t().contiguous()  # shape (3, P)
    counts = torch.bincount(i, minlength=n_atoms)
    starts = (torch.cumsum(counts, 0) - counts).cpu().numpy()
    slot = torch.arange(i.numel(), device=device) - (torch.cumsum(counts, 0) - counts)[i]
    n_tri = counts * (counts - 1) // 2  # triplets per centre
    # pair p, slot a of its centre, is paired with the a pairs before it, p - a .. p - 1, in
    # triplets t = first[p] .. first[p] + a - 1: q = t - (first[p] + a - p)
    first = torch.cumsum(slot, 0) - slot
    offset = first + slot - torch.arange(i.numel(), device=device)
    width = max(1, factors.shape[1] * term.n_features)
    blocks = []
    for c0, c1 in _chunks(n_tri.cpu().numpy(), max(1, TRIPLET_BUDGET // width)):
        n, p0 = c1 - c0, int(starts[c0])
        p1 = p0 + int(counts[c0:c1].sum())
        total = int(n_tri[c0:c1].sum())
        if total == 0:
            blocks.append(factors.new_zeros((n, npairs * term.n_features)))
            continue
        p = torch.repeat_interleave(
            torch.arange(p0, p1, device=device), slot[p0:p1], output_size=total
        )  # shape (T,)
        t0 = int(first[p0])
        q = torch.arange(t0, t0 + total, device=device) - offset.index_select(0, p)
        tri = SparseTriplets(p, q, unit, distances, factors)
        if term.jk_cutoff is not None:  # drop the triplets with f_c(R_jk) = 0
            grad = tracks_derivatives(unit, factors)
            probe = tri
            if grad:
                probe = SparseTriplets(p, q, unit.detach(), distances.detach(), factors.detach())
            with torch.no_grad():
                keep = _flatnonzero(probe.r_jk2 < term.jk_cutoff**2)
            tri = (
                SparseTriplets(p[keep], q[keep], unit, distances, factors)
                if grad
                else tri.select(keep)
            )
        key = i.index_select(0, tri.p) - c0
        if nb > 1:
            key = key * npairs + pair_bin[bins.index_select(0, tri.p), bins.index_select(0, tri.q)]
        prod = _products(*term(tri))  # shape (T, a, b)
        sums = prod.new_zeros((n * npairs,) + prod.shape[1:]).index_add_(0, key, prod)
        blocks.append(term.combine(sums.view(n, npairs, *prod.shape[1:])).reshape(n, -1))
    if not blocks:
        return factors.new_zeros((0, npairs * term.n_features))
    return torch.cat(blocks, dim=0)


def block_sums(
    term,
    pair_bin: Tensor,
    i: Tensor,
    vectors: Tensor,
    distances: Tensor,
    factors: Tensor,
    bins: Tensor,
    n_atoms: int,
) -> Tensor:
    """Angular columns by padded blocks (:class:`BlockTriplets`); arguments as
    :func:`sparse_sums`. Element pairs are resolved with one-hot matmuls."""
    nb, npairs = pair_bin.shape[0], int(pair_bin.max()) + 1
    device = distances.device
    unit = vectors / distances.unsqueeze(-1)  # shape (P, 3)
    counts = torch.bincount(i, minlength=n_atoms)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(i.numel(), device=device) - starts[i]
    counts_np = counts.cpu().numpy()
    m_max = (int(counts_np.max()) if n_atoms else 0) | 1
    cost = np.full(n_atoms, m_max * m_max // 2 * factors.shape[1] * term.n_features * nb)
    left, right = torch.triu_indices(nb, nb, device=device)
    blocks = []
    for c0, c1 in _chunks(cost, TRIPLET_BUDGET):
        n, m = c1 - c0, int(counts_np[c0:c1].max()) | 1
        p0, p1 = int(starts[c0]), int(starts[c1 - 1] + counts[c1 - 1])
        if m < 3:
            blocks.append(factors.new_zeros((n, npairs * term.n_features)))
            continue
        h = (m - 1) // 2
        flat = (i[p0:p1] - c0) * m + slot[p0:p1]
        dense_u = unit.new_zeros((n * m, 3)).index_put((flat,), unit[p0:p1])
        dense_r = distances.new_ones(n * m).index_put((flat,), distances[p0:p1])
        dense_g = factors.new_zeros((n * m, factors.shape[1])).index_put((flat,), factors[p0:p1])
        tri = BlockTriplets(
            dense_u.t().contiguous().view(3, n, m), dense_r.view(n, m), dense_g.view(n, m, -1)
        )
        radial, angular = term(tri)  # shapes (n, m, h, a), (n, m, h, b) or b x (n, m, h)
        a = radial.shape[-1]
        if nb == 1:  # sum_t R A as matmuls over t = (j, s)
            lhs = radial.expand(n, m, h, a).reshape(n, m * h, a)
            if isinstance(angular, Tensor):
                sums = torch.bmm(lhs.transpose(1, 2), angular.reshape(n, m * h, -1))
            else:
                sums = torch.stack(
                    [
                        lhs.sum(1)
                        if A is None
                        else torch.bmm(A.reshape(n, 1, m * h), lhs).view(n, a)
                        for A in angular
                    ],
                    dim=-1,
                )
            sums = sums.view(n, 1, a, -1)
        else:  # fold k's element into R, sum over k, then over j by j's element
            dense_b = bins.new_zeros(n * m).index_put((flat,), bins[p0:p1])
            onehot = torch.nn.functional.one_hot(dense_b, nb).to(radial.dtype).view(n, m, nb)
            rk = shifted(onehot, 1).unsqueeze(-1) * radial.unsqueeze(3)  # shape (n, m, h, nb, a)
            rk = rk.reshape(n * m, h, nb * a)
            if isinstance(angular, Tensor):
                per_j = torch.bmm(rk.transpose(1, 2), angular.reshape(n * m, h, -1))
            else:
                per_j = torch.stack(
                    [
                        rk.sum(1)
                        if A is None
                        else torch.bmm(A.reshape(n * m, 1, h), rk).view(n * m, nb * a)
                        for A in angular
                    ],
                    dim=-1,
                )  # shape (n * m, nb * a, b)
            sums = torch.bmm(onehot.transpose(1, 2), per_j.view(n, m, -1)).view(n, nb, nb, a, -1)
            sums = (sums + sums.transpose(1, 2))[:, left, right]  # unordered element pairs
            sums = sums * torch.where(left == right, 0.5, 1.0).to(sums.dtype).view(1, -1, 1, 1)
        blocks.append(term.combine(sums).reshape(n, -1))
    if not blocks:
        return factors.new_zeros((0, npairs * term.n_features))
    return torch.cat(blocks, dim=0)


def padding_ratio(i: Tensor, n_atoms: int) -> float:
    """Padded block size over the number of triplets (>= 1; 1 when counts are uniform)."""
    counts = torch.bincount(i, minlength=n_atoms).cpu().numpy()
    total = float((counts * (counts - 1) // 2).sum())
    m = int(counts.max()) | 1 if n_atoms else 1
    return n_atoms * m * ((m - 1) // 2) / total if total else float("inf")
