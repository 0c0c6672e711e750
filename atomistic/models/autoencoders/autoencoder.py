"""The deterministic autoencoder of scaled atomic features, and what the VAE inherits from it:
hyperparameters, the encoder's content key, element routing, fitting through
:func:`atomistic.models.training.train`, and persistence (safetensors beside a JSON card; never
a pickle). The definitions and formulas are in the package docstring
(:mod:`atomistic.models.autoencoders`); the networks are in :mod:`.networks`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from ase.data import atomic_numbers, chemical_symbols

from atomistic.models.autoencoders.networks import SHARED, Batch, ElementNet, ElementNetworks
from atomistic.models.io import ModelFileError
from atomistic.models.layers import ACTIVATIONS
from atomistic.models.saved import RegistryView, SavedModel, TensorFiles
from atomistic.models.training import History, TrainingConfig, minibatches, train

__all__ = ["ENCODER_CLASSES", "FORMAT_VERSION", "AutoEncoder", "load_autoencoder"]

FORMAT_VERSION = 1
_WEIGHTS = "weights"  # weights.safetensors beside card.json
_DEFAULT_LAYERS = {"encoder": (20, 10, 4), "decoder": (4, 10, 20)}


def _sha256_json(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class AutoEncoder(SavedModel):
    """Deterministic autoencoder of scaled atomic features (ML4Chem ``AutoEncoder``).

    Parameters
    ----------
    hiddenlayers:
        ``{"encoder": sizes, "decoder": sizes}``; ``encoder[-1]`` is the latent dimension and
        ``decoder[0]`` must equal it. Default ``{"encoder": (20, 10, 4), "decoder": (4, 10, 20)}``.
    activation:
        A name in :data:`atomistic.models.layers.ACTIVATIONS` (the one table of activations; the
        networks are built by :func:`atomistic.models.layers.mlp`); applied after every hidden
        layer, not after the latent or the output layer.
    per_element:
        One network per element (default) or one shared by all elements.

    Fitted state: ``elements_`` (symbols ordered by atomic number), ``n_features_``,
    ``latent_dim_``, ``module_`` (the torch module, float64), ``history_``, ``config_``,
    ``feature_key_``. Using an unfitted model raises ``NotFittedError``.
    """

    _fitted_attribute = "module_"

    def __init__(
        self,
        hiddenlayers: dict[str, tuple[int, ...]] | None = None,
        activation: str = "tanh",
        per_element: bool = True,
    ) -> None:
        self.hiddenlayers = hiddenlayers
        self.activation = activation
        self.per_element = per_element

    # -- hyperparameters and keys ------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The constructor's arguments, JSON-safe (tuples as lists)."""
        layers = self.hiddenlayers or _DEFAULT_LAYERS
        return {
            "hiddenlayers": {k: [int(s) for s in v] for k, v in layers.items()},
            "activation": self.activation,
            "per_element": bool(self.per_element),
        }

    def _layers(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        layers = self.get_params()["hiddenlayers"]
        if set(layers) != {"encoder", "decoder"}:
            raise ValueError(f"hiddenlayers needs the keys 'encoder' and 'decoder', got {layers}")
        enc, dec = tuple(layers["encoder"]), tuple(layers["decoder"])
        if not enc or not dec or min(enc + dec) < 1:
            raise ValueError(f"hiddenlayers sizes must be positive and non-empty, got {layers}")
        if dec[0] != enc[-1]:
            raise ValueError(
                f"the decoder must start at the latent size {enc[-1]} (the last encoder size), "
                f"got decoder {dec}"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        return enc, dec

    @property
    def weights_sha256(self) -> str:
        """sha256 of the weights as serialized by :meth:`save` (safetensors bytes)."""
        self._check_fitted()
        return hashlib.sha256(self._weights_bytes()).hexdigest()

    @property
    def encoder_key(self) -> str:
        """Content hash of the class, hyperparameters, and, once fitted, the training config, the
        input feature key, the fitted elements and the weights. Any change gives a new key."""
        payload: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "class": type(self).__name__,
            "params": self.get_params(),
        }
        if self._fitted():
            # where checkpoints were kept does not change the encoder
            payload.update(
                config={**self.config_.to_dict(), "checkpoint_dir": None},
                feature_key=self.feature_key_,
                elements=self.elements_,
                weights=self.weights_sha256,
            )
        return _sha256_json(payload)

    # -- data --------------------------------------------------------------------------------
    def _check_X(self, X: np.ndarray, numbers: np.ndarray, where: str) -> tuple[np.ndarray, ...]:
        X = np.asarray(X, dtype=np.float64)
        numbers = np.asarray(numbers).astype(np.int64).reshape(-1)
        if X.ndim != 2 or X.shape[0] != numbers.shape[0]:
            raise ValueError(
                f"{where}: X must be (n_atoms, n_features) with one atomic number per row, "
                f"got X {X.shape} and numbers {numbers.shape}"
            )
        if not np.all(np.isfinite(X)):
            raise ValueError(f"{where}: X contains non-finite values")
        return X, numbers

    def _index(self, numbers: np.ndarray) -> torch.Tensor:
        """Element index (n,) into ``elements_``; an element the model was not fitted on is an
        error that names it."""
        lookup = {atomic_numbers[s]: k for k, s in enumerate(self.elements_)}
        unknown = sorted(set(np.unique(numbers).tolist()) - set(lookup))
        if unknown and self.per_element:
            names = [
                chemical_symbols[z] if 0 < z < len(chemical_symbols) else str(z) for z in unknown
            ]
            raise ValueError(
                f"this model was not fitted on element(s) {names}; it knows {self.elements_}"
            )
        return torch.as_tensor([lookup.get(int(z), 0) for z in numbers], dtype=torch.long)

    def _batch(self, x: torch.Tensor, index: torch.Tensor, rows: torch.Tensor) -> Batch:
        """Rows ``rows`` of ``x`` sorted by element, with the row count of each network."""
        if not self.per_element:
            return x[rows], [len(rows)]
        rows = rows[torch.argsort(index[rows], stable=True)]
        return x[rows], torch.bincount(index[rows], minlength=len(self.elements_)).tolist()

    def _apply(self, method: str, x: np.ndarray, numbers: np.ndarray) -> dict[str, np.ndarray]:
        """Run ``module_.encode``/``decode`` on rows in any element order; outputs in input
        order."""
        index = self._index(numbers)
        order = torch.argsort(index, stable=True)  # rows of the outputs, shape (n,)
        xs, counts = self._batch(torch.as_tensor(x), index, order)
        with torch.no_grad():
            out = getattr(self.module_, method)(xs, counts)
        result = {}
        for name, value in out.items():
            result[name] = np.empty(tuple(value.shape))
            result[name][order.numpy()] = value.numpy()
        return result

    def _checked(self, X: np.ndarray, numbers: np.ndarray, where: str) -> tuple[np.ndarray, ...]:
        self._check_fitted()
        X, numbers = self._check_X(X, numbers, where)
        if X.shape[1] != self.n_features_:
            raise ValueError(
                f"{where}: the model was fitted on {self.n_features_} features, got {X.shape[1]}"
            )
        return X, numbers

    # -- fitting -----------------------------------------------------------------------------
    def _net_kind(self) -> str:
        """The :class:`~.networks.ElementNet` kind: ``"ae"`` here."""
        return "ae"

    def _build(self, n_features: int) -> ElementNetworks:
        enc, dec = self._layers()
        keys = self.elements_ if self.per_element else [SHARED]
        nets = [ElementNet(n_features, enc, dec, self.activation, self._net_kind()) for _ in keys]
        return ElementNetworks(list(keys), nets, self.per_element).double()

    def _validate_fit(self, config: TrainingConfig) -> None:
        """Hook for subclasses (hyperparameter checks that need the config)."""

    def fit(
        self,
        X: np.ndarray,
        numbers: np.ndarray,
        X_val: np.ndarray | None = None,
        numbers_val: np.ndarray | None = None,
        config: TrainingConfig | None = None,
        callback: Callable[[int, dict[str, float]], None] | None = None,
        feature_key: str = "",
    ) -> AutoEncoder:
        """Train on scaled features ``X`` (n_atoms, n_features) of atoms ``numbers`` (n_atoms,).

        ``X_val``/``numbers_val``: held-out atoms, monitored for early stopping and best weights.
        ``config``: :class:`TrainingConfig` (``batch_size`` counts atoms); the seed fixes the
        initial weights and the minibatch order, so two fits give identical weights.
        ``callback(epoch, metrics)`` is passed on to the trainer. ``feature_key`` names the input
        features (their content key); it enters :attr:`encoder_key` and the saved card.
        """
        config = config or TrainingConfig()
        self._layers()
        self._validate_fit(config)
        X, numbers = self._check_X(X, numbers, "fit")
        self._check_range(X, "fit")
        self.elements_ = [chemical_symbols[z] for z in sorted(set(numbers.tolist()))]
        self.n_features_ = int(X.shape[1])
        self.latent_dim_ = int(self._layers()[0][-1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            module = self._build(self.n_features_)
        self.module_, self.config_, self.feature_key_ = module, config, str(feature_key)
        self._set_beta(0, config.epochs)
        x_t, index_t = torch.as_tensor(X), self._index(numbers)
        val = None
        if X_val is not None:
            if numbers_val is None:
                raise ValueError("X_val needs numbers_val")
            Xv, nv = self._check_X(X_val, numbers_val, "fit (validation)")
            self._check_range(Xv, "fit (validation)")
            xv_t, iv_t = torch.as_tensor(Xv), self._index(nv)
            val = [
                self._batch(xv_t, iv_t, r)
                for r in minibatches(len(Xv), config.batch_size, shuffle=False)
            ]
        elif self._monitor_on_train():
            val = [
                self._batch(x_t, index_t, r)
                for r in minibatches(len(X), config.batch_size, shuffle=False)
            ]

        def make_batches(generator: torch.Generator) -> list[Batch]:
            rows = minibatches(len(X), config.batch_size, generator, config.shuffle)
            return [self._batch(x_t, index_t, r) for r in rows]

        def on_epoch(epoch: int, metrics: dict[str, float]) -> None:
            self._set_beta(epoch + 1, config.epochs)
            if callback is not None:
                callback(epoch, metrics)

        self.history_: History = train(module, self._loss, make_batches, val, config, on_epoch)
        return self

    def _monitor_on_train(self) -> bool:
        return False

    def _set_beta(self, epoch: int, epochs: int) -> None:
        pass

    def _check_range(self, X: np.ndarray, where: str) -> None:
        pass

    def _loss(self, module: Any, batch: Batch) -> dict[str, torch.Tensor]:
        x, counts = batch
        recon = module.decode(module.encode(x, counts)["mean"], counts)["mean"]
        mse = ((recon - x) ** 2).mean()
        return {"loss": mse, "mse": mse.detach(), "weight": torch.tensor(float(len(x)))}

    # -- using -------------------------------------------------------------------------------
    def encode(self, X: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """Latent codes (n_atoms, latent_dim), float64; the posterior mean for a VAE."""
        X, numbers = self._checked(X, numbers, "encode")
        self._check_range(X, "encode")
        return self._apply("encode", X, numbers)["mean"]

    def decode(self, Z: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """Decoded features (n_atoms, n_features) from codes ``Z`` (n_atoms, latent_dim): the
        decoder mean (Gaussian), or the probabilities sigmoid(logits) (Bernoulli)."""
        self._check_fitted()
        Z = np.asarray(Z, dtype=np.float64)
        numbers = np.asarray(numbers).astype(np.int64).reshape(-1)
        if Z.ndim != 2 or Z.shape != (numbers.shape[0], self.latent_dim_):
            raise ValueError(f"decode: Z must be (n_atoms, {self.latent_dim_}), got {Z.shape}")
        out = self._apply("decode", Z, numbers)
        return 1.0 / (1.0 + np.exp(-out["logits"])) if "logits" in out else out["mean"]

    def reconstruct(self, X: np.ndarray, numbers: np.ndarray) -> np.ndarray:
        """decode(encode(X)), (n_atoms, n_features) in scaled units."""
        return self.decode(self.encode(X, numbers), numbers)

    def reconstruction_error(self, X: np.ndarray, numbers: np.ndarray) -> float:
        """Mean squared reconstruction error over atoms and features, in scaled units."""
        X = np.asarray(X, dtype=np.float64)
        return float(np.mean((self.reconstruct(X, numbers) - X) ** 2))

    # -- persistence (safetensors + JSON card; never pickle) ---------------------------------
    def _state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().contiguous() for k, v in self.module_.state_dict().items()}

    def _weights_bytes(self) -> bytes:
        return safetensors.torch.save(self._state_dict())

    def save(self, directory: str | Path) -> Path:
        """Write ``weights.safetensors`` and ``card.json`` (hyperparameters, elements, sizes,
        input feature key, training config, history, weights sha256, encoder key) into
        ``directory``; return it. The card and files are
        :class:`~atomistic.models.saved.SavedModel`'s."""
        return super().save(directory)

    def _saved_state(self) -> tuple[dict[str, Any], TensorFiles]:
        card = {
            "elements": self.elements_,
            "n_features": self.n_features_,
            "latent_dim": self.latent_dim_,
            "feature_key": self.feature_key_,
            "config": self.config_.to_dict(),
            "weights_sha256": self.weights_sha256,
            "encoder_key": self.encoder_key,
            "history": self.history_.to_dict(),
        }
        return card, {_WEIGHTS: self._state_dict()}

    def _set_weights(
        self, elements: list[str], n_features: int, latent_dim: int, state: dict[str, torch.Tensor]
    ) -> None:
        """Build the networks for ``elements`` and ``n_features`` and load ``state`` (a
        :meth:`_state_dict`) into them, in evaluation mode."""
        self.elements_, self.n_features_ = list(elements), int(n_features)
        self.latent_dim_ = int(latent_dim)
        self.module_ = self._build(self.n_features_)
        self.module_.load_state_dict(state)
        self.module_.eval()

    def _load_state(
        self, card: dict[str, Any], tensors: TensorFiles, directory: str | Path
    ) -> None:
        """Restore from a card written by :meth:`save`; the weights must hash to the card's
        ``weights_sha256`` (:class:`ModelFileError` otherwise)."""
        self.feature_key_ = card["feature_key"]
        self.config_ = TrainingConfig(**card["config"])
        self.history_ = History(**card["history"])
        self._set_weights(
            card["elements"], card["n_features"], card["latent_dim"], tensors[_WEIGHTS]
        )
        if self.weights_sha256 != card["weights_sha256"]:
            raise ModelFileError(f"{directory}: the loaded weights do not hash to the card's")


# the saved classes by name (the card's "model"): AutoEncoder and its registered subclasses
ENCODER_CLASSES: RegistryView[AutoEncoder] = RegistryView(AutoEncoder)


def load_autoencoder(directory: str | Path) -> AutoEncoder:
    """Load an :class:`AutoEncoder` or :class:`VAE`, whichever the card says."""
    return AutoEncoder.load(directory)
