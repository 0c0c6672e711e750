"""A trained model as one TorchScript module, for MD engines and Python sessions without atompipe.

``export_model(model, "potential.pt")`` writes a module whose

    forward(positions, numbers, cell, pbc) -> {"energy": (), "forces": (n, 3), "stress": (3, 3)}

takes positions (n, 3) Å float64, atomic numbers (n,) int64, the cell (3, 3) Å (rows are lattice
vectors) and pbc (3,) bool, and returns the energy (eV), forces -dE/dR (eV/Å) and the stress
(1/V) dE/d eps (eV/Å^3, ASE's sign: ``atoms.get_stress(voigt=False)``; NaN without a 3-D cell),
both by autograd. Load it with ``torch.jit.load("potential.pt")``; nothing of atompipe is needed.

The module holds the whole path of the Python model: the featurizer (Gaussian or AEV, from its
registered constants), the scaler, the encoder of a latent-feature model, and the networks of a
:class:`~atomistic.models.NeuralNetwork` (a committee's mean) or the training features and weights
of a :class:`~atomistic.models.KernelRidge` / :class:`~atomistic.models.GaussianProcess` (the
predictive mean; no variances). Features are re-implemented here in TorchScript-friendly form
(plain loops over a padded neighbour table instead of the featurizer's specialised sums); they
equal the Python featurizer to rounding (tests/unit/test_export.py).

Limits: the neighbour search tests all pairs of atoms against all periodic images within the
cutoff, O(n^2 x images) in time and memory, fine up to a few hundred atoms, not for large cells
(an MD engine with its own neighbour list should pass a small cell or cluster per call). A
periodic direction needs a cell of non-zero volume; one structure per call. The ``extra file``
``atompipe.json`` carries the model class, elements, cutoff and units.
"""

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["export_model", "ExportedPotential", "ExportedFeatures", "neighbor_pairs"]


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


# -- per-atom stages: scalers and encoders ----------------------------------------------------
class _Affine(nn.Module):
    """x * scale_Z + offset_Z (a fitted Scaler; per element or for all)."""

    scale: Tensor
    offset: Tensor

    def __init__(self, scaler: Any, n_features: int) -> None:
        super().__init__()
        from ase.data import atomic_numbers

        scale = torch.ones((119, n_features), dtype=torch.float64)
        offset = torch.zeros((119, n_features), dtype=torch.float64)
        if scaler is not None and scaler.per_element:
            for sym in scaler.scale_:
                scale[atomic_numbers[sym]] = torch.as_tensor(scaler.scale_[sym])
                offset[atomic_numbers[sym]] = torch.as_tensor(scaler.offset_[sym])
        elif scaler is not None:
            scale[:] = torch.as_tensor(scaler.scale_)
            offset[:] = torch.as_tensor(scaler.offset_)
        self.register_buffer("scale", scale)
        self.register_buffer("offset", offset)

    def forward(self, X: Tensor, numbers: Tensor) -> Tensor:
        return X * self.scale[numbers] + self.offset[numbers]


class _Encoder(nn.Module):
    """The encoder (mean) of a fitted AutoEncoder/VAE, one network per element or one shared."""

    z: Tensor

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        from ase.data import atomic_numbers

        nets = []
        keys = encoder.module_.keys
        for key in keys:
            net = encoder.module_.nets[key]
            if net.kind == "ae":
                nets.append(net.encoder)
            else:
                nets.append(nn.Sequential(net.encoder, net.z_mean))
        self.nets = nn.ModuleList(nets)
        self.shared = not encoder.per_element
        z = [0] if self.shared else [atomic_numbers[k] for k in keys]
        self.register_buffer("z", torch.tensor(z, dtype=torch.long))
        self.latent = int(encoder.latent_dim_)

    def forward(self, X: Tensor, numbers: Tensor) -> Tensor:
        out = torch.zeros((X.shape[0], self.latent), dtype=X.dtype)
        k = 0
        for net in self.nets:
            rows = (
                torch.arange(X.shape[0])
                if self.shared
                else torch.nonzero(numbers == self.z[k]).squeeze(1)
            )
            if rows.numel() > 0:
                out = out.index_copy(0, rows, net(X.index_select(0, rows)))
            k += 1
        return out


# -- heads: atomic features -> energy ----------------------------------------------------------
class _NetworkHead(nn.Module):
    """E = sum_i (e_Z + scale_Z NN_Z(x_i)), the mean over a committee's members."""

    columns: Tensor
    z: Tensor
    shift: Tensor
    scale: Tensor
    probe: Tensor

    def __init__(self, model: Any) -> None:
        super().__init__()
        first = model.members_[0]
        self.members = nn.ModuleList(
            [nn.ModuleList([m.nets[s] for s in m.elements]) for m in model.members_]
        )
        for name in ("columns", "z"):
            self.register_buffer(name, getattr(first, name).clone())
        self.register_buffer("shift", torch.stack([m.shift for m in model.members_]).clone())
        self.register_buffer("scale", torch.stack([m.scale for m in model.members_]).clone())
        self.register_buffer("probe", torch.zeros(0, dtype=first.dtype))

    def forward(self, X: Tensor, numbers: Tensor) -> Tensor:
        Xc = X.to(self.probe.dtype).index_select(1, self.columns)
        kind = torch.searchsorted(self.z, numbers)
        total = torch.zeros((), dtype=torch.float64)
        m = 0
        for member in self.members:
            e = torch.zeros(X.shape[0], dtype=torch.float64)
            k = 0
            for net in member:  # type: ignore[attr-defined]
                rows = torch.nonzero(kind == k).squeeze(1)
                if rows.numel() > 0:
                    out = net(Xc.index_select(0, rows)).squeeze(1) * self.scale[m, k].to(Xc.dtype)
                    e = e.index_add(0, rows, out.to(torch.float64))
                k += 1
            total = total + (e + self.shift[m][kind]).sum()
            m += 1
        return total / m


class _KernelHead(nn.Module):
    """E = E_ref + sum_i sum_(j: Z_j = Z_i) k(x_i, x_j) w_j over the training (or
    representative) atoms j, w_j the weight of j's training structure (Rupp 2015)."""

    X_train: Tensor
    z_train: Tensor
    w: Tensor
    reference: Tensor

    def __init__(self, model: Any) -> None:
        super().__init__()
        from ase.data import atomic_numbers

        alpha = torch.as_tensor(model.alpha_, dtype=torch.float64)
        self.register_buffer("X_train", model.X_train_.to(torch.float64).clone())
        self.register_buffer("z_train", model.numbers_train_.clone())
        self.register_buffer("w", alpha[model.batch_train_])
        ref = torch.zeros(119, dtype=torch.float64)
        for sym, e in model.reference_.items():
            ref[atomic_numbers[sym]] = float(e)
        self.register_buffer("reference", ref)
        self.kernel = str(model.kernel)
        self.sigma = float(model.sigma_)
        self.elements: list[int] = sorted({int(z) for z in model.numbers_train_.tolist()})

    def _k(self, A: Tensor, B: Tensor) -> Tensor:
        if self.kernel == "linear":
            return A @ B.T
        if self.kernel == "rbf":
            d2 = ((A * A).sum(1, keepdim=True) + (B * B).sum(1) - 2.0 * A @ B.T).clamp_min(0.0)
            return torch.exp(-d2 / (2.0 * self.sigma**2))
        if self.kernel == "exponential":
            d = torch.cdist(
                A.unsqueeze(0), B.unsqueeze(0), p=2.0, compute_mode="donot_use_mm_for_euclid_dist"
            ).squeeze(0)
        else:
            d = torch.cdist(A.unsqueeze(0), B.unsqueeze(0), p=1.0).squeeze(0)
        return torch.exp(-d / self.sigma)

    def forward(self, X: Tensor, numbers: Tensor) -> Tensor:
        E = self.reference[numbers].sum()
        for z in self.elements:
            ia = torch.nonzero(numbers == z).squeeze(1)
            ib = torch.nonzero(self.z_train == z).squeeze(1)
            if ia.numel() > 0:
                E = E + (self._k(X.index_select(0, ia), self.X_train[ib]) @ self.w[ib]).sum()
        return E


# -- the potential -----------------------------------------------------------------------------
class ExportedPotential(nn.Module):
    """features -> scaler [-> encoder -> scaler] -> head; energy, forces and stress by autograd
    (the strain leaf eps: R' = R (I + eps), h' = h (I + eps); stress = sym(dE/d eps) / V)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        model._check_fitted()
        f = model.featurizer_
        if f is None:
            raise ValueError("this model was fitted on features without a featurizer")
        stages: list[nn.Module] = []
        base = getattr(f, "base", None)
        if base is not None:  # latent features: base featurizer, its scaler, the encoder
            self.features = ExportedFeatures(base)
            stages += [_Affine(f.base_scaler, base.n_features), _Encoder(f.encoder)]
            stages.append(_Affine(model.scaler_, int(f.encoder.latent_dim_)))
        else:
            self.features = ExportedFeatures(f)
            stages.append(_Affine(model.scaler_, int(f.n_features)))
        self.stages = nn.ModuleList(stages)
        if hasattr(model, "members_"):
            self.head: nn.Module = _NetworkHead(model)
        elif hasattr(model, "alpha_"):
            self.head = _KernelHead(model)
        else:
            raise ValueError(f"export does not know the model {type(model).__name__}")

    def forward(
        self, positions: Tensor, numbers: Tensor, cell: Tensor, pbc: Tensor
    ) -> dict[str, Tensor]:
        pos = positions.detach().to(torch.float64).requires_grad_(True)
        h0 = cell.detach().to(torch.float64).reshape(3, 3)
        eps = torch.zeros((3, 3), dtype=torch.float64).requires_grad_(True)
        deform = torch.eye(3, dtype=torch.float64) + eps
        X = self.features(pos @ deform, numbers, h0 @ deform, pbc.to(torch.bool))
        for stage in self.stages:
            X = stage(X, numbers)
        energy = self.head(X, numbers)
        grads = torch.autograd.grad([energy], [pos, eps], allow_unused=True)
        g_pos, g_eps = grads[0], grads[1]
        forces = torch.zeros_like(pos) if g_pos is None else -g_pos
        virial = torch.zeros_like(h0) if g_eps is None else 0.5 * (g_eps + g_eps.T)
        volume = torch.abs(torch.linalg.det(h0))
        if float(volume) > 1e-12:
            stress = virial / volume
        else:
            stress = torch.full((3, 3), float("nan"), dtype=torch.float64)
        return {"energy": energy.detach(), "forces": forces.detach(), "stress": stress.detach()}


def export_model(model: Any, path: str | Path | None = None) -> torch.jit.ScriptModule:
    """TorchScript module of a fitted model (or a saved model directory); saved to ``path``
    when given, with ``atompipe.json`` (class, elements, cutoff, units) as an extra file."""
    if isinstance(model, str | Path):
        from atomistic.models.base import load_model

        model = load_model(model)
    scripted = torch.jit.script(ExportedPotential(model))
    if path is not None:
        meta = {
            "model": type(model).__name__,
            "elements": list(model.elements_),
            "cutoff": float(scripted.features.cutoff),
            "units": {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3", "positions": "Å"},
            "forward": "forward(positions (n,3) float64, numbers (n,) int64, cell (3,3), pbc (3,))",
        }
        torch.jit.save(scripted, str(path), _extra_files={"atompipe.json": json.dumps(meta)})
    return scripted
