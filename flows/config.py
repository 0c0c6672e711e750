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
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

# atomistic.models.layers.ACTIVATION_NAMES, written out so that reading a campaign does not import
# torch (tests/unit/flows check that the two agree)
ACTIVATION_NAMES = (
    "tanh",
    "relu",
    "sigmoid",
    "elu",
    "celu",
    "celu0.1",
    "softplus",
    "silu",
    "linear",
)

__all__ = [
    "CampaignConfig",
    "ConfigError",
    "load_campaign",
    "flatten",
]


class ConfigError(ValueError):
    """An invalid campaign file; the message names the file and the key at fault."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Strict):
    paths: list[str] = Field(min_length=1, description="files, globs or folders (ASE-readable)")
    format: str | None = Field(None, description="ASE format name, when the suffix is not enough")
    energy_key: str = Field(
        "energy", min_length=1, description="the energy label: a calculator result or info key"
    )
    forces_key: str = Field(
        "forces", min_length=1, description="the forces: a calculator result or per-atom array"
    )


class SplitConfig(_Strict):
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0

    @field_validator("fractions")
    @classmethod
    def _sum_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(f < 0 for f in v) or abs(sum(v) - 1.0) > 1e-9:
            raise ValueError(f"fractions {v} must be non-negative and sum to 1")
        if v[0] <= 0 or v[2] <= 0:
            raise ValueError(f"fractions {v} leave an empty train or test set")
        return v


class ScalerConfig(_Strict):
    kind: Literal["minmax", "standard"] = "minmax"
    feature_range: tuple[float, float] = (-1.0, 1.0)
    per_element: bool = False


class TrainingSettings(_Strict):
    """Optimisation settings (atomistic.models.training.TrainingConfig; docs/training.md)."""

    epochs: int = Field(200, ge=1)
    max_time: float | None = Field(
        None, gt=0, description="seconds; the first of epochs and max_time ends training"
    )
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adam", "adamw", "lbfgs"] = "adam"
    lr: float = Field(1e-2, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["plateau", "cosine", "step"] | None = "plateau"
    min_lr: float = Field(0.0, ge=0)
    warmup_epochs: float = Field(0.0, ge=0, description="linear learning-rate warm-up")
    ema_decay: float | None = Field(
        None, ge=0, lt=1, description="exponential moving average of the weights"
    )
    grad_clip: float | None = Field(None, gt=0, description="maximum gradient norm")
    patience: int | None = Field(30, ge=1)
    seed: int = 0


class NetworkTrainingSettings(TrainingSettings):
    """The defaults of the potential-fitting recipe measured on the shipped molecules
    (docs/training.md): AdamW, warm-up, cosine decay over epochs or max_time, weight EMA."""

    epochs: int = Field(1000, ge=1)
    optimizer: Literal["adam", "adamw", "lbfgs"] = "adamw"
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    scheduler: Literal["plateau", "cosine", "step"] | None = "cosine"
    min_lr: float = Field(1e-5, ge=0)
    warmup_epochs: float = Field(5.0, ge=0, description="linear learning-rate warm-up")
    ema_decay: float | None = Field(
        0.99, ge=0, lt=1, description="exponential moving average of the weights"
    )
    grad_clip: float | None = Field(10.0, gt=0, description="maximum gradient norm")
    patience: int | None = Field(None, ge=1)


class GaussianFeatures(_Strict):
    type: Literal["gaussian"] = "gaussian"
    dataset: str
    preset: Literal["ml4chem", "dense"] = Field(
        "ml4chem", description="ML4Chem's default set, or a dense shifted set (docs/features.md)"
    )
    cutoff: float | dict[str, float] = 6.5
    normalized: bool = True
    angular_type: Literal["G3", "G4"] = "G3"
    custom: dict[str, dict[str, list[float]]] | None = None
    weighted: bool = False
    elements: list[str] | None = None

    @field_validator("cutoff")
    @classmethod
    def _positive(cls, v: float | dict[str, float]) -> float | dict[str, float]:
        values = v.values() if isinstance(v, dict) else [v]
        if any(c <= 0 for c in values):
            raise ValueError(f"cutoff {v} must be > 0")
        if any(c == float("inf") for c in values):
            raise ValueError(f"cutoff {v} must be finite")
        return v

    @model_validator(mode="after")
    def _preset_alone(self) -> GaussianFeatures:
        if self.preset == "dense" and (self.custom is not None or isinstance(self.cutoff, dict)):
            raise ValueError("preset: dense sets its own parameters: leave out custom, one cutoff")
        return self

    def featurizer_params(self) -> dict[str, Any]:
        out = self.model_dump(exclude={"type", "dataset", "preset"}, exclude_none=True)
        if self.preset == "dense":
            from atomistic.features.gaussian import dense_parameters

            out["custom"] = dense_parameters(float(self.cutoff))  # type: ignore[arg-type]
            out["angular_type"], out["normalized"] = "G3", True
        return out


class AEVFeatures(_Strict):
    type: Literal["aev"] = "aev"
    dataset: str
    preset: Literal["ani1x", "ani2x"] = "ani1x"
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="AEV constants (Rcr, EtaR, ShfR, Rca, EtaA, Zeta, ShfA, ShfZ) over the preset",
    )
    elements: list[str] | None = None

    def featurizer_params(self) -> dict[str, Any]:
        from atomistic.features.aev import PRESETS

        preset: dict[str, Any] = dict(PRESETS[self.preset]) if self.preset != "ani1x" else {}
        out = {**preset, **self.params}
        if self.elements:
            out["elements"] = self.elements
        return out


class AnnealingSettings(_Strict):
    kind: Literal["cyclical", "monotonic"] = Field(
        "cyclical", description="cyclical (Fu et al. 2019) or one monotonic ramp"
    )
    cycles: int = Field(4, ge=1, description="cyclical: number of cycles over the epochs")
    ratio: float = Field(0.5, gt=0, le=1, description="fraction of each cycle spent ramping")


class AutoEncoderSettings(_Strict):
    kind: Literal["autoencoder", "vae"] = "autoencoder"
    hiddenlayers: dict[str, tuple[int, ...]] = {"encoder": (20, 10, 4), "decoder": (4, 10, 20)}
    activation: Literal[ACTIVATION_NAMES] = "tanh"  # type: ignore[valid-type]
    variant: Literal["multivariate", "bernoulli"] = "multivariate"
    beta: float = Field(1.0, ge=0)
    annealing: AnnealingSettings | None = Field(
        None, description="VAE: KL-weight schedule (None: constant beta)"
    )
    per_element: bool = True
    training: TrainingSettings = TrainingSettings(epochs=100, lr=1e-3, batch_size=256)

    @model_validator(mode="after")
    def _vae_only(self) -> AutoEncoderSettings:
        if self.kind == "autoencoder":
            defaults = {"variant": "multivariate", "beta": 1.0, "annealing": None}
            given = [k for k, v in defaults.items() if getattr(self, k) != v]
            if given:
                raise ValueError(f"{', '.join(given)}: only for kind: vae")
        return self

    def canonical(self) -> dict[str, Any]:
        """The settings that change the encoder, and nothing else: what its cache key hashes."""
        out = self.model_dump(mode="json")
        if self.kind == "autoencoder":
            for name in ("variant", "beta", "annealing"):
                del out[name]
        elif self.annealing is not None and self.annealing.kind == "monotonic":
            del out["annealing"]["cycles"]
        return out


class LatentFeatures(_Strict):
    type: Literal["latent"] = "latent"
    source: str = Field(description="the feature set the autoencoder reads (scaled)")
    encoder: AutoEncoderSettings = AutoEncoderSettings()


FeatureConfig = Annotated[
    GaussianFeatures | AEVFeatures | LatentFeatures, Field(discriminator="type")
]


Widths = tuple[Annotated[int, Field(ge=1)], ...]


class NeuralNetworkConfig(_Strict):
    type: Literal["neuralnetwork"] = "neuralnetwork"
    features: str
    hiddenlayers: Widths | dict[str, Widths] = Field(
        (10, 10), description="hidden widths, for every element or per element symbol"
    )
    activation: Literal[ACTIVATION_NAMES] = "relu"  # type: ignore[valid-type]
    force_weight: float = Field(0.0, ge=0, description="> 0 trains on forces too, Å² per atom²")
    energy_weight: float = Field(1.0, ge=0)
    energy_normalization: Literal["atoms", "sqrt_atoms"] = "atoms"
    dtype: Literal["float32", "float64"] = "float32"
    ensemble: int = Field(1, ge=1, description="committee size (uncertainties when > 1)")
    bootstrap: bool = False
    reference_energies: dict[str, float] | None = Field(
        None, description="eV per element; fitted by least squares when absent"
    )
    refit_shift: bool = True
    training: NetworkTrainingSettings = NetworkTrainingSettings()
    device: Literal["cpu", "cuda"] = Field(
        "cpu",
        description="where the networks train: cpu, or cuda (the CPU, with one message, when "
        "no GPU is present); not part of the model's key",
    )

    @field_validator("hiddenlayers")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        for widths in v.values() if isinstance(v, dict) else [v]:
            if len(widths) == 0:
                raise ValueError("at least one hidden layer is needed")
        return v


_Forces = Annotated[
    bool,
    Field(
        description=(
            "fit energies and forces together with a sparse kernel model over `n_sparse` "
            "representative environments per element (GAP-style; rbf kernel only; needs a "
            "featurizer, not latent features); false: the dense energy-only model (ML4Chem's)"
        )
    ),
]
_NSparse = Annotated[
    int, Field(ge=1, description="with `forces`: representative environments per element")
]
_SparseMethod = Annotated[
    Literal["cur", "fps"],
    Field(
        description=(
            "with `forces`: how representatives are chosen, CUR leverage sampling or "
            "farthest-point sampling"
        )
    ),
]
_EnergyNoise = Annotated[
    float,
    Field(
        gt=0,
        description=(
            "with `forces`: energy noise, eV per atom (a structure's is this times "
            "sqrt(atoms)); the GP's starting point when `optimize`"
        ),
    ),
]
_ForceNoise = Annotated[
    float,
    Field(
        gt=0,
        description="with `forces`: force noise, eV/Å; the GP's starting point when `optimize`",
    ),
]
_SPARSE_KEYS = ("forces", "n_sparse", "sparse_method", "energy_noise", "force_noise")


class _SparseKernelKeys(_Strict):
    """Checks shared by ``kernelridge`` and ``gaussianprocess`` for their sparse
    energies-and-forces keys. With ``forces: false`` those keys are left out of the dumped
    configuration, so an energy-only model's cache key is what it was before they existed."""

    @model_validator(mode="after")
    def _sparse_needs_rbf(self) -> _SparseKernelKeys:
        kernel = getattr(self, "kernel", "rbf")
        if getattr(self, "forces", False) and kernel != "rbf":
            raise ValueError(f"forces: true needs kernel: rbf, not {kernel!r}")
        return self

    @model_serializer(mode="wrap")
    def _drop_sparse_defaults(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if not getattr(self, "forces", False):
            for name in _SPARSE_KEYS:
                out.pop(name, None)
        return out


class KernelRidgeConfig(_SparseKernelKeys):
    type: Literal["kernelridge"] = "kernelridge"
    features: str
    kernel: Literal["rbf", "laplacian", "exponential", "linear"] = "rbf"
    sigma: float = Field(1.0, gt=0)
    lamda: float = Field(1e-5, gt=0)
    forces: _Forces = False
    n_sparse: _NSparse = 1000
    sparse_method: _SparseMethod = "cur"
    energy_noise: _EnergyNoise = 0.001
    force_noise: _ForceNoise = 0.01


class GaussianProcessConfig(_SparseKernelKeys):
    type: Literal["gaussianprocess"] = "gaussianprocess"
    features: str
    kernel: Literal["rbf", "laplacian", "exponential", "linear"] = "rbf"
    sigma: float = Field(1.0, gt=0)
    noise: float = Field(1e-5, gt=0)
    optimize: bool = True
    forces: _Forces = False
    n_sparse: _NSparse = 1000
    sparse_method: _SparseMethod = "cur"
    energy_noise: _EnergyNoise = 0.001
    force_noise: _ForceNoise = 0.01


ModelConfig = Annotated[
    NeuralNetworkConfig | KernelRidgeConfig | GaussianProcessConfig, Field(discriminator="type")
]


class EvaluationConfig(_Strict):
    split: Literal["test", "validation"] = "test"
    plots: bool = True
    register_best: bool = True
    metric: Literal["energy_mae_per_atom", "energy_rmse_per_atom", "force_mae"] = (
        "energy_mae_per_atom"
    )


class DaskConfig(_Strict):
    address: str | None = Field(None, description="scheduler address; None starts a LocalCluster")
    n_workers: int | None = Field(None, ge=1)
    rows_per_chunk: int | None = Field(None, ge=1)


class TrackingConfig(_Strict):
    uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite in the workspace"
    )
    experiment: str | None = None


class ActiveExploration(_Strict):
    temperatures: list[Annotated[float, Field(gt=0)]] = Field(
        [300.0], min_length=1, description="Langevin thermostat temperatures, K"
    )
    steps: int = Field(
        200, ge=1, description="MD steps per trajectory (one per start and temperature)"
    )
    interval: int = Field(10, ge=1, description="a snapshot (a candidate) every this many steps")
    timestep_fs: float = Field(2.0, gt=0, description="MD time step, fs")
    friction_per_fs: float = Field(0.02, gt=0, description="Langevin friction, 1/fs")
    starts: int = Field(
        2, ge=1, description="starting structures per iteration, drawn from the labelled set"
    )
    rattle: float = Field(0.0, ge=0, description="Gaussian displacement of the starts' atoms, Å")
    max_uncertainty: float | None = Field(
        None,
        gt=0,
        description="end a trajectory once its force uncertainty exceeds this, eV/Å; nothing "
        "above it is picked",
    )


class ActiveSelection(_Strict):
    method: Literal["uncertainty", "random"] = Field(
        "uncertainty", description="pick uncertain snapshots, or at random (the baseline)"
    )
    threshold: float | Literal["auto"] = Field(
        "auto",
        description="force uncertainty above which a snapshot is a candidate, eV/Å; `auto`: "
        "`factor` × the `quantile` of the validation structures' uncertainties",
    )
    quantile: float = Field(0.9, ge=0, le=1, description="quantile of `threshold: auto`")
    factor: float = Field(1.0, gt=0, description="multiplier of `threshold: auto`")
    max_labels: int = Field(10, ge=1, description="new labels per iteration at most")
    diversity: Literal["fps", "time", "none"] = Field(
        "fps",
        description="`fps`: farthest-point sampling on structure descriptors; `time`: at least "
        "`min_separation` MD steps apart within a trajectory; `none`: most uncertain first",
    )
    min_separation: int = Field(0, ge=0, description="`diversity: time`: MD steps between picks")


class ActiveLabelling(_Strict):
    calculator: str = Field(
        "emt",
        description="reference method: `emt` (ASE), `tblite` (GFN2-xTB, optional extra), or an "
        "import path `module:Class` listed in `allow`",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the calculator"
    )
    allow: list[str] = Field(
        default_factory=list, description="import paths of ASE calculators this campaign trusts"
    )


class ActiveConfig(_Strict):
    model: str = Field(
        description="the campaign model that drives the loop: a neuralnetwork with ensemble > 1"
    )
    test: str | None = Field(
        None,
        description="a campaign dataset used as the fixed test set; default: the test split of "
        "the model's dataset",
    )
    iterations: int = Field(5, ge=1, description="explore-select-label-train rounds at most")
    budget: int | None = Field(None, ge=1, description="stop once this many labels were added")
    target_error: float | None = Field(
        None, gt=0, description="stop once the test force MAE is at or below this, eV/Å"
    )
    warm_start: bool = Field(True, description="start each training from the previous weights")
    seed: int = Field(0, description="seeds the starts, the dynamics and random selection")
    exploration: ActiveExploration = Field(
        default_factory=ActiveExploration, description="molecular dynamics with the model"
    )
    selection: ActiveSelection = Field(
        default_factory=ActiveSelection, description="which snapshots to label"
    )
    labelling: ActiveLabelling = Field(
        default_factory=ActiveLabelling, description="the reference calculator"
    )


class CampaignConfig(_Strict):
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


_TAGS = {"gaussian", "aev", "latent", "neuralnetwork", "kernelridge", "gaussianprocess"}


def _format_error(source: str, exc: ValidationError) -> str:
    lines, seen = [], []
    for err in exc.errors():
        parts = [
            str(p)
            for p in err["loc"]
            if not str(p).startswith("function-after") and "[" not in str(p)  # union members
        ]
        key = ".".join(parts[:3])
        if key and key in seen:  # another member of the same union: its first complaint is enough
            continue
        seen.append(key)
        if len(parts) > 2 and parts[0] in ("models", "features") and parts[2] in _TAGS:
            del parts[2]  # the union's tag (models.krr.kernelridge.sigma): not a key the user wrote
        loc = ".".join(parts)
        kind = err["type"]
        msg = err["msg"].removeprefix("Value error, ")
        if kind == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {loc}: {msg}" if loc else f"{source}: {msg}")
    return "\n".join(lines)


def _yaml_error(source: str, exc: yaml.YAMLError) -> str:
    """One line: the file, the position and what is wrong."""
    mark = getattr(exc, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{source}: not valid YAML{where}: {problem}"


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _inside(path: Path, root: Path) -> bool:
    """``path`` (made absolute, ``..`` collapsed) and its real location lie under ``root``."""
    lexical = Path(os.path.normpath(path))
    if not lexical.is_relative_to(root):
        return False
    # symbolic links: the real path of the longest part that exists (globs cut at the pattern)
    parts = lexical.parts
    stop = next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))
    existing = Path(*parts[:stop])
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    return existing.resolve().is_relative_to(root)


def _project_root(folder: Path) -> Path:
    """The nearest folder at or above ``folder`` that holds ``.git``; else ``folder``."""
    return next((p for p in (folder, *folder.parents) if (p / ".git").exists()), folder)


def _resolve_paths(raw: dict[str, Any], base: Path, source: str) -> None:
    """Resolve ``root``, ``workspace`` and dataset paths in place (see the module docstring)."""
    allow = raw.get("allow_absolute_paths", False) is True
    hint = "set allow_absolute_paths: true to permit it"
    root_raw = raw.get("root", ".")
    if not isinstance(root_raw, str):
        return  # pydantic names the ill-typed key
    if Path(root_raw).is_absolute() and not allow:
        raise ConfigError(f"{source}: root: {root_raw!r} is an absolute path; {hint}")
    root = (base / root_raw).resolve()
    limit = _project_root(base.resolve())
    if not allow and not root.is_relative_to(limit):
        raise ConfigError(
            f"{source}: root: {root_raw!r} climbs above {limit} (the campaign's folder, or the "
            f"repository that holds it); {hint}"
        )
    raw["root"] = str(root)

    def resolve(key: str, value: str) -> str:
        path = root / value  # an absolute value replaces root
        if not allow and not _inside(path, root):
            raise ConfigError(f"{source}: {key}: {value!r} leaves the campaign root {root}; {hint}")
        return os.path.normpath(path)

    workspace = raw.get("workspace", "workspace")
    if isinstance(workspace, str):
        if "://" in workspace:
            raise ConfigError(
                f"{source}: workspace: {workspace!r} must be a local folder; put the Zarr store "
                "on object storage with the store key (store: s3://bucket/store.zarr)"
            )
        raw["workspace"] = resolve("workspace", workspace)
    store = raw.get("store")
    if isinstance(store, str):
        store = store.removeprefix("file://")  # a local path in URL form is a path
        if "://" not in store:  # an object-store URL is the store's own business
            raw["store"] = resolve("store", store)
    tracking = raw.get("tracking")
    uri = tracking.get("uri") if isinstance(tracking, dict) else None
    if isinstance(tracking, dict) and isinstance(uri, str) and uri.startswith("sqlite:///"):
        tracking["uri"] = "sqlite:///" + resolve("tracking.uri", uri[len("sqlite:///") :])
    datasets = raw.get("datasets")
    for name, ds in datasets.items() if isinstance(datasets, dict) else ():
        if isinstance(ds, dict) and isinstance(ds.get("paths"), list):
            ds["paths"] = [
                resolve(f"datasets.{name}.paths", p) if isinstance(p, str) else p
                for p in ds["paths"]
            ]


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
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the campaign file ({exc})") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(_yaml_error(str(path), exc)) from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the campaign file must be a mapping of keys")
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value, str(path))
    _resolve_paths(raw, path.resolve().parent, str(path))
    try:
        return CampaignConfig.model_validate(raw, context={"build_featurizers": build_featurizers})
    except ValidationError as exc:
        raise ConfigError(_format_error(str(path), exc)) from exc


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str = "--set") -> None:
    node = raw
    parts = dotted.split(".")
    for i, part in enumerate(parts[:-1]):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"{source}: --set {dotted}: {where} is not a mapping")
    node[parts[-1]] = value


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings as {"a.b.c": "value"} (for MLflow parameters)."""
    out: dict[str, str] = {}
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = json.dumps(obj) if isinstance(obj, list | tuple) else str(obj)
    return out
