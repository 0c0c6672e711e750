"""Autoencoders of scaled atomic features: ML4Chem's unsupervised atomistic models.

Inputs are scaled atomic features ``X`` (n_atoms, n_features), dimensionless, with the atoms'
atomic numbers ``numbers`` (n_atoms,). With ``per_element=True`` (the default) each element has its
own network (an ``nn.ModuleDict`` keyed by chemical symbol), as in Behler–Parrinello models; with
``per_element=False`` one network serves all elements.

``hiddenlayers`` follows ML4Chem: ``{"encoder": (20, 10, 4), "decoder": (4, 10, 20)}``; the last
encoder size is the latent dimension and the decoder tuple starts with it. The input width is taken
from the data, and the decoder's output layer maps back to it.

- :class:`AutoEncoder`: deterministic encoder and decoder, loss = mean squared error.
- :class:`VAE` (Kingma & Welling 2014, arXiv:1312.6114): Gaussian encoder q(z|x) = N(mu, diag
  sigma^2) with the reparameterisation z = mu + sigma * eps, prior N(0, I), and
  ``variant="multivariate"``: Gaussian decoder p(x|z) = N(mu_x, diag sigma_x^2), reconstruction
  term = Gaussian negative log-likelihood; ``variant="bernoulli"``: Bernoulli decoder (binary
  cross-entropy on logits) for features scaled to [0, 1].
  Loss per atom = reconstruction + beta(epoch) * KL,
  KL = -1/2 sum_k (1 + log s_k^2 - mu_k^2 - s_k^2) (Kingma & Welling 2014, appendix B).
  Cyclical annealing (Fu et al. 2019, NAACL, "Cyclical Annealing Schedule", eq. 5):
  tau = mod(t, ceil(T/M)) / (T/M), beta_t = beta * tau / R for tau <= R, else beta
  (T epochs, M cycles, ratio R, 0-based epoch t).

Training runs through :func:`atomistic.models.training.train`; one sample is one atom, so
``TrainingConfig.batch_size`` counts atoms here. Weights are saved with safetensors beside a JSON
card; nothing is pickled.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import nn
from torch.nn import functional as F

from atomistic.models.base import NotFittedError
from atomistic.models.io import ModelFileError, read_card, read_tensors, write_model_dir
from atomistic.models.layers import ACTIVATIONS, mlp
from atomistic.models.training import History, TrainingConfig, minibatches, train

__all__ = ["AutoEncoder", "VAE", "load_autoencoder"]

FORMAT_VERSION = 1
_WEIGHTS = "weights"  # weights.safetensors beside card.json
_SHARED = "all"  # the ModuleDict key of the one network when per_element=False
_LOGVAR_MIN = -10.0  # soft floor of the decoder's log-variance (sigma >= 7e-3 scaled units)
_DEFAULT_LAYERS = {"encoder": (20, 10, 4), "decoder": (4, 10, 20)}
Batch = tuple[torch.Tensor, list[int]]  # x (B, F) float64 rows sorted by element, rows per element


class _Net(nn.Module):
    """One element's encoder and decoder. ``encode`` returns {"mean"[, "logvar"]} of shape
    (B, latent); ``decode`` returns {"mean"[, "logvar"]} or {"logits"} of shape (B, F)."""

    def __init__(self, n_features: int, enc: tuple, dec: tuple, activation: str, kind: str):
        super().__init__()
        self.kind = kind  # "ae" | "multivariate" | "bernoulli"
        latent = enc[-1]
        if kind == "ae":
            self.encoder = mlp([n_features, *enc], activation, last=False)
            self.decoder = mlp([*dec, n_features], activation, last=False)
            return
        self.encoder = mlp([n_features, *enc[:-1]], activation, last=True)
        width = enc[-2] if len(enc) > 1 else n_features
        self.z_mean, self.z_logvar = nn.Linear(width, latent), nn.Linear(width, latent)
        self.decoder = mlp(list(dec), activation, last=True)
        self.x_head = nn.Linear(dec[-1], n_features)  # mean, or logits when bernoulli
        if kind == "multivariate":
            self.x_logvar = nn.Linear(dec[-1], n_features)

    def encode(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.kind == "ae":
            return {"mean": self.encoder(x)}
        h = self.encoder(x)
        return {"mean": self.z_mean(h), "logvar": self.z_logvar(h)}

    def decode(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.kind == "ae":
            return {"mean": self.decoder(z)}
        h = self.decoder(z)
        if self.kind == "bernoulli":
            return {"logits": self.x_head(h)}
        raw = self.x_logvar(h)
        return {"mean": self.x_head(h), "logvar": _LOGVAR_MIN + F.softplus(raw - _LOGVAR_MIN)}


class _Model(nn.Module):
    """Networks keyed by element symbol (or one keyed ``"all"``); inputs are rows sorted by
    element with ``counts[k]`` rows of ``keys[k]``. ``beta`` is the KL weight of the current epoch
    (a buffer, so that it is checkpointed and a resumed run continues the schedule)."""

    beta: torch.Tensor

    def __init__(self, keys: list[str], nets: list[_Net], per_element: bool):
        super().__init__()
        self.keys, self.per_element = keys, per_element
        self.nets = nn.ModuleDict(dict(zip(keys, nets, strict=True)))
        self.register_buffer("beta", torch.zeros((), dtype=torch.float64))

    def _route(self, method: str, x: torch.Tensor, counts: list[int]) -> dict[str, torch.Tensor]:
        """Apply ``method`` to rows sorted by element: ``counts[k]`` rows of ``keys[k]`` follow
        each other (contiguous slices, no scatter; cheap in the backward pass)."""
        if not self.per_element:
            return getattr(self.nets[_SHARED], method)(x)
        parts: dict[str, list[torch.Tensor]] = {}
        for key, chunk in zip(self.keys, torch.split(x, counts), strict=True):
            if chunk.shape[0] == 0:
                continue
            for name, value in getattr(self.nets[key], method)(chunk).items():
                parts.setdefault(name, []).append(value)
        return {name: torch.cat(values) for name, values in parts.items()}

    def encode(self, x: torch.Tensor, counts: list[int]) -> dict[str, torch.Tensor]:
        return self._route("encode", x, counts)

    def decode(self, z: torch.Tensor, counts: list[int]) -> dict[str, torch.Tensor]:
        return self._route("decode", z, counts)


def _sha256_json(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class AutoEncoder:
    """Deterministic autoencoder of scaled atomic features (ML4Chem ``AutoEncoder``).

    Parameters
    ----------
    hiddenlayers:
        ``{"encoder": sizes, "decoder": sizes}``; ``encoder[-1]`` is the latent dimension and
        ``decoder[0]`` must equal it. Default ``{"encoder": (20, 10, 4), "decoder": (4, 10, 20)}``.
    activation:
        One of ``tanh``, ``relu``, ``sigmoid``, ``elu``, ``softplus``, ``silu``, ``linear``; applied
        after every hidden layer, not after the latent or the output layer.
    per_element:
        One network per element (default) or one shared by all elements.

    Fitted state: ``elements_`` (symbols ordered by atomic number), ``n_features_``,
    ``latent_dim_``, ``module_`` (the torch module, float64), ``history_``, ``config_``,
    ``feature_key_``. Using an unfitted model raises ``NotFittedError``.
    """

    _kind = "ae"

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
    def _build(self, n_features: int) -> _Model:
        enc, dec = self._layers()
        keys = self.elements_ if self.per_element else [_SHARED]
        nets = [_Net(n_features, enc, dec, self.activation, self._kind) for _ in keys]
        return _Model(list(keys), nets, self.per_element).double()

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
    def _fitted(self) -> bool:
        return hasattr(self, "module_")

    def _check_fitted(self) -> None:
        if not self._fitted():
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet: call fit() or load() first"
            )

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
        ``directory``; return it."""
        self._check_fitted()
        card = {
            "model": type(self).__name__,
            "hyperparameters": self.get_params(),
            "elements": self.elements_,
            "n_features": self.n_features_,
            "latent_dim": self.latent_dim_,
            "feature_key": self.feature_key_,
            "config": self.config_.to_dict(),
            "weights_sha256": self.weights_sha256,
            "encoder_key": self.encoder_key,
            "history": self.history_.to_dict(),
        }
        return write_model_dir(directory, card, {_WEIGHTS: self._state_dict()})

    @classmethod
    def load(cls, directory: str | Path) -> AutoEncoder:
        """Read a model written by :meth:`save`. The weights file's sha256 is checked against the
        card before it is read, with safetensors only (:class:`ModelFileError` otherwise)."""
        card = read_card(directory)
        classes = {c.__name__: c for c in (AutoEncoder, VAE)}
        klass = classes.get(card["model"])
        if klass is None or not issubclass(klass, cls):
            raise ModelFileError(f"{directory}: holds a {card['model']}, not a {cls.__name__}")
        state = read_tensors(directory, card, _WEIGHTS)
        obj = klass(**card["hyperparameters"])
        obj.elements_, obj.n_features_ = list(card["elements"]), int(card["n_features"])
        obj.latent_dim_, obj.feature_key_ = int(card["latent_dim"]), card["feature_key"]
        obj.config_ = TrainingConfig(**card["config"])
        obj.history_ = History(**card["history"])
        obj.module_ = obj._build(obj.n_features_)
        obj.module_.load_state_dict(state)
        obj.module_.eval()
        if obj.weights_sha256 != card["weights_sha256"]:
            raise ModelFileError(f"{directory}: the loaded weights do not hash to the card's")
        return obj

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({args})"


class VAE(AutoEncoder):
    """Variational autoencoder of scaled atomic features (ML4Chem ``VAE``; see module docstring).

    Parameters (beyond :class:`AutoEncoder`'s)
    ----------
    variant:
        ``"multivariate"`` (Gaussian decoder, Gaussian NLL) or ``"bernoulli"`` (Bernoulli decoder,
        binary cross-entropy; inputs must lie in [0, 1], e.g. MinMax scaled to (0, 1)).
    beta:
        Weight of the KL term (beta-VAE, Higgins et al. 2017); the annealing target.
    annealing:
        None (constant beta) or ``{"kind": "cyclical", "cycles": M, "ratio": R}`` (Fu et al. 2019);
        ``{"kind": "monotonic", "ratio": R}`` is the one-cycle case.

    The loss per atom sums the reconstruction term over features and the KL over latent
    dimensions; it is averaged over atoms. Training samples z by reparameterisation; evaluation
    (validation) decodes the mean and weighs the KL by the full ``beta``, so that the monitored
    loss is the same objective at every epoch. With annealing and no validation data the training
    atoms are monitored in that way (reported as ``val_*``). The schedule depends on the total
    number of epochs T (Fu et al.'s formula), so an interrupted run resumes on the same schedule
    only with the same ``epochs``.

    Extra fitted state: ``kl_history_`` (mean KL per atom after each epoch, training batches).
    """

    def __init__(
        self,
        hiddenlayers: dict[str, tuple[int, ...]] | None = None,
        activation: str = "tanh",
        variant: str = "multivariate",
        beta: float = 1.0,
        annealing: dict[str, Any] | None = None,
        per_element: bool = True,
    ) -> None:
        super().__init__(hiddenlayers, activation, per_element)
        self.variant = variant
        self.beta = beta
        self.annealing = annealing

    @property
    def _kind(self) -> str:  # type: ignore[override]
        return self.variant

    def get_params(self) -> dict[str, Any]:
        return {
            **super().get_params(),
            "variant": self.variant,
            "beta": float(self.beta),
            "annealing": None if self.annealing is None else dict(self.annealing),
        }

    def _validate_fit(self, config: TrainingConfig) -> None:
        if self.variant not in ("multivariate", "bernoulli"):
            raise ValueError(f"variant must be 'multivariate' or 'bernoulli', got {self.variant!r}")
        if not (self.beta >= 0 and math.isfinite(self.beta)):
            raise ValueError(f"beta must be a finite number >= 0, got {self.beta!r}")
        sched = self._annealing()
        if sched is not None and 0 < config.epochs <= sched[0]:
            raise ValueError(
                f"cyclical annealing with {sched[0]} cycles needs more than {sched[0]} epochs "
                f"(got {config.epochs}): with one epoch per cycle beta would stay 0"
            )

    def _annealing(self) -> tuple[int, float] | None:
        """(cycles, ratio) of the schedule, or None for a constant beta."""
        a = self.annealing
        if a is None:
            return None
        kind = a.get("kind")
        allowed = {"cyclical": {"kind", "cycles", "ratio"}, "monotonic": {"kind", "ratio"}}
        if kind not in allowed:
            raise ValueError(f"annealing kind must be 'cyclical' or 'monotonic', got {kind!r}")
        if set(a) - allowed[kind]:
            raise ValueError(f"unknown annealing key(s) {sorted(set(a) - allowed[kind])}")
        cycles = int(a.get("cycles", 4)) if kind == "cyclical" else 1
        ratio = float(a.get("ratio", 0.5))
        if cycles < 1 or not 0 < ratio <= 1:
            raise ValueError(f"annealing needs cycles >= 1 and 0 < ratio <= 1, got {a}")
        return cycles, ratio

    def beta_schedule(self, epoch: int, epochs: int | None = None) -> float:
        """KL weight at 0-based ``epoch`` of a run of ``epochs`` epochs (default: the fitted
        config's). Cyclical (Fu et al. 2019): tau = mod(t, ceil(T/M)) / (T/M);
        beta_t = beta * min(1, tau / R)."""
        sched = self._annealing()
        if sched is None:
            return float(self.beta)
        if epochs is None:
            if not self._fitted():
                raise ValueError("beta_schedule needs `epochs` before the model is fitted")
            epochs = self.config_.epochs
        cycles, ratio = sched
        period = epochs / cycles
        tau = (epoch % math.ceil(period)) / period
        return float(self.beta) * min(1.0, tau / ratio)

    def _set_beta(self, epoch: int, epochs: int) -> None:
        self.module_.beta.fill_(self.beta_schedule(epoch, max(epochs, 1)))

    def _monitor_on_train(self) -> bool:
        return self._annealing() is not None

    def _check_range(self, X: np.ndarray, where: str) -> None:
        if self.variant == "bernoulli" and X.size and (X.min() < 0.0 or X.max() > 1.0):
            raise ValueError(
                f"{where}: a Bernoulli VAE needs features in [0, 1], got values in "
                f"[{X.min():.4g}, {X.max():.4g}]; scale with feature_range=(0, 1)"
            )

    def _loss(self, module: Any, batch: Batch) -> dict[str, torch.Tensor]:
        x, counts = batch
        q = module.encode(x, counts)
        mu, logvar = q["mean"], q["logvar"]
        if module.training:  # reparameterisation z = mu + sigma * eps
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
            beta = module.beta
        else:
            z, beta = mu, torch.tensor(float(self.beta), dtype=x.dtype)
        p = module.decode(z, counts)
        if self.variant == "bernoulli":
            rec = F.binary_cross_entropy_with_logits(p["logits"], x, reduction="none").sum(1)
            x_hat = torch.sigmoid(p["logits"])
        else:  # Gaussian NLL per atom: 1/2 sum_f [log 2 pi + log s^2 + (x - m)^2 / s^2]
            rec = 0.5 * (
                math.log(2 * math.pi) + p["logvar"] + (x - p["mean"]) ** 2 * torch.exp(-p["logvar"])
            ).sum(1)
            x_hat = p["mean"]
        kl = -0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(1)
        rec, kl = rec.mean(), kl.mean()
        return {
            "loss": rec + beta * kl,
            "reconstruction": rec.detach(),
            "kl": kl.detach(),
            "mse": ((x_hat - x) ** 2).mean().detach(),
            "beta": beta.detach().clone(),
            "weight": torch.tensor(float(len(x))),
        }

    @property
    def kl_history_(self) -> list[float]:
        self._check_fitted()
        return list(self.history_.metrics.get("train_kl", []))

    def kl_divergence(self, X: np.ndarray, numbers: np.ndarray) -> float:
        """Mean KL(q(z|x) || N(0, I)) per atom (nats) of scaled features ``X`` (n_atoms,
        n_features)."""
        X, numbers = self._checked(X, numbers, "kl_divergence")
        self._check_range(X, "kl_divergence")
        q = self._apply("encode", X, numbers)
        mu, logvar = q["mean"], q["logvar"]
        return float(np.mean(-0.5 * (1 + logvar - mu**2 - np.exp(logvar)).sum(1)))

    def sample(self, n: int, element: str | None = None, seed: int = 0) -> np.ndarray:
        """Draw ``n`` codes from the prior N(0, I) (seeded) and decode them with ``element``'s
        network: (n, n_features) decoded features (decoder mean, or Bernoulli probabilities)."""
        self._check_fitted()
        if element is None:
            if self.per_element and len(self.elements_) > 1:
                raise ValueError(f"sample needs an element, one of {self.elements_}")
            element = self.elements_[0]
        if element not in self.elements_:
            raise ValueError(
                f"this model was not fitted on element {element!r}; it knows {self.elements_}"
            )
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((n, self.latent_dim_), generator=g, dtype=torch.float64)
        return self.decode(z.numpy(), np.full(n, atomic_numbers[element]))


def load_autoencoder(directory: str | Path) -> AutoEncoder:
    """Load an :class:`AutoEncoder` or :class:`VAE`, whichever the card says."""
    return AutoEncoder.load(directory)
