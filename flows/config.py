"""The campaign file: one YAML document validated by typed models.

Every parameter has a default; an unknown or ill-typed key is an error that names it
(pydantic's ``extra="forbid"``). YAML is read with a safe loader only (no Python tags) that also
refuses duplicate keys.

Paths. Relative paths (``datasets.*.paths``, ``workspace``) resolve against the campaign's
``root``: the campaign file's folder, or ``root`` (relative to that folder) when the campaign
sets it. Every path must stay inside the root; a path that leaves it (``..``, an absolute path
elsewhere, a symbolic link pointing out) is an error naming the key, unless the campaign sets
``allow_absolute_paths: true``. An absolute ``root`` needs ``allow_absolute_paths`` too.
The validated configuration holds absolute paths, so a campaign runs the same from any folder
(schedules, deployments, workers).

Modules: the stage sections are in :mod:`flows.config_stages`, the ``active:`` section in
:mod:`flows.config_active`, YAML reading and path resolution in :mod:`flows.config_yaml`; every
name is importable from here too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, ValidationInfo, model_validator

from flows import config_active, config_stages
from flows.config_active import *  # noqa: F403 - the `active:` section, importable from here
from flows.config_active import ActiveConfig
from flows.config_stages import *  # noqa: F403 - every stage section, importable from here
from flows.config_stages import (
    AEVFeatures,
    ConfigError,
    DaskConfig,
    DatasetConfig,
    EvaluationConfig,
    FeatureConfig,
    GaussianFeatures,
    LatentFeatures,
    ModelConfig,
    ScalerConfig,
    SplitConfig,
    Strict,
    TrackingConfig,
)
from flows.config_yaml import UniqueKeyLoader, format_error, resolve_paths, set_dotted, yaml_error
from tasks.tracking import flatten

_UniqueKeyLoader = UniqueKeyLoader  # the name tests and older code use

# the names of the stage sections and of the `active:` section, and this module's own
__all__ = [
    *(name for name in config_stages.__all__ if name != "Strict"),
    *config_active.__all__,
    "CampaignConfig",
    "flatten",
    "load_campaign",
]


class CampaignConfig(Strict):
    name: str = "campaign"
    root: str = Field(
        ".", description="folder that relative paths resolve against and must stay inside"
    )
    workspace: str = "workspace"
    store: str | None = Field(
        None,
        description="Zarr store: a path or an fsspec URL (s3://bucket/store.zarr); "
        "default <workspace>/store.zarr",
    )
    allow_absolute_paths: bool = False
    datasets: dict[str, DatasetConfig] = Field(min_length=1)
    split: SplitConfig = SplitConfig()
    scaler: ScalerConfig = ScalerConfig()
    features: dict[str, FeatureConfig] = Field(min_length=1)
    models: dict[str, ModelConfig] = Field(default_factory=dict)
    evaluation: EvaluationConfig = EvaluationConfig()
    dask: DaskConfig = DaskConfig()
    tracking: TrackingConfig = TrackingConfig()
    active: ActiveConfig | None = Field(
        None, description="an active-learning loop (docs/active-learning.md); `atompipe active`"
    )

    @model_validator(mode="before")
    @classmethod
    def _finite(cls, raw: Any) -> Any:
        """Every number of the campaign is finite: YAML's .inf and .nan are refused by key."""
        where = _non_finite(raw)
        if where is not None:
            raise ValueError(f"{where[0]}: {where[1]!r} is not a finite number")
        return raw

    @model_validator(mode="after")
    def _widths(self) -> CampaignConfig:
        """Every hidden layer has at least one unit ([0] would train a network of nothing)."""
        for name, feat in self.features.items():  # (a network's widths: NeuralNetworkConfig)
            if not isinstance(feat, LatentFeatures):
                continue
            for part, widths in feat.encoder.hiddenlayers.items():
                bad = [w for w in widths if w < 1]
                if bad or not widths:
                    raise ValueError(
                        f"features.{name}.encoder.hiddenlayers.{part}: layer widths must be "
                        f"positive integers, not {bad[0] if bad else 'none'}"
                    )
        return self

    @model_validator(mode="after")
    def _references(self, info: ValidationInfo) -> CampaignConfig:
        build = (info.context or {}).get("build_featurizers", True)
        for name, feat in self.features.items():
            if isinstance(feat, LatentFeatures):
                if feat.source not in self.features or feat.source == name:
                    raise ValueError(f"features.{name}.source: unknown feature set {feat.source!r}")
                if isinstance(self.features[feat.source], LatentFeatures):
                    raise ValueError(f"features.{name}.source: latent from latent is not supported")
            elif feat.dataset not in self.datasets:
                raise ValueError(f"features.{name}.dataset: unknown dataset {feat.dataset!r}")
            elif build:
                _check_featurizer(name, feat)
        for name, model in self.models.items():
            if model.features not in self.features:
                raise ValueError(f"models.{name}.features: unknown feature set {model.features!r}")
        return self

    def dataset_of(self, feature_name: str) -> str:
        feat = self.features[feature_name]
        while isinstance(feat, LatentFeatures):
            feat = self.features[feat.source]
        return feat.dataset

    def dataset_files(self, name: str) -> list[Path]:
        """The files of ``datasets.<name>`` after glob and folder expansion, each checked to lie
        inside the root (a glob or a folder can reach a symbolic link pointing out)."""
        from atomistic.data import expand_paths

        files = expand_paths(self.datasets[name].paths)
        if not self.allow_absolute_paths:
            for f in files:
                if not f.resolve().is_relative_to(self.root):
                    raise ConfigError(
                        f"datasets.{name}.paths: {f} resolves to {f.resolve()}, outside the "
                        f"campaign root {self.root}; set allow_absolute_paths: true to permit it"
                    )
        return files

    @property
    def workspace_path(self) -> Path:
        return Path(self.workspace)

    @property
    def store_url(self) -> str:
        return self.store or str(self.workspace_path / "store.zarr")

    @property
    def tracking_uri(self) -> str:
        return self.tracking.uri or f"sqlite:///{(self.workspace_path / 'mlflow.db').resolve()}"


def _non_finite(node: Any, prefix: str = "") -> tuple[str, float] | None:
    """The dotted key and value of the first NaN or infinite number in ``node``, if any."""
    import math

    if isinstance(node, float) and not math.isfinite(node):
        return prefix.rstrip("."), node
    items = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list | tuple)
        else ()
    )
    for k, v in items:
        found = _non_finite(v, f"{prefix}{k}.")
        if found is not None:
            return found
    return None


def _check_featurizer(name: str, feat: GaussianFeatures | AEVFeatures) -> None:
    """Build the featurizer once (elements as given, else a placeholder) so that bad parameters
    and a featurizer with zero columns fail here, naming the feature set, before any work."""
    from atomistic.features import featurizer_from_params

    params = {**feat.featurizer_params(), "elements": feat.elements or ["H"]}
    try:
        n = featurizer_from_params(feat.type, params).n_features
    except (ValueError, TypeError, KeyError) as exc:
        raise ValueError(f"features.{name}: {exc}") from exc
    if n == 0:
        raise ValueError(f"features.{name}: the {feat.type} featurizer has zero feature columns")


def load_campaign(
    path: str | Path, overrides: dict[str, Any] | None = None, *, build_featurizers: bool = True
) -> CampaignConfig:
    """Read, resolve and validate a campaign file (a safe YAML loader only).

    Relative paths resolve against the campaign's root (by default the file's folder) and must
    stay inside it unless ``allow_absolute_paths: true`` (module docstring).
    ``overrides`` maps dotted keys ("models.nn.hiddenlayers") to values.
    ``build_featurizers=False`` skips building each featurizer once to check its parameters
    (which imports torch): for commands that only read the campaign's names and stores.
    """
    path = Path(path)
    try:
        raw = yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the campaign file ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(yaml_error(str(path), exc)) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the campaign file must be a mapping of keys")
    for key, value in (overrides or {}).items():
        set_dotted(raw, key, value, str(path))
    resolve_paths(raw, path.resolve().parent, str(path))
    try:
        return CampaignConfig.model_validate(raw, context={"build_featurizers": build_featurizers})
    except ValidationError as exc:
        raise ConfigError(format_error(str(path), exc)) from exc
