"""Configuration limits that depend on the data, checked once the datasets are ingested and
before any featurization or training starts: a cutoff that would give each atom an absurd number
of neighbours (``cutoff: 1e6`` makes neighbour lists explode for minutes before anything
fails), and force training on a dataset that has no forces. Each error names the key."""

from __future__ import annotations

from typing import Any

from atomistic.data import neighbour_estimate
from atomistic.storage import Store
from flows.config import AEVFeatures, CampaignConfig, ConfigError, GaussianFeatures
from tasks.refs import DatasetRef

__all__ = ["MAX_NEIGHBOURS", "check_against_data", "no_forces_error", "trains_on_forces"]

MAX_NEIGHBOURS = 2000  # expected neighbours per atom within the cutoff; Cu at 6.5 Å has ~100

_ANI_CUTOFFS = {"Rcr": 5.2, "Rca": 3.5}


def _cutoff(feat: GaussianFeatures | AEVFeatures) -> float:
    if isinstance(feat, GaussianFeatures):
        c = feat.cutoff
        return max(c.values()) if isinstance(c, dict) else float(c)
    return max(float(feat.params.get(k, v)) for k, v in _ANI_CUTOFFS.items())


def trains_on_forces(model: Any) -> str | None:
    """How a model configuration trains on forces (for the message), or None."""
    if getattr(model, "type", None) == "neuralnetwork" and getattr(model, "force_weight", 0) > 0:
        return f"force_weight {model.force_weight}"
    if getattr(model, "forces", False):
        return "forces: true"
    return None


def no_forces_error(cfg: CampaignConfig, dataset: str, models: list[str]) -> str | None:
    """The error for ``dataset`` having no forces, naming the first of ``models`` that trains on
    them from it; None when none does."""
    for name in models:
        model = cfg.models[name]
        how = trains_on_forces(model)
        if how and cfg.dataset_of(model.features) == dataset:
            return (
                f"models.{name}: trains on forces ({how}) but dataset {dataset} has no forces; "
                f"set datasets.{dataset}.forces_key to the per-atom array that holds them, or "
                "train on energies only"
            )
    return None


def check_against_data(cfg: CampaignConfig, datasets: dict[str, Any], models: list[str]) -> None:
    """Raise :class:`~flows.config.ConfigError` naming the key when the configuration cannot
    work on the ingested ``datasets`` (references from the ingest stage)."""
    refs = {name: DatasetRef.of(ref) for name, ref in datasets.items()}
    for ds, d in refs.items():
        message = no_forces_error(cfg, ds, models)
        if message and "force_component_eV_per_A" not in d.summary:
            raise ConfigError(message)
    for name, feat in cfg.features.items():
        if not isinstance(feat, GaussianFeatures | AEVFeatures):
            continue
        d = refs[feat.dataset]
        cutoff = _cutoff(feat)
        estimate, s, width = neighbour_estimate(Store(d.store), d.key, cutoff)
        if estimate > MAX_NEIGHBOURS:
            key = "cutoff" if isinstance(feat, GaussianFeatures) else "params (Rcr, Rca)"
            raise ConfigError(
                f"features.{name}.{key}: a cutoff of {cutoff:g} Å gives about {estimate:.3g} "
                f"neighbours per atom in structure {s} of dataset {feat.dataset} (its cell is "
                f"{width:.3g} Å across); at most {MAX_NEIGHBOURS} are allowed"
            )
