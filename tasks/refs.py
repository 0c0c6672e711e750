"""Typed references: what one stage hands the next (docs/architecture.md).

A reference names arrays by their store and content key and carries a few figures; the arrays
themselves stay in Zarr or in the model directory. Each stage reads its inputs with
``XRef.of(value)``, which takes a reference or its JSON form (a dict, as Prefect persists and
returns it), and returns ``ref.to_dict()``, the JSON form: the results Prefect persists, the
cache keys computed from them and the flows that read them are those of the plain dicts the
stages passed before these types.

Fields in :data:`RUN_REPORT` say how a stage ran, not what it made; they are left out of the
cache keys of the stages downstream (:mod:`tasks.caching`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self

from atomistic.storage import Store

__all__ = ["DatasetRef", "FeatureRef", "ModelRef", "RUN_REPORT", "Ref", "ScalerRef"]

RUN_REPORT = frozenset({"written", "computed_chunks", "trained", "fit_time_s"})
"""Fields that report how a stage ran: an upstream stage that runs again and finds its output
complete (``written`` False, ``computed_chunks`` 0) gives its downstream stages the same keys."""


class Ref:
    """Base of the reference dataclasses: their JSON form, a dict of the fields that are set."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # set on each subclass by @dataclass

    @classmethod
    def of(cls, value: Self | Mapping[str, Any]) -> Self:
        """The reference ``value`` is, or whose JSON form it is.

        Parameters
        ----------
        value : Ref or Mapping[str, Any]
            A reference of this class, or its JSON form (as :meth:`to_dict` writes it, and as
            Prefect returns a persisted result).

        Returns
        -------
        Ref
            ``value`` itself when it is one already.

        Raises
        ------
        TypeError
            A key of ``value`` that is no field of this class (named in the message).
        """
        if isinstance(value, cls):
            return value
        assert isinstance(value, Mapping)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise TypeError(f"{cls.__name__}: unknown field(s) {unknown}")
        return cls(**value)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form.

        Returns
        -------
        dict[str, Any]
            Every field that is not None, by name (nested values are shared, not copied): the
            dict the stages passed before these types, so that cache keys stay what they were.
        """
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True, kw_only=True)
class DatasetRef(Ref):
    """``datasets/<key>`` in ``store``, written by ingest (or grown by active learning).

    ``summary`` is :meth:`atomistic.data.Dataset.summary` (``structures``, ``elements``, ...);
    ``written`` whether this run wrote it (a run report); ``parent`` the dataset it grew from.
    """

    store: str
    key: str
    summary: dict[str, Any]
    written: bool | None = None
    parent: str | None = None

    @property
    def elements(self) -> tuple[str, ...]:
        """The dataset's elements, in the order its features resolve them."""
        return tuple(self.summary["elements"])


@dataclass(frozen=True, kw_only=True)
class FeatureRef(Ref):
    """A feature group ``<kind>/<key>`` (``features`` or ``latent``) of dataset ``dataset``.

    ``featurizer`` and ``params`` rebuild the featurizer (``latent`` with the encoder's key and
    source features for a latent group). Run reports of the featurize stage: ``n_chunks``,
    ``computed_chunks``; of active learning's grow stage: ``featurized_atoms``. A latent group
    adds the encoder (``encoder_dir``), the featurizer and scaler of its source features
    (``source_featurizer``: {"featurizer", "params", "scaler"}) and the encoder's held-out
    figures.
    """

    store: str
    kind: str = "features"
    key: str
    dataset: str
    featurizer: str
    params: dict[str, Any]
    n_chunks: int | None = None
    computed_chunks: int | None = None
    featurized_atoms: int | None = None
    encoder_dir: str | None = None
    source_featurizer: dict[str, Any] | None = None
    reconstruction_mse_test: float | None = None
    scaled_variance_test: float | None = None
    kl_test: float | None = None
    artifacts: list[str] | None = None

    @classmethod
    def from_store(cls, store_url: str, key: str) -> FeatureRef:
        """The reference of a stored feature group, rebuilt from its attributes.

        Parameters
        ----------
        store_url : str
            The store (a folder or an fsspec URL).
        key : str
            The group's content key: ``features/<key>``.

        Returns
        -------
        FeatureRef
            Without run reports.

        Raises
        ------
        KeyError
            No such group (the message names the store and the key).
        """
        attrs: dict[str, Any] = dict(Store(store_url).open("features", key).attrs)
        return cls(
            store=store_url,
            key=key,
            dataset=attrs["dataset"],
            featurizer=attrs["featurizer"],
            params=attrs["params"],
        )


@dataclass(frozen=True, kw_only=True)
class ScalerRef(Ref):
    """A fitted scaler: its JSON form (:meth:`atomistic.features.scaling.Scaler.to_dict`) and
    content key (of the features it was fitted on and itself)."""

    scaler: dict[str, Any]
    key: str


@dataclass(frozen=True, kw_only=True)
class ModelRef(Ref):
    """A model directory ``dir`` (``<workspace>/models/<key>``), complete once its card is
    written.

    ``name`` and ``type`` are the campaign's; ``features`` and ``dataset`` the keys it was
    trained on. Run reports: ``trained`` (whether this run fitted it), ``fit_time_s``. After
    evaluation, ``metrics`` (``evaluation.json``) and the plots (``artifacts``).
    """

    key: str
    dir: str
    dataset: str
    name: str | None = None
    type: str | None = None
    features: str | None = None
    trained: bool | None = None
    fit_time_s: float | None = None
    metrics: dict[str, Any] | None = None
    artifacts: list[str] | None = None
