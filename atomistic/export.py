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

The features and the neighbour search are in :mod:`atomistic.export_features` (their names stay
importable from here); this module holds the per-atom stages, the heads and the potential.
"""

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from atomistic.export_features import ExportedFeatures, neighbor_pairs

__all__ = ["export_model", "ExportedPotential", "ExportedFeatures", "neighbor_pairs"]


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
