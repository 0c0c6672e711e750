"""The settings and the record of a training run of :func:`atomistic.models.training.train`.

:class:`TrainingConfig` holds the optimisation settings (JSON-safe, part of a model's
parameters and so of its cache key); :class:`History` what a run did, epoch by epoch.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

__all__ = ["History", "TrainingConfig"]

OPTIMIZERS = ("adam", "adamw", "lbfgs")
SCHEDULERS = (None, "plateau", "cosine", "step")


@dataclass
class TrainingConfig:
    """Optimisation settings (all JSON-safe).

    epochs: maximum number of epochs. max_time: maximum wall-clock seconds of this call (None: no
    limit). batch_size: structures per minibatch (used by the models that build batches; the loop
    itself takes batches as given). optimizer: "adam" | "adamw" | "lbfgs" (LBFGS takes one
    ``step`` per epoch over all batches, with ``lbfgs_max_iter`` inner iterations); weight_decay is
    L2 for Adam, decoupled for AdamW. scheduler: None | "plateau" (``plateau_factor`` after
    ``plateau_patience`` epochs without improvement) | "cosine" (to ``min_lr``) | "step"
    (``gamma`` every ``step_size`` epochs). warmup_epochs: linear warm-up of the learning rate
    from lr/100 over this many epochs (fractions allowed; counted in minibatches). grad_clip:
    maximum gradient norm (None: no clipping). ema_decay: decay of the weights' exponential moving
    average (None: no EMA; 0.99-0.999 typical). patience: epochs without an improvement of the
    validation loss (training loss without validation data) by more than ``min_delta`` before
    stopping; None never stops early. The best weights are restored at the end when
    ``restore_best``.
    """

    epochs: int = 100
    max_time: float | None = None
    batch_size: int = 32
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    scheduler: str | None = None
    step_size: int = 100
    gamma: float = 0.5
    plateau_factor: float = 0.5
    plateau_patience: int = 10
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    ema_decay: float | None = None
    patience: int | None = None
    min_delta: float = 0.0
    restore_best: bool = True
    lbfgs_max_iter: int = 20
    grad_clip: float | None = None
    shuffle: bool = True
    seed: int = 0
    checkpoint_dir: str | None = None
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {SCHEDULERS}, got {self.scheduler!r}")
        if self.epochs < 0 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("epochs >= 0, batch_size >= 1 and checkpoint_every >= 1 are required")
        if self.max_time is not None and not self.max_time > 0:
            raise ValueError(f"max_time must be > 0 seconds, got {self.max_time}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {self.warmup_epochs}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class History:
    """What a run did. ``metrics[name][e]`` is the value after epoch ``e`` (0-based) for names
    ``train_<key>`` / ``val_<key>`` of every key the loss function returned, ``lr`` and
    ``epoch_time`` (seconds). ``best_epoch`` is the epoch whose weights the module holds at the end
    (when ``restore_best``); ``wall_time`` is seconds spent in this call (not in resumed epochs)."""

    metrics: dict[str, list[float]] = field(default_factory=dict)
    best_epoch: int = -1
    best_loss: float = math.inf
    stopped_early: bool = False
    stop_reason: str = ""
    epochs_completed: int = 0
    resumed_from: int | None = None
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def last(self) -> dict[str, float]:
        """Metrics of the last completed epoch."""
        return {k: v[-1] for k, v in self.metrics.items() if v}
