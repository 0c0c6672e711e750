"""The variational autoencoder (Kingma & Welling 2014, arXiv:1312.6114) of scaled atomic
features, with beta weighting (Higgins et al. 2017) and cyclical KL annealing (Fu et al. 2019).
The formulas are in the package docstring (:mod:`atomistic.models.autoencoders`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from ase.data import atomic_numbers
from torch.nn import functional as F

from atomistic.models.autoencoders.autoencoder import AutoEncoder
from atomistic.models.autoencoders.networks import Batch
from atomistic.models.training import TrainingConfig

__all__ = ["VAE"]


class VAE(AutoEncoder):
    """Variational autoencoder of scaled atomic features (ML4Chem ``VAE``; package docstring).

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

    def _net_kind(self) -> str:
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
