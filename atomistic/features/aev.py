"""ANI atomic environment vectors (J. S. Smith, O. Isayev, A. E. Roitberg, Chem. Sci. 8, 3192
(2017)), equal to TorchANI 2.9's ``AEVComputer`` for the same constants (its 0.25 radial factor and
0.95 cosine scaling included). Conventions: docs/features.md ("AEV").
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any, TypedDict

from .base import Featurizer
from .terms import ANIAngular, ANIRadial

__all__ = ["AEV", "ANI1X", "ANI2X", "AEVConstants"]


class AEVConstants(TypedDict):
    """The constants of an AEV (NeuroChem/TorchANI names): cutoffs Å, widths Å^-2, shifts Å,
    zeta, angle sections rad."""

    Rcr: float
    EtaR: float
    ShfR: list[float]
    Rca: float
    EtaA: float
    Zeta: float
    ShfA: list[float]
    ShfZ: list[float]


ANI1X: AEVConstants = {
    "Rcr": 5.2,
    "EtaR": 16.0,
    "ShfR": [0.9 + 0.26875 * k for k in range(16)],
    "Rca": 3.5,
    "EtaA": 8.0,
    "Zeta": 32.0,
    "ShfA": [0.9, 1.55, 2.2, 2.85],
    "ShfZ": [math.pi / 16 + k * math.pi / 8 for k in range(8)],
}

# ANI-2x (Devereux et al., J. Chem. Theory Comput. 16, 4192 (2020)): H, C, N, O, F, S, Cl;
# shifts cover [start, cutoff) linearly, as TorchANI's AEVComputer.like_2x
ANI2X: AEVConstants = {
    "Rcr": 5.1,
    "EtaR": 19.7,
    "ShfR": [0.8 + (5.1 - 0.8) / 16 * k for k in range(16)],
    "Rca": 3.5,
    "EtaA": 12.5,
    "Zeta": 14.1,
    "ShfA": [0.8 + (3.5 - 0.8) / 8 * k for k in range(8)],
    "ShfZ": [math.pi / 8 + k * math.pi / 4 for k in range(4)],
}
ANI2X_ELEMENTS = ("H", "C", "N", "O", "F", "S", "Cl")
PRESETS: dict[str, AEVConstants] = {"ani1x": ANI1X, "ani2x": ANI2X}


class AEV(Featurizer):
    """ANI AEV: radial terms per neighbour element, angular terms per unordered element pair.

    * radial  G_i(R_s) = 0.25 sum_j exp(-EtaR (R_ij - R_s)^2) f_c(R_ij; Rcr)
    * angular G_i(R_s, theta_s) = 2 sum_{j<k} ((1 + cos(theta'_ijk - theta_s)) / 2)^Zeta
      exp(-EtaA ((R_ij + R_ik)/2 - R_s)^2) f_c(R_ij; Rca) f_c(R_ik; Rca),
      theta' = arccos(0.95 cos theta)

    Args (NeuroChem/TorchANI names; defaults are the ANI-1x constants):
        elements: symbols or atomic numbers (None: fixed later by fit_elements/featurize).
        Rcr, Rca: radial and angular cutoffs, Å.
        EtaR, EtaA: Gaussian widths, Å^-2.
        ShfR, ShfA: radial shifts R_s, Å.
        Zeta: angular exponent.
        ShfZ: angle sections theta_s, rad.
        device: "cpu" or "cuda", where :meth:`featurize` computes (the CPU, with one message,
            when no GPU is present); not part of :meth:`get_params`.

    Columns (TorchANI's order): [element] x [ShfR], then [element pair (0,0), (0,1), ...] x
    [ShfA outer] x [ShfZ inner].
    """

    name = "aev"
    radial: ANIRadial
    angular: ANIAngular

    def __init__(
        self,
        elements: Iterable[Any] | None = None,
        Rcr: float = ANI1X["Rcr"],
        EtaR: float = ANI1X["EtaR"],
        ShfR: Sequence[float] | None = None,
        Rca: float = ANI1X["Rca"],
        EtaA: float = ANI1X["EtaA"],
        Zeta: float = ANI1X["Zeta"],
        ShfA: Sequence[float] | None = None,
        ShfZ: Sequence[float] | None = None,
        *,
        device: str = "cpu",
    ) -> None:
        super().__init__(elements=elements, device=device)
        self.radial = ANIRadial(Rcr, EtaR, ANI1X["ShfR"] if ShfR is None else ShfR)
        self.angular = ANIAngular(
            Rca,
            EtaA,
            Zeta,
            ANI1X["ShfA"] if ShfA is None else ShfA,
            ANI1X["ShfZ"] if ShfZ is None else ShfZ,
        )

    @classmethod
    def like_ani1x(cls, elements: Iterable[Any] = ("H", "C", "N", "O")) -> AEV:
        """The ANI-1x AEV (384 columns for H, C, N, O)."""
        return cls(elements=elements, **ANI1X)

    @classmethod
    def like_ani2x(cls, elements: Iterable[Any] = ANI2X_ELEMENTS) -> AEV:
        """The ANI-2x AEV (1008 columns for H, C, N, O, F, S, Cl); other elements may be given."""
        return cls(elements=elements, **ANI2X)

    def get_params(self) -> dict:
        """JSON-serialisable constructor arguments; ``AEV(**f.get_params())`` rebuilds f."""
        return {
            "elements": list(self.elements) if self.elements is not None else None,
            "Rcr": self.radial.cutoff,
            "EtaR": self.radial.eta,
            "ShfR": list(self.radial.shifts),
            "Rca": self.angular.cutoff,
            "EtaA": self.angular.eta,
            "Zeta": self.angular.zeta,
            "ShfA": list(self.angular.shifts),
            "ShfZ": list(self.angular.sections),
        }

    def extra_repr(self) -> str:
        return f"elements={self.elements}, n_features={self.n_features if self.elements else '?'}"
