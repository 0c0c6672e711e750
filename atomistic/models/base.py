"""What every supervised atomistic model shares: its inputs, reference energies, the on-the-fly
feature path with cached neighbour lists (:mod:`atomistic.models.onthefly`, re-exported here),
and the fit/predict/save/load contract.

Inputs are :class:`AtomicData`: a :class:`~atomistic.data.Dataset` plus either precomputed scaled
atomic features aligned with its atoms (the fast path; the pipeline reads them from the Zarr cache)
or a featurizer and scaler that compute them (needed for forces, and for predicting from
``ase.Atoms``). Models keep the featurizer and scaler they were fitted with.

Contract (scikit-learn's): hyperparameters are stored by ``__init__`` only; ``fit``
returns ``self``; learned state ends in ``_``; ``predict`` on an unfitted model raises
:class:`NotFittedError`; ``save(directory)`` and ``load_model(directory)`` never pickle. The
registry, parameters, fitted check, ``save`` and ``load`` are
:class:`~atomistic.models.saved.SavedModel`'s, shared with the autoencoders; this module adds the
supervised models' card entries (featurizer, scaler, elements, training dataset key, metrics,
learned state).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from ase import Atoms
from ase.data import atomic_numbers, chemical_symbols

from atomistic.data import Dataset
from atomistic.features.scaling import Scaler
from atomistic.models.onthefly import NeighborCache, scaled_features_torch, stress_from_strain_grad
from atomistic.models.saved import NotFittedError, SavedModel, TensorFiles

__all__ = [
    "AtomicData",
    "AtomisticModel",
    "NotFittedError",
    "NeighborCache",
    "fit_reference_energies",
    "reference_energy",
    "load_model",
    "scaler_from_preprocessor",
    "scaled_features_torch",
    "stress_from_strain_grad",
]


def _dataset(data: Any, require_energy: bool = False) -> Dataset:
    """A Dataset from ase.Atoms, a sequence of them, or a path ASE can read (every frame)."""
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str | Path):
        from ase.io import read

        frames = read(str(data), index=":")
        frames = frames if isinstance(frames, list) else [frames]
        return Dataset.from_atoms(frames, source=str(data), require_energy=require_energy)
    images = [data] if isinstance(data, Atoms) else list(data)
    if not all(isinstance(a, Atoms) for a in images):
        raise TypeError(
            "expected AtomicData, ase.Atoms, a list of ase.Atoms or a path to a structure file, "
            f"got {type(data).__name__}"
        )
    return Dataset.from_atoms(images, require_energy=require_energy)


_PREPROCESSORS = {
    "minmaxscaler": "minmax",
    "minmax": "minmax",
    "standardscaler": "standard",
    "standard": "standard",
}


def scaler_from_preprocessor(spec: Any) -> Scaler | None:
    """A :class:`Scaler` from ML4Chem's ``preprocessor`` argument: ``("MinMaxScaler",
    {"feature_range": (-1, 1)})``, ``("StandardScaler", None)``, a bare name, a Scaler, or
    None (no scaling)."""
    if spec is None or isinstance(spec, Scaler):
        return spec
    name, kwargs = (spec, None) if isinstance(spec, str) else tuple(spec)
    kind = _PREPROCESSORS.get(str(name).lower())
    if kind is None:
        raise ValueError(f"preprocessor {name!r} is not MinMaxScaler or StandardScaler")
    kwargs = dict(kwargs or {})
    unknown = set(kwargs) - {"feature_range"}
    if unknown or (kind == "standard" and kwargs):
        raise ValueError(f"unsupported preprocessor argument(s) {sorted(kwargs)} for {name}")
    return Scaler(kind, tuple(kwargs.get("feature_range", (-1.0, 1.0))))


# -- inputs ----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class AtomicData:
    """A dataset with the means to get its scaled atomic features.

    dataset: the structures (and labels, for fitting).
    features: scaled features (n_atoms, n_features) float64 aligned with ``dataset``'s atoms, or
        None to compute them with ``featurizer`` and ``scaler``.
    featurizer: an atompipe featurizer (``featurize_arrays``, ``neighbors``, differentiable
        ``forward``); required for forces and on-the-fly features.
    scaler: a fitted :class:`~atomistic.features.scaling.Scaler`, or None for unscaled features.
    """

    dataset: Dataset
    features: np.ndarray | None = None
    featurizer: Any = None
    scaler: Scaler | None = None

    def __post_init__(self) -> None:
        if self.features is not None:
            f = np.asarray(self.features)
            if f.ndim != 2 or f.shape[0] != self.dataset.n_atoms:
                raise ValueError(
                    f"features of shape {f.shape} do not align with the dataset's "
                    f"{self.dataset.n_atoms} atoms"
                )
        elif self.featurizer is None:
            raise ValueError("AtomicData needs precomputed features or a featurizer")

    @classmethod
    def from_atoms(cls, images: Sequence[Atoms], featurizer: Any, scaler: Scaler | None = None):
        return cls(Dataset.from_atoms(list(images)), None, featurizer, scaler)

    def scaled_features(self) -> np.ndarray:
        """(n_atoms, n_features) float64: the given features, or featurized and scaled now."""
        if self.features is not None:
            return np.asarray(self.features, dtype=np.float64)
        d = self.dataset
        X = self.featurizer.featurize_arrays(d.numbers, d.positions, d.cell, d.pbc, d.offsets)
        X = np.asarray(X, dtype=np.float64)
        return X if self.scaler is None else self.scaler.transform(X, d.numbers)


# -- reference energies ------------------------------------------------------------------------
def _counts(numbers: np.ndarray, offsets: np.ndarray, elements: Sequence[str]) -> np.ndarray:
    """(n_structures, n_elements) number of atoms of each element in each structure."""
    S = len(offsets) - 1
    batch = np.repeat(np.arange(S), np.diff(offsets))
    out = np.zeros((S, len(elements)))
    for k, sym in enumerate(elements):
        np.add.at(out[:, k], batch[numbers == atomic_numbers[sym]], 1.0)
    return out


def fit_reference_energies(dataset: Dataset, elements: Sequence[str]) -> dict[str, float]:
    """Per-element reference energies e_Z (eV) minimising sum_s (E_s - sum_Z n_sZ e_Z)^2.

    Least squares (minimum-norm solution when compositions are collinear, e.g. one molecule:
    then sum_Z n_Z e_Z equals the mean energy). Better than a mean energy per atom when
    compositions vary.
    """
    if dataset.energy is None:
        raise ValueError("fitting reference energies needs a dataset with energies")
    C = _counts(dataset.numbers, dataset.offsets, elements)
    ref, *_ = np.linalg.lstsq(C, dataset.energy, rcond=None)
    return {sym: float(e) for sym, e in zip(elements, ref, strict=True)}


def reference_energy(dataset: Dataset, refs: dict[str, float]) -> np.ndarray:
    """(n_structures,) sum of reference energies, eV."""
    elements = list(refs)
    return _counts(dataset.numbers, dataset.offsets, elements) @ np.array(
        [refs[s] for s in elements]
    )


# -- the model contract ------------------------------------------------------------------------
class AtomisticModel(SavedModel):
    """Base of the supervised models: inputs, unfitted checks, prediction from ase.Atoms, and
    the card of a saved model. Registry, parameters, the fitted check, ``save`` and ``load``
    come from :class:`~atomistic.models.saved.SavedModel`. Subclasses implement ``fit``,
    ``predict``, ``_state`` and ``_restore``."""

    has_uncertainty: ClassVar[bool] = False
    _load_hint: ClassVar[str] = "load_model()"

    def _remember_inputs(self, train: AtomicData) -> None:
        if train.dataset.energy is None:
            raise ValueError("fitting needs a dataset with energies")
        self.elements_ = tuple(train.dataset.elements)
        self.featurizer_ = train.featurizer
        self.scaler_ = train.scaler
        self.dataset_key_ = train.dataset.key
        self.metrics_: dict[str, float] = {}

    def _check_elements(self, dataset: Dataset) -> None:
        unknown = sorted(set(dataset.elements) - set(self.elements_))
        if unknown:
            raise ValueError(
                f"element(s) {unknown} were not in the training data {list(self.elements_)}"
            )

    # inputs: AtomicData, ase.Atoms, lists of them, or files ------------------------------
    def _fit_inputs(
        self, train: Any, validation: Any = None, featurizer: Any = None, scaler: Any = None
    ) -> tuple[AtomicData, AtomicData | None]:
        """``fit``'s inputs as :class:`AtomicData`. AtomicData passes unchanged. Structures
        (ase.Atoms, a list of them, or a path ASE can read, all with energies) are featurized
        with ``featurizer`` (default: this model's own once fitted, else ``Gaussian()``, whose
        elements are fixed from the training structures) and scaled by ``scaler`` (default:
        the featurizer's ML4Chem-style ``preprocessor``, a min-max scaler to (-1, 1); an
        unfitted scaler is fitted on the training features; ``False`` for none). A featurizer
        with ``save_preprocessor`` set gets the fitted scaler saved there as JSON."""
        if isinstance(train, AtomicData):
            val = None if validation is None else self._coerce(validation, train)
            return train, val
        ds = _dataset(train, require_energy=True)
        if featurizer is None:
            featurizer = getattr(self, "featurizer_", None)
        if featurizer is None:
            from atomistic.features import Gaussian

            featurizer = Gaussian()
        if getattr(featurizer, "elements", ()) is None:
            featurizer.fit_elements(ds.numbers)
        X = np.asarray(
            featurizer.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets),
            dtype=np.float64,
        )
        if scaler is None:
            scaler = scaler_from_preprocessor(
                getattr(featurizer, "preprocessor", ("MinMaxScaler", None))
            )
        elif scaler is False:
            scaler = None
        if scaler is not None:
            if not hasattr(scaler, "scale_"):
                scaler.fit(X, ds.numbers)
            X = scaler.transform(X, ds.numbers)
            path = getattr(featurizer, "save_preprocessor", None)
            if path:
                scaler.save(path)
        data = AtomicData(ds, X, featurizer, scaler)
        return data, (None if validation is None else self._coerce(validation, data))

    @staticmethod
    def _coerce(data: Any, like: AtomicData, require_energy: bool = True) -> AtomicData:
        if isinstance(data, AtomicData):
            return data
        return AtomicData(
            _dataset(data, require_energy=require_energy), None, like.featurizer, like.scaler
        )

    def _as_data(self, data: Any) -> AtomicData:
        """``predict``'s input as AtomicData: structures get the stored featurizer and scaler."""
        if isinstance(data, AtomicData):
            return data
        self._check_fitted()
        if self.featurizer_ is None:
            raise ValueError(
                "this model was fitted on precomputed features without a featurizer; "
                "it can only predict from features (predict(AtomicData(..., features=X)))"
            )
        return AtomicData(_dataset(data), None, self.featurizer_, self.scaler_)

    # prediction -----------------------------------------------------------------------------
    def predict(
        self, data: AtomicData, forces: bool = False, stress: bool = False
    ) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def predict_atoms(
        self, images: Atoms | Sequence[Atoms], forces: bool = True, stress: bool = False
    ) -> dict:
        """Predict from structures with the stored featurizer and scaler.

        Returns energy (S,) eV, forces: list of (n_i, 3) eV/Å (if ``forces``), stress (S, 6)
        eV/Å^3 in ASE's Voigt order (if ``stress``; NaN for a structure without a 3-D cell)
        and, for models with uncertainty, energy_std (S,) eV.
        """
        self._check_fitted()
        frames = [images] if isinstance(images, Atoms) else list(images)
        data = self._as_data(frames)
        out: dict[str, Any] = self.predict(
            data, forces=forces, **({"stress": True} if stress else {})
        )
        if forces:
            o = data.dataset.offsets
            out["forces"] = [out["forces"][o[s] : o[s + 1]] for s in range(len(frames))]
        return out

    # persistence ----------------------------------------------------------------------------
    def _state(self) -> tuple[dict[str, Any], dict[str, dict[str, torch.Tensor]]]:
        """(JSON-safe learned state, {file stem: {name: tensor}})."""
        raise NotImplementedError

    def _restore(self, state: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]]):
        raise NotImplementedError

    def save(self, directory: str | Path, metrics: dict[str, float] | None = None) -> Path:
        """Write ``card.json`` and safetensors weights into ``directory``; return it.

        Parameters
        ----------
        directory : str or Path
            The model directory (created if missing).
        metrics : dict, optional
            Metrics to record in the card, merged into ``metrics_``.

        Returns
        -------
        Path
            ``directory``.
        """
        self._check_fitted()
        if metrics:
            self.metrics_ = {**self.metrics_, **{k: float(v) for k, v in metrics.items()}}
        return super().save(directory)

    def _saved_state(self) -> tuple[dict[str, Any], TensorFiles]:
        state, tensors = self._state()
        f = self.featurizer_
        card = {
            "featurizer": None if f is None else {"name": f.name, "params": f.get_params()},
            "scaler": None if self.scaler_ is None else self.scaler_.to_dict(),
            "elements": list(self.elements_),
            "training_dataset_key": self.dataset_key_,
            "metrics": self.metrics_,
            "state": state,
        }
        if hasattr(f, "state_tensors"):  # latent features: the encoder's weights travel along
            tensors = {**tensors, "encoder": f.state_tensors()}
        return card, tensors

    def _load_state(
        self, card: dict[str, Any], tensors: TensorFiles, directory: str | Path
    ) -> None:
        f = card["featurizer"]
        if f is not None and f["name"] == "latent":
            from atomistic.models.encoded import EncodedFeaturizer

            self.featurizer_ = EncodedFeaturizer.from_params(f["params"], tensors["encoder"])
        elif f is not None:
            from atomistic.features import featurizer_from_params

            self.featurizer_ = featurizer_from_params(f["name"], f["params"])
        else:
            self.featurizer_ = None
        self.scaler_ = None if card["scaler"] is None else Scaler.from_dict(card["scaler"])
        for sym in card["elements"]:
            if sym not in chemical_symbols:
                raise ValueError(f"{directory}: unknown element {sym!r} in the model card")
        self.elements_ = tuple(card["elements"])
        self.dataset_key_ = card["training_dataset_key"]
        self.metrics_ = dict(card["metrics"])
        self._restore(card["state"], tensors)


def load_model(directory: str | Path) -> AtomisticModel:
    """Load any saved supervised atompipe model; the class is read from its card.

    Parameters
    ----------
    directory : str or Path
        A directory written by :meth:`AtomisticModel.save`.

    Returns
    -------
    AtomisticModel
        The fitted model (:meth:`~atomistic.models.saved.SavedModel.load`).
    """
    return AtomisticModel.load(directory)
