"""Feature scaling, fitted on the training split only and saved as JSON (never pickle).

ML4Chem scales atomic features with ``MinMaxScaler(feature_range=(-1, 1))``; the alternative is
``StandardScaler``. Both are fitted with scikit-learn and reduced to an affine map
``x_scaled = x * scale + offset`` so that the same map runs on numpy arrays and, differentiably,
on torch tensors (forces flow through it by autograd).

With ``per_element=True`` each element gets its own map, fitted on that element's atoms only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols
from sklearn.preprocessing import MinMaxScaler, StandardScaler

__all__ = ["Scaler"]

_KINDS = ("minmax", "standard")


class Scaler:
    """Affine feature scaler.

    Parameters
    ----------
    kind:
        ``"minmax"`` (scikit-learn ``MinMaxScaler``) or ``"standard"`` (``StandardScaler``).
    feature_range:
        Target range of ``"minmax"``; ML4Chem's default is (-1, 1).
    per_element:
        Fit one map per element instead of one for all atoms.

    Fitted state: ``scale_`` and ``offset_``, each of shape (n_features,) or, per element,
    dicts symbol -> (n_features,).
    """

    n_features_: int
    scale_: np.ndarray | dict[str, np.ndarray]
    offset_: np.ndarray | dict[str, np.ndarray]

    def __init__(
        self,
        kind: str = "minmax",
        feature_range: tuple[float, float] = (-1.0, 1.0),
        per_element: bool = False,
    ) -> None:
        if kind not in _KINDS:
            raise ValueError(f"scaler kind {kind!r} is not one of {_KINDS}")
        lo, hi = feature_range
        if not lo < hi:
            raise ValueError(f"scaler feature_range {feature_range!r} must have min < max")
        self.kind = kind
        self.feature_range = (float(lo), float(hi))
        self.per_element = per_element

    # -- fitting ---------------------------------------------------------------------------
    def _fit_one(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "minmax":
            sk = MinMaxScaler(feature_range=self.feature_range).fit(X)
            return sk.scale_.astype(np.float64), sk.min_.astype(np.float64)
        sk = StandardScaler().fit(X)
        scale = 1.0 / sk.scale_  # sklearn sets scale_ to 1 for constant columns
        return scale.astype(np.float64), (-sk.mean_ * scale).astype(np.float64)

    def fit(self, X: np.ndarray, numbers: np.ndarray | None = None) -> Scaler:
        """Fit on atomic features ``X`` (n_atoms, n_features).

        ``numbers`` (n_atoms,) are needed by a per-element scaler.
        """
        X = np.asarray(X, dtype=np.float64)
        if X.ndim != 2 or X.shape[0] == 0:
            raise ValueError(f"scaler needs a non-empty (n_atoms, n_features) array, got {X.shape}")
        self.n_features_ = X.shape[1]
        if not self.per_element:
            self.scale_, self.offset_ = self._fit_one(X)
            return self
        if numbers is None:
            raise ValueError("a per-element scaler needs the atomic numbers of the rows")
        numbers = np.asarray(numbers)
        scales: dict[str, np.ndarray] = {}
        offsets: dict[str, np.ndarray] = {}
        for z in np.unique(numbers):
            sym = chemical_symbols[int(z)]
            scales[sym], offsets[sym] = self._fit_one(X[numbers == z])
        self.scale_, self.offset_ = scales, offsets
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "scale_"):
            raise RuntimeError("this Scaler is not fitted yet: call fit() on the training features")

    def _rows(self, numbers: np.ndarray | None, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Per-row scale and offset, each (n, n_features) or broadcastable (n_features,)."""
        if not isinstance(self.scale_, dict) or not isinstance(self.offset_, dict):
            return np.asarray(self.scale_), np.asarray(self.offset_)
        if numbers is None:
            raise ValueError("a per-element scaler needs the atomic numbers of the rows")
        numbers = np.asarray(numbers)
        scale = np.empty((n, self.n_features_))
        offset = np.empty((n, self.n_features_))
        for z in np.unique(numbers):
            sym = chemical_symbols[int(z)]
            if sym not in self.scale_:
                raise ValueError(f"the scaler was not fitted on element {sym!r}")
            mask = numbers == z
            scale[mask], offset[mask] = self.scale_[sym], self.offset_[sym]
        return scale, offset

    # -- applying --------------------------------------------------------------------------
    def transform(self, X: np.ndarray, numbers: np.ndarray | None = None) -> np.ndarray:
        """Scaled copy of ``X`` (n_atoms, n_features), float64."""
        self._check_fitted()
        X = np.asarray(X, dtype=np.float64)
        self._check_width(X.shape[-1])
        scale, offset = self._rows(numbers, X.shape[0])
        return X * scale + offset

    def inverse_transform(self, X: np.ndarray, numbers: np.ndarray | None = None) -> np.ndarray:
        self._check_fitted()
        X = np.asarray(X, dtype=np.float64)
        scale, offset = self._rows(numbers, X.shape[0])
        return (X - offset) / scale

    def transform_torch(self, X: torch.Tensor, numbers: torch.Tensor | None = None) -> torch.Tensor:
        """The same affine map on a tensor, differentiable with respect to ``X``."""
        self._check_fitted()
        self._check_width(X.shape[-1])
        nums = None if numbers is None else numbers.detach().cpu().numpy()
        scale, offset = self._rows(nums, X.shape[0])
        scale_t = torch.as_tensor(scale, dtype=X.dtype, device=X.device)
        offset_t = torch.as_tensor(offset, dtype=X.dtype, device=X.device)
        return X * scale_t + offset_t

    def _check_width(self, width: int) -> None:
        if width != self.n_features_:
            raise ValueError(
                f"the scaler was fitted on {self.n_features_} features, got {width} columns"
            )

    # -- persistence (JSON, never pickle) ----------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "feature_range": list(self.feature_range),
            "per_element": self.per_element,
        }
        if hasattr(self, "scale_"):
            d["n_features"] = self.n_features_
            if isinstance(self.scale_, dict) and isinstance(self.offset_, dict):
                d["scale"] = {s: v.tolist() for s, v in self.scale_.items()}
                d["offset"] = {s: v.tolist() for s, v in self.offset_.items()}
            else:
                d["scale"] = np.asarray(self.scale_).tolist()
                d["offset"] = np.asarray(self.offset_).tolist()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scaler:
        obj = cls(d["kind"], tuple(d["feature_range"]), bool(d["per_element"]))
        if "scale" in d:
            obj.n_features_ = int(d["n_features"])
            if obj.per_element:
                scales = {s: np.asarray(v, dtype=np.float64) for s, v in d["scale"].items()}
                obj.scale_ = scales
                obj.offset_ = {s: np.asarray(v, dtype=np.float64) for s, v in d["offset"].items()}
                for s in scales:
                    atomic_numbers[s]  # unknown symbol -> KeyError naming it
            else:
                obj.scale_ = np.asarray(d["scale"], dtype=np.float64)
                obj.offset_ = np.asarray(d["offset"], dtype=np.float64)
        return obj

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> Scaler:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a valid atompipe scaler file ({exc})") from exc

    def __repr__(self) -> str:
        return (
            f"Scaler(kind={self.kind!r}, feature_range={self.feature_range}, "
            f"per_element={self.per_element})"
        )
