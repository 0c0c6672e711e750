"""The saved-model base shared by the supervised models and the autoencoders.

:class:`SavedModel` holds what every model that is saved to and loaded from a model directory
needs, once:

- a registry of the classes by name (every subclass registers itself on definition, via
  ``__init_subclass__``), from which :meth:`SavedModel.load` picks the class a card names;
- parameters in scikit-learn's convention: :meth:`~SavedModel.get_params` (the ``__init__``
  arguments), their JSON form for the card (:meth:`~SavedModel._json_params`) and back
  (:meth:`~SavedModel._params_from_json`), and ``__repr__`` from them;
- the fitted check: a model whose fitted attribute is missing raises :class:`NotFittedError`;
- saving and loading through :mod:`atomistic.models.io`: ``card.json`` (class name,
  hyperparameters, the subclass's own entries, the sha256 of every file) beside
  ``*.safetensors`` files, each verified before it is read; nothing is ever pickled.

A subclass supplies :meth:`~SavedModel._saved_state` (its card entries and tensor files) and
:meth:`~SavedModel._load_state` (the inverse, on a fresh instance built from the card's
hyperparameters).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar

import torch

from atomistic.models.io import CARD, ModelFileError, read_card, read_tensors, write_model_dir

__all__ = ["NotFittedError", "RegistryView", "SavedModel", "TensorFiles", "load_saved"]

TensorFiles = dict[str, dict[str, torch.Tensor]]
"""File stem -> {tensor name: tensor}; one ``<stem>.safetensors`` file per stem."""


class NotFittedError(RuntimeError):
    """A model was used before ``fit`` (or ``load``)."""


class SavedModel:
    """Base of every model saved as a card and safetensors files.

    Class attributes
    ----------------
    _fitted_attribute : str
        The learned attribute whose presence means "fitted" (default ``"elements_"``).
    _load_hint : str
        How to get a fitted model besides ``fit()``, named in :class:`NotFittedError`.

    Notes
    -----
    Subclasses are registered by class name in one registry shared by every family; a card's
    ``"model"`` entry is that name.
    """

    _registry: ClassVar[dict[str, type[SavedModel]]] = {}
    _fitted_attribute: ClassVar[str] = "elements_"
    _load_hint: ClassVar[str] = "load()"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SavedModel._registry[cls.__name__] = cls

    # -- parameters ------------------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The ``__init__`` arguments, read from the attributes of the same names.

        Returns
        -------
        dict
            Parameter name -> value (scikit-learn convention).
        """
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {n: getattr(self, n) for n in names}

    def _json_params(self) -> dict[str, Any]:
        """:meth:`get_params` as JSON: values with ``to_dict`` become dicts, tuples lists."""
        out = {}
        for k, v in self.get_params().items():
            if hasattr(v, "to_dict"):
                v = v.to_dict()
            elif isinstance(v, tuple):
                v = list(v)
            out[k] = v
        return out

    @classmethod
    def _params_from_json(cls, params: dict[str, Any]) -> dict[str, Any]:
        """The ``__init__`` keyword arguments from a card's ``"hyperparameters"``."""
        return params

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"

    # -- the fitted check ------------------------------------------------------------------------
    def _fitted(self) -> bool:
        return hasattr(self, self._fitted_attribute)

    def _check_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless the model is fitted (or loaded)."""
        if not self._fitted():
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit() or "
                f"{self._load_hint} first"
            )

    # -- persistence -----------------------------------------------------------------------------
    def _saved_state(self) -> tuple[dict[str, Any], TensorFiles]:
        """(the card's entries besides ``model`` and ``hyperparameters``, tensor files)."""
        raise NotImplementedError

    def _load_state(
        self, card: dict[str, Any], tensors: TensorFiles, directory: str | Path
    ) -> None:
        """Restore the fitted state from a verified ``card`` and its ``tensors``."""
        raise NotImplementedError

    def save(self, directory: str | Path) -> Path:
        """Write the tensor files and ``card.json`` into ``directory``.

        Parameters
        ----------
        directory : str or Path
            Created if missing; files of the same names are replaced.

        Returns
        -------
        Path
            ``directory``.
        """
        self._check_fitted()
        entries, tensors = self._saved_state()
        card = {"model": type(self).__name__, "hyperparameters": self._json_params(), **entries}
        return write_model_dir(directory, card, tensors)

    @classmethod
    def registered(cls) -> dict[str, type[Self]]:
        """The registered classes that are ``cls`` or derive from it, by name."""
        return {n: k for n, k in SavedModel._registry.items() if issubclass(k, cls)}

    @classmethod
    def load(cls, directory: str | Path) -> Self:
        """Load a saved model of this class (or a subclass); the class is read from the card.

        Every file's sha256 is checked against the card before it is read, with safetensors
        only; nothing is unpickled.

        Parameters
        ----------
        directory : str or Path
            A directory written by :meth:`save`.

        Returns
        -------
        SavedModel
            A fitted instance of the class the card names.

        Raises
        ------
        ModelFileError
            No or invalid card, a class that is not registered or not a ``cls``, or a missing,
            modified or non-safetensors file (the message names the file).
        """
        import atomistic.models  # noqa: F401  (registers every model class)

        card = read_card(directory)
        name = card["model"]
        klass = SavedModel._registry.get(name)
        if klass is None:
            raise ModelFileError(
                f"{Path(directory) / CARD}: unknown model class {name!r} "
                f"(registered: {sorted(SavedModel._registry)})"
            )
        if not issubclass(klass, cls):
            raise ModelFileError(f"{directory}: holds a {name}, not a {cls.__name__}")
        tensors = {
            stem: read_tensors(directory, card, stem)
            for stem in (f.removesuffix(".safetensors") for f in card["files"])
        }
        model = klass(**klass._params_from_json(card["hyperparameters"]))
        model._load_state(card, tensors, directory)
        return model


T = TypeVar("T", bound=SavedModel)


class RegistryView(Mapping[str, type[T]], Generic[T]):
    """A live, read-only view of the registered subclasses of one class, by name.

    Parameters
    ----------
    base : type
        The class whose registered subclasses (and itself) the view holds.
    """

    def __init__(self, base: type[T]) -> None:
        self._base = base

    def __getitem__(self, name: str) -> type[T]:
        return self._base.registered()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._base.registered())

    def __len__(self) -> int:
        return len(self._base.registered())


def load_saved(directory: str | Path) -> SavedModel:
    """Load any saved atompipe model (supervised or autoencoder); the class is read from its card.

    Parameters
    ----------
    directory : str or Path
        A directory written by ``save``.

    Returns
    -------
    SavedModel
        The fitted model.
    """
    return SavedModel.load(directory)
