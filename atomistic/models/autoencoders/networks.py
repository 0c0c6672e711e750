"""The torch networks behind :class:`~atomistic.models.autoencoders.AutoEncoder` and
:class:`~atomistic.models.autoencoders.VAE`.

:class:`ElementNet` is one element's encoder and decoder: deterministic (``kind="ae"``) or
variational (a Gaussian q(z|x) with a Gaussian, ``"multivariate"``, or Bernoulli decoder;
Kingma & Welling 2014, arXiv:1312.6114). :class:`ElementNetworks` keys them by chemical symbol
(Behler–Parrinello style) or holds one shared network, and routes rows sorted by element to
their network. Layers come from :func:`atomistic.models.layers.mlp`.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from atomistic.models.layers import mlp

__all__ = ["Batch", "ElementNet", "ElementNetworks", "LOGVAR_MIN", "SHARED"]

SHARED = "all"  # the ModuleDict key of the one network when per_element=False
LOGVAR_MIN = -10.0  # soft floor of the decoder's log-variance (sigma >= 7e-3 scaled units)
Batch = tuple[torch.Tensor, list[int]]  # x (B, F) float64 rows sorted by element, rows per element


class ElementNet(nn.Module):
    """One element's encoder and decoder. ``encode`` returns {"mean"[, "logvar"]} of shape
    (B, latent); ``decode`` returns {"mean"[, "logvar"]} or {"logits"} of shape (B, F)."""

    def __init__(
        self,
        n_features: int,
        enc: tuple[int, ...],
        dec: tuple[int, ...],
        activation: str,
        kind: str,
    ) -> None:
        super().__init__()
        self.kind = kind  # "ae" | "multivariate" | "bernoulli"
        latent = enc[-1]
        if kind == "ae":
            self.encoder = mlp([n_features, *enc], activation, last=False)
            self.decoder = mlp([*dec, n_features], activation, last=False)
            return
        self.encoder = mlp([n_features, *enc[:-1]], activation, last=True)
        width = enc[-2] if len(enc) > 1 else n_features
        self.z_mean, self.z_logvar = nn.Linear(width, latent), nn.Linear(width, latent)
        self.decoder = mlp(list(dec), activation, last=True)
        self.x_head = nn.Linear(dec[-1], n_features)  # mean, or logits when bernoulli
        if kind == "multivariate":
            self.x_logvar = nn.Linear(dec[-1], n_features)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.kind == "ae":
            return {"mean": self.encoder(x)}
        h = self.encoder(x)
        return {"mean": self.z_mean(h), "logvar": self.z_logvar(h)}

    def decode(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.kind == "ae":
            return {"mean": self.decoder(z)}
        h = self.decoder(z)
        if self.kind == "bernoulli":
            return {"logits": self.x_head(h)}
        raw = self.x_logvar(h)
        return {"mean": self.x_head(h), "logvar": LOGVAR_MIN + F.softplus(raw - LOGVAR_MIN)}


class ElementNetworks(nn.Module):
    """Networks keyed by element symbol (or one keyed ``"all"``); inputs are rows sorted by
    element with ``counts[k]`` rows of ``keys[k]``. ``beta`` is the KL weight of the current epoch
    (a buffer, so that it is checkpointed and a resumed run continues the schedule)."""

    beta: torch.Tensor

    def __init__(self, keys: list[str], nets: list[ElementNet], per_element: bool) -> None:
        super().__init__()
        self.keys, self.per_element = keys, per_element
        self.nets = nn.ModuleDict(dict(zip(keys, nets, strict=True)))
        self.register_buffer("beta", torch.zeros((), dtype=torch.float64))

    def _route(self, method: str, x: torch.Tensor, counts: list[int]) -> dict[str, torch.Tensor]:
        """Apply ``method`` to rows sorted by element: ``counts[k]`` rows of ``keys[k]`` follow
        each other (contiguous slices, no scatter; cheap in the backward pass)."""
        if not self.per_element:
            return getattr(self.nets[SHARED], method)(x)
        parts: dict[str, list[torch.Tensor]] = {}
        for key, chunk in zip(self.keys, torch.split(x, counts), strict=True):
            if chunk.shape[0] == 0:
                continue
            for name, value in getattr(self.nets[key], method)(chunk).items():
                parts.setdefault(name, []).append(value)
        return {name: torch.cat(values) for name, values in parts.items()}

    def encode(self, x: torch.Tensor, counts: list[int]) -> dict[str, torch.Tensor]:
        return self._route("encode", x, counts)

    def decode(self, z: torch.Tensor, counts: list[int]) -> dict[str, torch.Tensor]:
        return self._route("decode", z, counts)
