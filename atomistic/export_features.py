"""The featurizers of :mod:`atomistic.export` in TorchScript-friendly form.

:class:`ExportedFeatures` computes the Gaussian (G2 with G3 or G4) or AEV features of one
structure from the constants of an atompipe featurizer, by plain loops over a padded neighbour
table (:func:`neighbor_pairs`: every pair of atoms against every periodic image within the
cutoff) instead of the featurizer's specialised sums; the columns equal the Python featurizer's
to rounding (tests/unit/test_export.py).
"""

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ExportedFeatures", "neighbor_pairs"]


# -- neighbours --------------------------------------------------------------------------------
def neighbor_pairs(
    positions: Tensor, cell: Tensor, pbc: Tensor, cutoff: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Full neighbour list by testing every pair against every periodic image within
    ``cutoff``: (i (P,), j (P,), vectors (P, 3) from i to j, differentiable in positions and
    cell). Positions are wrapped into the cell along periodic directions first."""
    n = positions.shape[0]
    dtype = positions.dtype
    if bool(pbc.any()):
        inv = torch.linalg.inv(cell.detach())  # columns: reciprocal vectors b_d
        frac = positions.detach() @ inv  # shape (n, 3)
        shift = torch.where(pbc.view(1, 3), torch.floor(frac), torch.zeros_like(frac))
        wrapped = positions - shift @ cell
        # lattice planes of direction d are 1/|b_d| apart: ceil(R_c |b_d|) images each way
        reach = torch.ceil(cutoff * torch.linalg.vector_norm(inv, dim=0))
        reach = torch.where(pbc, reach, torch.zeros_like(reach)).to(torch.long)
        a = torch.arange(-int(reach[0]), int(reach[0]) + 1)
        b = torch.arange(-int(reach[1]), int(reach[1]) + 1)
        c = torch.arange(-int(reach[2]), int(reach[2]) + 1)
        na, nb, nc = a.numel(), b.numel(), c.numel()
        images = torch.stack(
            [
                a.view(-1, 1, 1).expand(na, nb, nc).reshape(-1),
                b.view(1, -1, 1).expand(na, nb, nc).reshape(-1),
                c.view(1, 1, -1).expand(na, nb, nc).reshape(-1),
            ],
            dim=1,
        ).to(dtype)  # shape (K, 3)
    else:
        wrapped = positions
        images = torch.zeros((1, 3), dtype=dtype)
    with torch.no_grad():
        offsets = images @ cell.detach()  # shape (K, 3)
        w = wrapped.detach()
        d = w.view(1, 1, n, 3) - w.view(1, n, 1, 3) + offsets.view(-1, 1, 1, 3)  # (K, n, n, 3)
        close = torch.linalg.vector_norm(d, dim=-1) < cutoff
        home = (images == 0).all(dim=1).view(-1, 1, 1)
        close = close & ~(home & torch.eye(n, dtype=torch.bool).view(1, n, n))
        kij = torch.nonzero(close)  # shape (P, 3)
        k, i, j = kij[:, 0], kij[:, 1], kij[:, 2]
    vectors = wrapped[j] - wrapped[i] + images[k] @ cell  # shape (P, 3)
    return i, j, vectors


def _triplets(i: Tensor, n_atoms: int) -> tuple[Tensor, Tensor, Tensor]:
    """Unordered pairs {p, q} of pairs with the same centre: (centre, p, q), each (T,)."""
    P = i.numel()
    if P == 0:
        e = torch.zeros(0, dtype=torch.long)
        return e, e, e
    order = torch.argsort(i * P + torch.arange(P))  # by centre, stable
    i_sorted = i[order]
    counts = torch.bincount(i_sorted, minlength=n_atoms)
    m = int(counts.max())
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(P) - starts[i_sorted]
    table = torch.full((n_atoms, m), -1, dtype=torch.long)
    table[i_sorted, slot] = order
    upper = torch.triu_indices(m, m, offset=1)
    left, right = upper[0], upper[1]
    p, q = table[:, left], table[:, right]  # shape (n, m (m - 1) / 2)
    valid = (p >= 0) & (q >= 0)
    centre = torch.arange(n_atoms).view(-1, 1).expand(p.shape)[valid]
    return centre, p[valid], q[valid]


def _cosine_cutoff(r: Tensor, cutoff: float) -> Tensor:
    return 0.5 * torch.cos(r.clamp(max=cutoff) * (math.pi / cutoff)) + 0.5


# -- features ----------------------------------------------------------------------------------
class ExportedFeatures(nn.Module):
    """Gaussian (G2 with G3 or G4) or AEV features of one structure, (n, n_features) float64,
    from the constants of an atompipe featurizer; same columns in the same order."""

    species_bin: Tensor
    pair_bin: Tensor
    radial_exponent: Tensor
    radial_shift: Tensor
    ang_exponent: Tensor
    ang_zeta: Tensor
    ang_lambda: Tensor
    ang_norm: Tensor
    ang_shift: Tensor
    ang_cos: Tensor
    ang_sin: Tensor

    def __init__(self, featurizer: Any) -> None:
        super().__init__()
        from atomistic.features.cutoff import CosineCutoff
        from atomistic.features.terms import ANIAngular, ANIRadial, BehlerAngular, BehlerRadial

        f = featurizer
        f._require_elements()
        for term in (f.radial, f.angular):
            if term is not None and type(term.cutoff_fn) is not CosineCutoff:
                raise ValueError("export supports the cosine cutoff only")
        self.register_buffer("species_bin", f.species_bin.clone())
        self.register_buffer("pair_bin", f.pair_bin.clone())
        self.n_bins = int(f.n_bins)
        self.n_pairs = int(f.n_pairs)
        self.weighted = bool(f.weighted)
        self.cutoff = float(f.cutoff)
        r: Any = f.radial  # torch.nn.Module attributes: typed loosely
        self.radial_cutoff = float(r.cutoff)
        if isinstance(r, BehlerRadial):
            exponent, factor = r.exponent.clone(), 1.0
        elif isinstance(r, ANIRadial):
            exponent, factor = torch.full_like(r.shift, r.eta), 0.25
        else:
            raise ValueError(f"export does not know the radial term {type(r).__name__}")
        self.register_buffer("radial_exponent", exponent.to(torch.float64))
        self.register_buffer("radial_shift", r.shift.clone().to(torch.float64))
        self.radial_factor = factor
        a: Any = f.angular
        self.kind = "none"
        self.angular_cutoff = 0.0
        self.include_jk = False
        self.ani_eta = 0.0
        self.ani_zeta = 0.0
        # Behler: exponents (n_eta,), per column (zeta, lambda) zeta, lambda and 2^(1 - zeta)
        # ANI: shifts R_s (n_s,), cos and sin of theta_s (n_sec,)
        empty = torch.zeros(0, dtype=torch.float64)
        names = ("ang_exponent", "ang_zeta", "ang_lambda", "ang_norm", "ang_shift")
        buffers = {name: empty.clone() for name in names + ("ang_cos", "ang_sin")}
        if isinstance(a, BehlerAngular):
            self.kind = "behler"
            self.angular_cutoff = float(a.cutoff)
            self.include_jk = bool(a.include_jk)
            buffers["ang_exponent"] = a.exponent.clone()
            buffers["ang_zeta"] = a.zeta.clone()
            buffers["ang_lambda"] = a.lam.clone()
            buffers["ang_norm"] = torch.pow(2.0, 1.0 - a.zeta.clone())
        elif isinstance(a, ANIAngular):
            self.kind = "ani"
            self.angular_cutoff = float(a.cutoff)
            self.ani_eta, self.ani_zeta = float(a.eta), float(a.zeta)
            buffers["ang_shift"] = a.shift.clone()
            buffers["ang_cos"] = a.cos_s.clone()
            buffers["ang_sin"] = a.sin_s.clone()
        elif a is not None:
            raise ValueError(f"export does not know the angular term {type(a).__name__}")
        for name, value in buffers.items():
            self.register_buffer(name, value.to(torch.float64))
        self.n_radial = int(self.radial_shift.numel())
        self.n_features = int(f.n_features)

    def forward(self, positions: Tensor, numbers: Tensor, cell: Tensor, pbc: Tensor) -> Tensor:
        n = positions.shape[0]
        bins = self.species_bin[numbers]
        if bool((bins < 0).any()):
            raise RuntimeError("an element of the structure is not one of the model's elements")
        i, j, vec = neighbor_pairs(positions, cell, pbc, self.cutoff)
        dist = torch.linalg.vector_norm(vec, dim=-1)  # shape (P,)
        z = numbers.to(positions.dtype)

        keep = torch.nonzero(dist < self.radial_cutoff).squeeze(-1)
        ir, jr, rr = i[keep], j[keep], dist[keep]
        dr = rr.unsqueeze(-1) - self.radial_shift
        terms = self.radial_factor * torch.exp(-self.radial_exponent * dr * dr)
        terms = terms * _cosine_cutoff(rr, self.radial_cutoff).unsqueeze(-1)  # (P_r, F_r)
        if self.weighted:
            terms = terms * z[jr].unsqueeze(-1)
        nb = self.n_bins
        radial = torch.zeros((n * nb, self.n_radial), dtype=positions.dtype)
        radial = radial.index_add(0, ir * nb + bins[jr], terms).reshape(n, -1)
        if self.kind == "none":
            return radial

        keep = torch.nonzero(dist < self.angular_cutoff).squeeze(-1)
        ia, ja, va, ra = i[keep], j[keep], vec[keep], dist[keep]
        centre, p, q = _triplets(ia, n)
        vj, vk, rj, rk = va[p], va[q], ra[p], ra[q]
        cos = (vj * vk).sum(-1) / (rj * rk)  # shape (T,)
        fc = _cosine_cutoff(rj, self.angular_cutoff) * _cosine_cutoff(rk, self.angular_cutoff)
        if self.weighted:
            fc = fc * z[ja[p]] * z[ja[q]]
        if self.kind == "behler":
            r2 = rj * rj + rk * rk
            if self.include_jk:
                d = vk - vj
                rjk2 = (d * d).sum(-1)
                r2 = r2 + rjk2
                fc = fc * _cosine_cutoff(torch.sqrt(rjk2), self.angular_cutoff)
            radial_part = torch.exp(-self.ang_exponent * r2.unsqueeze(-1)) * fc.unsqueeze(-1)
            base = (1.0 + self.ang_lambda * cos.unsqueeze(-1)).clamp_min(0.0)
            angular_part = self.ang_norm * torch.pow(base, self.ang_zeta)  # shape (T, C)
        else:
            mean = 0.5 * (rj + rk)
            d = mean.unsqueeze(-1) - self.ang_shift
            radial_part = fc.unsqueeze(-1) * torch.exp(-self.ani_eta * d * d)  # (T, n_s)
            c = 0.95 * cos
            s = torch.sqrt(1.0 - c * c)
            half = 0.5 + 0.5 * (c.unsqueeze(-1) * self.ang_cos + s.unsqueeze(-1) * self.ang_sin)
            angular_part = 2.0 * torch.pow(half, self.ani_zeta)  # shape (T, n_sec)
        values = (radial_part.unsqueeze(-1) * angular_part.unsqueeze(-2)).flatten(1)
        pair = self.pair_bin[bins[ja[p]], bins[ja[q]]]
        angular = torch.zeros((n * self.n_pairs, values.shape[1]), dtype=positions.dtype)
        angular = angular.index_add(0, centre * self.n_pairs + pair, values).reshape(n, -1)
        return torch.cat([radial, angular], dim=1)
