"""Gaussian (Behler-Parrinello) atom-centred symmetry functions, ML4Chem's ``Gaussian``.

J. Behler, J. Chem. Phys. 134, 074106 (2011); weighted variant (wACSF): M. Gastegger et al.,
J. Chem. Phys. 148, 241709 (2018). Exact conventions: docs/features.md ("Gaussian").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .base import Featurizer
from .terms import BehlerAngular, BehlerRadial

__all__ = ["Gaussian", "dense_parameters"]

DEFAULT_G2 = {
    "etas": [float(e) for e in np.logspace(np.log10(0.05), np.log10(5.0), 4)],
    "Rs": [0.0],
}
DEFAULT_ANGULAR = {"etas": [0.005], "zetas": [1, 4], "gammas": [1.0, -1.0]}


def dense_parameters(
    cutoff: float = 6.5,
    n_radial: int = 12,
    r_min: float = 0.8,
    angular_etas: tuple[float, ...] = (0.005, 0.05, 0.2),
    zetas: tuple[int, ...] = (1, 2, 4, 8, 16),
) -> dict:
    """A dense, systematic Behler set as ``custom`` parameters of a normalized :class:`Gaussian`.

    Radial: ``n_radial`` Gaussians shifted on a grid R_s = r_min + k d, d = (R_c - r_min) /
    n_radial, each of standard deviation d (eta = R_c^2 / (2 d^2) in the normalized form), which
    covers the neighbour shell evenly (Imbalzano et al., J. Chem. Phys. 148, 241730 (2018);
    the shifted sets of n2p2). Angular: zeta in ``zetas``, lambda = +-1, and ``angular_etas``
    in Å^-2 (multiplied by R_c^2 for the normalized form).
    """
    if n_radial < 1 or not 0 <= r_min < cutoff:
        raise ValueError("dense_parameters needs n_radial >= 1 and 0 <= r_min < cutoff")
    d = (cutoff - r_min) / n_radial
    return {
        "G2": {
            "etas": [cutoff**2 / (2 * d * d)],
            "Rs": [r_min + k * d for k in range(n_radial)],
        },
        "G3": {
            "etas": [e * cutoff**2 for e in angular_etas],
            "zetas": list(zetas),
            "gammas": [1.0, -1.0],
        },
    }


def _as_list(values: Any, key: str) -> list:
    values = list(np.atleast_1d(np.asarray(values, dtype=float)).tolist())
    if not values:
        raise ValueError(f"custom {key!r} is empty")
    return values


def _resolve_custom(custom: dict | None, angular_type: str) -> dict:
    """Full parameter sets {"G2": {etas, Rs}, angular_type: {etas, zetas, gammas}}."""
    custom = dict(custom or {})
    unknown = set(custom) - {"G2", "G3", "G4"}
    if unknown:
        raise ValueError(f"unknown custom key(s) {sorted(unknown)}; expected 'G2', 'G3' or 'G4'")
    other = "G4" if angular_type == "G3" else "G3"
    if other in custom:
        raise ValueError(f"custom has {other!r} parameters but angular_type is {angular_type!r}")
    g2 = dict(custom.get("G2") or {})
    bad = set(g2) - {"etas", "Rs"}
    if bad:
        raise ValueError(f"unknown key(s) {sorted(bad)} in custom['G2']; expected 'etas', 'Rs'")
    ang = dict(custom.get(angular_type) or {})
    if "lambdas" in ang:
        if "gammas" in ang:
            raise ValueError(f"custom[{angular_type!r}] has both 'gammas' and 'lambdas'")
        ang["gammas"] = ang.pop("lambdas")
    bad = set(ang) - {"etas", "zetas", "gammas"}
    if bad:
        raise ValueError(
            f"unknown key(s) {sorted(bad)} in custom[{angular_type!r}]; "
            "expected 'etas', 'zetas', 'gammas' (or 'lambdas')"
        )
    zetas = ang.get("zetas", DEFAULT_ANGULAR["zetas"])
    zetas = [int(z) if float(z).is_integer() else float(z) for z in np.atleast_1d(zetas).tolist()]
    return {
        "G2": {
            "etas": _as_list(g2.get("etas", DEFAULT_G2["etas"]), "etas"),
            "Rs": _as_list(g2.get("Rs", [0.0]), "Rs"),
        },
        angular_type: {
            "etas": _as_list(ang.get("etas", DEFAULT_ANGULAR["etas"]), "etas"),
            "zetas": zetas,
            "gammas": _as_list(ang.get("gammas", DEFAULT_ANGULAR["gammas"]), "gammas"),
        },
    }


class Gaussian(Featurizer):
    """Behler-Parrinello G2 radial and G3 or G4 angular symmetry functions.

    * G2_i(eta, R_s) = sum_j exp(-eta (R_ij - R_s)^2 / R_c^2) f_c(R_ij)
    * G3_i(eta, zeta, lambda) = 2^(1-zeta) sum_{j<k} (1 + lambda cos theta_ijk)^zeta
      exp(-eta (R_ij^2 + R_ik^2 + R_jk^2) / R_c^2) f_c(R_ij) f_c(R_ik) f_c(R_jk)
    * G4_i: G3 without the R_jk^2 term and without f_c(R_jk)

    (the / R_c^2 only when ``normalized``; R_c is the cutoff of that term). Radial columns per
    neighbour element, angular columns per unordered pair of neighbour elements; with
    ``weighted=True`` (wACSF) terms are weighted by Z_j (Z_j Z_k) and not resolved by element.

    Parameters
    ----------
    cutoff
        R_c in Å, a float or {"radial": r, "angular": r}.
    normalized
        divide the exponents by R_c^2.
    angular_type
        "G3" or "G4".
    elements
        symbols (or atomic numbers); None to fix them later (fit_elements/featurize).
    custom
        ML4Chem-style parameter sets, e.g. {"G2": {"etas": [...], "Rs": [...]},
        "G3": {"etas": [...], "zetas": [...], "gammas": [...]}}; full product grids; a term
        left out keeps the defaults (docs/features.md).
    weighted
        wACSF.
    preprocessor
        ML4Chem's scaling of these features when a model is fitted on
        structures (``model.fit(images, featurizer=...)``): ("MinMaxScaler", {"feature_range":
        (-1, 1)}) (the default), ("StandardScaler", None), or None for none.
    save_preprocessor
        ML4Chem's path for the fitted scaler; atompipe writes it as JSON.
        Neither changes the features or :meth:`get_params`.
    device
        "cpu" or "cuda", where :meth:`featurize` computes (the CPU, with one message,
        when no GPU is present); not part of :meth:`get_params`.

    Output of ``forward``/``featurize``: (n_atoms, n_features), dimensionless.
    """

    name = "gaussian"

    def __init__(
        self,
        cutoff: float | dict = 6.5,
        normalized: bool = True,
        angular_type: str = "G3",
        elements: Iterable[Any] | None = None,
        custom: dict | None = None,
        weighted: bool = False,
        *,
        preprocessor: Any = ("MinMaxScaler", None),
        save_preprocessor: str | None = None,
        device: str = "cpu",
    ) -> None:
        if angular_type not in ("G3", "G4"):
            raise ValueError(f"angular_type must be 'G3' or 'G4', not {angular_type!r}")
        if isinstance(cutoff, dict):
            bad = set(cutoff) - {"radial", "angular"}
            if bad or len(cutoff) != 2:
                raise ValueError("cutoff dict needs exactly the keys 'radial' and 'angular'")
            rc_radial, rc_angular = float(cutoff["radial"]), float(cutoff["angular"])
            self._cutoff_param: float | dict = {"radial": rc_radial, "angular": rc_angular}
        else:
            rc_radial = rc_angular = float(cutoff)
            self._cutoff_param = float(cutoff)
        if min(rc_radial, rc_angular) <= 0:
            raise ValueError("cutoffs must be positive")
        super().__init__(elements=elements, weighted=weighted, device=device)
        self.preprocessor, self.save_preprocessor = preprocessor, save_preprocessor
        self.normalized = bool(normalized)
        self.angular_type = angular_type
        self.params = _resolve_custom(custom, angular_type)
        g2, ang = self.params["G2"], self.params[angular_type]
        self.radial = BehlerRadial(rc_radial, g2["etas"], g2["Rs"], normalized=self.normalized)
        self.angular = BehlerAngular(
            rc_angular,
            ang["etas"],
            ang["zetas"],
            ang["gammas"],
            normalized=self.normalized,
            include_jk=angular_type == "G3",
        )

    @classmethod
    def dense(cls, cutoff: float = 6.5, elements: Iterable[Any] | None = None, **kwargs: Any):
        """The dense systematic set of :func:`dense_parameters` (G2 on a shifted grid, G3 with
        zeta 1..16, lambda +-1, three widths): 12 radial columns per element and 30 angular
        columns per element pair with the defaults."""
        return cls(
            cutoff=cutoff,
            normalized=True,
            angular_type="G3",
            elements=elements,
            custom=dense_parameters(cutoff, **kwargs),
        )

    def get_params(self) -> dict:
        """JSON-serialisable constructor arguments; ``Gaussian(**f.get_params())`` rebuilds f."""
        cutoff = self._cutoff_param
        cutoff = dict(cutoff) if isinstance(cutoff, dict) else cutoff
        return {
            "cutoff": cutoff,
            "normalized": self.normalized,
            "angular_type": self.angular_type,
            "elements": list(self.elements) if self.elements is not None else None,
            "custom": {k: {kk: list(vv) for kk, vv in v.items()} for k, v in self.params.items()},
            "weighted": self.weighted,
        }

    def extra_repr(self) -> str:
        return f"elements={self.elements}, n_features={self.n_features if self.elements else '?'}"
