"""Cutoff functions: smooth switches f_c(r) that go to zero at the cutoff radius.

A new cutoff overrides :meth:`Cutoff.compute`; the base class zeroes it beyond the radius.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["Cutoff", "CosineCutoff"]


class Cutoff(torch.nn.Module):
    """Base class: ``forward(r) = compute(min(r, R_c))``; ``compute`` must vanish at R_c, so
    value and gradient are zero beyond the cutoff (a clamp is cheaper than a masked select)."""

    def __init__(self, cutoff: float) -> None:
        super().__init__()
        self.cutoff = float(cutoff)

    def forward(self, r: Tensor) -> Tensor:
        """r: distances, any shape, Å -> f_c(r), same shape."""
        return self.compute(r.clamp(max=self.cutoff))

    def compute(self, r: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}"


class CosineCutoff(Cutoff):
    """Behler's cosine cutoff, f_c(r) = 0.5 (1 + cos(pi r / R_c)) (Behler, JCP 134, 074106 (2011),
    eq. 4)."""

    def compute(self, r: Tensor) -> Tensor:
        # = cos^2(pi r / (2 R_c)): three passes over r instead of four
        return torch.cos(r * (0.5 * math.pi / self.cutoff)).square()
