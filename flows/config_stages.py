"""The sections of a campaign file that describe its stages: datasets, split, scaler, feature
sets (Gaussian, AEV, latent), models (network, kernel ridge, Gaussian process), evaluation, Dask
and tracking. Each is a frozen pydantic model that refuses unknown keys; the whole file is
:class:`flows.config.CampaignConfig`, and the reference of every key is docs/campaign.md.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_serializer,
    model_validator,
)

__all__ = [
    "ACTIVATION_NAMES",
    "AEVFeatures",
    "AnnealingSettings",
    "AutoEncoderSettings",
    "ConfigError",
    "DaskConfig",
    "DatasetConfig",
    "DirectFeatures",
    "EvaluationConfig",
    "FeatureConfig",
    "GaussianFeatures",
    "GaussianProcessConfig",
    "KernelRidgeConfig",
    "LatentFeatures",
    "ModelConfig",
    "NetworkTrainingSettings",
    "NeuralNetworkConfig",
    "ScalerConfig",
    "SplitConfig",
    "Strict",
    "TrackingConfig",
    "TrainingSettings",
]

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


class ConfigError(ValueError):
    """An invalid campaign file; the message names the file and the key at fault."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(Strict):
    paths: list[str] = Field(min_length=1, description="files, globs or folders (ASE-readable)")
    format: str | None = Field(None, description="ASE format name, when the suffix is not enough")
    energy_key: str = Field(
        "energy", min_length=1, description="the energy label: a calculator result or info key"
    )
    forces_key: str = Field(
        "forces", min_length=1, description="the forces: a calculator result or per-atom array"
    )


class SplitConfig(Strict):
    # atomistic.data.DEFAULT_SPLIT, written out (tests/unit/test_config_choices.py)
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


class ScalerConfig(Strict):
    kind: Literal["minmax", "standard"] = "minmax"
    feature_range: tuple[float, float] = (-1.0, 1.0)
    per_element: bool = False


class TrainingSettings(Strict):
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


class DirectFeatures(Strict):
    """A feature set computed from a dataset's structures (Gaussian, AEV): what every such set
    has, before the keys of its featurizer."""

    type: str
    dataset: str = Field(description="name of an entry of `datasets`")
    device: Literal["cpu", "cuda"] = Field(
        "cpu",
        description="where the features are computed: cpu, or cuda (the CPU, with one message, "
        "when no GPU is present); not part of the features' key",
    )


class GaussianFeatures(DirectFeatures):
    type: Literal["gaussian"] = "gaussian"
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
        out = self.model_dump(exclude={"type", "dataset", "preset", "device"}, exclude_none=True)
        if self.preset == "dense":
            from atomistic.features.gaussian import dense_parameters

            out["custom"] = dense_parameters(float(self.cutoff))  # type: ignore[arg-type]
            out["angular_type"], out["normalized"] = "G3", True
        return out


class AEVFeatures(DirectFeatures):
    type: Literal["aev"] = "aev"
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


class AnnealingSettings(Strict):
    kind: Literal["cyclical", "monotonic"] = Field(
        "cyclical", description="cyclical (Fu et al. 2019) or one monotonic ramp"
    )
    cycles: int = Field(4, ge=1, description="cyclical: number of cycles over the epochs")
    ratio: float = Field(0.5, gt=0, le=1, description="fraction of each cycle spent ramping")


class AutoEncoderSettings(Strict):
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


class LatentFeatures(Strict):
    type: Literal["latent"] = "latent"
    source: str = Field(description="the feature set the autoencoder reads (scaled)")
    encoder: AutoEncoderSettings = AutoEncoderSettings()


FeatureConfig = Annotated[
    GaussianFeatures | AEVFeatures | LatentFeatures, Field(discriminator="type")
]


Widths = tuple[Annotated[int, Field(ge=1)], ...]


class NeuralNetworkConfig(Strict):
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


class _SparseKernelKeys(Strict):
    """The sparse energies-and-forces keys of ``kernelridge`` and ``gaussianprocess``: last in
    their key tables (docs/campaign.md), as a model lists its own keys in a base class after
    this one. With ``forces: false`` they are left out of the dumped configuration, so an
    energy-only model's cache key is what it was before they existed."""

    forces: bool = Field(
        False,
        description="fit energies and forces together with a sparse kernel model over "
        "`n_sparse` representative environments per element (GAP-style; rbf kernel only; needs "
        "a featurizer, not latent features); false: the dense energy-only model (ML4Chem's)",
    )
    n_sparse: int = Field(
        1000, ge=1, description="with `forces`: representative environments per element"
    )
    sparse_method: Literal["cur", "fps"] = Field(
        "cur",
        description="with `forces`: how representatives are chosen, CUR leverage sampling or "
        "farthest-point sampling",
    )
    energy_noise: float = Field(
        0.001,
        gt=0,
        description="with `forces`: energy noise, eV per atom (a structure's is this times "
        "sqrt(atoms)); the GP's starting point when `optimize`",
    )
    force_noise: float = Field(
        0.01,
        gt=0,
        description="with `forces`: force noise, eV/Å; the GP's starting point when `optimize`",
    )

    @model_validator(mode="after")
    def _sparse_needs_rbf(self) -> _SparseKernelKeys:
        kernel = getattr(self, "kernel", "rbf")  # a key of the model's own base class
        if self.forces and kernel != "rbf":
            raise ValueError(f"forces: true needs kernel: rbf, not {kernel!r}")
        return self

    @model_serializer(mode="wrap")
    def _drop_sparse_defaults(self, handler: Any) -> dict[str, Any]:
        out = handler(self)
        if not self.forces:
            for name in _SparseKernelKeys.model_fields:  # these keys only: the class's own
                out.pop(name, None)
        return out


class _KernelKeys(Strict):
    """The keys ``kernelridge`` and ``gaussianprocess`` start with (``type`` narrowed by each)."""

    type: str
    features: str
    kernel: Literal["rbf", "laplacian", "exponential", "linear"] = "rbf"
    sigma: float = Field(1.0, gt=0)


class _KernelRidgeKeys(_KernelKeys):
    type: Literal["kernelridge"] = "kernelridge"
    lamda: float = Field(1e-5, gt=0)


class KernelRidgeConfig(_SparseKernelKeys, _KernelRidgeKeys):
    """``models.<name>`` with ``type: kernelridge``: its own keys, then the sparse ones."""


class _GaussianProcessKeys(_KernelKeys):
    type: Literal["gaussianprocess"] = "gaussianprocess"
    noise: float = Field(1e-5, gt=0)
    optimize: bool = True


class GaussianProcessConfig(_SparseKernelKeys, _GaussianProcessKeys):
    """``models.<name>`` with ``type: gaussianprocess``: its own keys, then the sparse ones."""


ModelConfig = Annotated[
    NeuralNetworkConfig | KernelRidgeConfig | GaussianProcessConfig, Field(discriminator="type")
]


class EvaluationConfig(Strict):
    split: Literal["test", "validation"] = "test"
    plots: bool = True
    register_best: bool = True
    metric: Literal["energy_mae_per_atom", "energy_rmse_per_atom", "force_mae"] = (
        "energy_mae_per_atom"
    )


class DaskConfig(Strict):
    address: str | None = Field(None, description="scheduler address; None starts a LocalCluster")
    n_workers: int | None = Field(None, ge=1)
    rows_per_chunk: int | None = Field(None, ge=1)


class TrackingConfig(Strict):
    uri: str | None = Field(
        None, description="MLflow tracking URI; default sqlite in the workspace"
    )
    experiment: str | None = None
