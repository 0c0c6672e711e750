"""A generic, seeded, resumable training loop for any ``torch.nn.Module``.

The loop knows nothing about atoms: a model supplies ``loss_fn(module, batch) -> dict`` of scalar
tensors with the key ``"loss"`` (the value minimised; every other key is logged as a metric, and an
optional ``"weight"`` key weights the batch in the epoch average, e.g. its number of structures).

Data are either a sequence of batches (the order is shuffled each epoch when ``config.shuffle``)
or a callable ``make_batches(generator: torch.Generator) -> Iterable[batch]`` called once per epoch
with the trainer's seeded generator, so that minibatch sampling is reproducible and resumable.

Checkpoints (``config.checkpoint_dir``) hold the module and optimizer state dicts, the scheduler
state, the epoch, the history, the best weights so far and every RNG state the loop uses; they are
written with ``torch.save`` (atomically: temporary file, then rename) and read back with
``torch.load(weights_only=True)``. A rerun with the same configuration resumes after the last
completed epoch and ends with the same weights as an uninterrupted run.

Example::

    config = TrainingConfig(epochs=200, lr=1e-2, patience=20, seed=0)
    history = train(net, loss_fn, batches, val_batches, config, callback=print)
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["TrainingConfig", "History", "train", "minibatches", "seed_everything"]

LossFn = Callable[[torch.nn.Module, Any], dict[str, torch.Tensor]]
BatchSource = Sequence[Any] | Callable[[torch.Generator], Iterable[Any]]

_CHECKPOINT = "last.pt"
# Fields that may change between a run and its resumption without changing the result so far.
_RESUMABLE_FIELDS = {"epochs", "checkpoint_dir", "checkpoint_every"}


@dataclass
class TrainingConfig:
    """Optimisation settings (all JSON-safe).

    epochs: maximum number of epochs. batch_size: structures per minibatch (used by the models
    that build batches; the loop itself takes batches as given). optimizer: "adam" | "lbfgs"
    (LBFGS takes one ``step`` per epoch over all batches, with ``lbfgs_max_iter`` inner
    iterations). scheduler: None | "plateau" | "cosine" | "step". patience: epochs without an
    improvement of the validation loss (training loss without validation data) by more than
    ``min_delta`` before stopping; None never stops early. The best weights are restored at the end
    when ``restore_best``.
    """

    epochs: int = 100
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
        if self.optimizer not in ("adam", "lbfgs"):
            raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {self.optimizer!r}")
        if self.scheduler not in (None, "plateau", "cosine", "step"):
            raise ValueError(
                f"scheduler must be None, 'plateau', 'cosine' or 'step', got {self.scheduler!r}"
            )
        if self.epochs < 0 or self.batch_size < 1 or self.checkpoint_every < 1:
            raise ValueError("epochs >= 0, batch_size >= 1 and checkpoint_every >= 1 are required")

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
    epochs_completed: int = 0
    resumed_from: int | None = None
    wall_time: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def last(self) -> dict[str, float]:
        """Metrics of the last completed epoch."""
        return {k: v[-1] for k, v in self.metrics.items() if v}


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (call before building a module)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - seeding the global generator is the point
    torch.manual_seed(seed)


def minibatches(
    n: int, batch_size: int, generator: torch.Generator | None = None, shuffle: bool = True
) -> list[torch.Tensor]:
    """Split ``range(n)`` into index tensors of at most ``batch_size``; shuffled with
    ``generator`` when ``shuffle``."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    return list(torch.split(order, batch_size))


def _batches(source: BatchSource, generator: torch.Generator, shuffle: bool) -> list[Any]:
    if callable(source):
        return list(source(generator))
    items = list(source)
    if shuffle and len(items) > 1:
        return [items[i] for i in torch.randperm(len(items), generator=generator).tolist()]
    return items


def _make_optimizer(module: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    params = [p for p in module.parameters() if p.requires_grad]
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.weight_decay:
        raise ValueError("weight_decay is not supported with the LBFGS optimizer")
    return torch.optim.LBFGS(
        params, lr=config.lr, max_iter=config.lbfgs_max_iter, line_search_fn="strong_wolfe"
    )


def _make_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig) -> Any:
    if config.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            factor=config.plateau_factor,
            patience=config.plateau_patience,
            min_lr=config.min_lr,
        )
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=max(config.epochs, 1), eta_min=config.min_lr
        )
    if config.scheduler == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=config.step_size, gamma=config.gamma
        )
    return None


class _Accumulator:
    """Weighted running means of a loss function's outputs over one epoch."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.weight = 0.0

    def add(self, out: dict[str, torch.Tensor]) -> None:
        w = float(out["weight"]) if "weight" in out else 1.0
        for k, v in out.items():
            if k != "weight":
                self.sums[k] = self.sums.get(k, 0.0) + w * float(v.detach())
        self.weight += w

    def means(self, prefix: str) -> dict[str, float]:
        return {f"{prefix}_{k}": s / max(self.weight, 1e-300) for k, s in self.sums.items()}


def _check_loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    if "loss" not in out:
        raise KeyError("loss_fn must return a dict with the key 'loss'")
    loss = out["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite training loss {float(loss)}")
    return loss


def _run_epoch(module, loss_fn, batches, optimizer, config) -> dict[str, float]:
    module.train()
    acc = _Accumulator()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    if config.optimizer == "lbfgs":

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            acc.__init__()
            total = torch.zeros(())
            for batch in batches:
                out = loss_fn(module, batch)
                loss = _check_loss(out) / len(batches)
                loss.backward()
                total = total + loss.detach()
                acc.add(out)
            return total

        optimizer.step(closure)
        return acc.means("train")
    for batch in batches:
        optimizer.zero_grad()
        out = loss_fn(module, batch)
        _check_loss(out).backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        acc.add(out)
    return acc.means("train")


def _evaluate(module, loss_fn, batches) -> dict[str, float]:
    # Gradients stay enabled: force losses differentiate the energy with respect to positions.
    module.eval()
    acc = _Accumulator()
    for batch in batches:
        acc.add({k: v.detach() for k, v in loss_fn(module, batch).items()})
    module.zero_grad(set_to_none=True)
    return acc.means("val")


def _state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file unique to this process, then rename: a reader (or a second
    trainer sharing the folder) sees the old checkpoint or the new one, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (``torch.load(weights_only=True)``), or None if there is none.

    Anything that is not a checkpoint of this loop (a pickle with code in it, a truncated file)
    is refused with an error naming the file; nothing in it is executed."""
    try:
        ckpt = torch.load(path, weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(
            f"checkpoint {path} cannot be loaded safely ({first}); remove it to start afresh"
        ) from exc
    keys = ("config", "module", "optimizer", "generator", "history")
    if not isinstance(ckpt, dict) or not all(k in ckpt for k in keys):
        raise ValueError(f"checkpoint {path} is not a training checkpoint; remove it")
    return ckpt


def _comparable(config: TrainingConfig) -> dict[str, Any]:
    return {k: v for k, v in config.to_dict().items() if k not in _RESUMABLE_FIELDS}


def train(
    module: torch.nn.Module,
    loss_fn: LossFn,
    train_data: BatchSource,
    val_data: BatchSource | None = None,
    config: TrainingConfig | None = None,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> History:
    """Train ``module`` in place by minimising ``loss_fn`` and return the :class:`History`.

    ``callback(epoch, metrics)`` is called once per completed epoch (0-based ``epoch``; metrics as
    in :class:`History`, plus ``best_loss``). See the module docstring for the data contract and
    checkpointing.
    """
    config = config or TrainingConfig()
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = _make_optimizer(module, config)
    scheduler = _make_scheduler(optimizer, config)
    history = History()
    best_state = _state_copy(module)
    bad_epochs = 0
    first_epoch = 0

    ckpt_path = Path(config.checkpoint_dir) / _CHECKPOINT if config.checkpoint_dir else None
    ckpt = _load_checkpoint(ckpt_path) if ckpt_path is not None else None
    if ckpt is not None:
        if ckpt["config"] != _comparable(config):
            raise ValueError(
                f"checkpoint {ckpt_path} was written with a different training configuration; "
                "remove it or use another checkpoint_dir"
            )
        module.load_state_dict(ckpt["module"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt["scheduler"] is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        best_state = ckpt["best_state"]
        bad_epochs = ckpt["bad_epochs"]
        h = ckpt["history"]
        history = History(
            metrics={k: list(v) for k, v in h["metrics"].items()},
            best_epoch=h["best_epoch"],
            best_loss=h["best_loss"],
            stopped_early=h["stopped_early"],
            epochs_completed=h["epochs_completed"],
        )
        first_epoch = history.epochs_completed
        history.resumed_from = first_epoch
        if history.stopped_early:
            first_epoch = config.epochs  # nothing left to do

    for epoch in range(first_epoch, config.epochs):
        t0 = time.perf_counter()
        batches = _batches(train_data, generator, config.shuffle)
        metrics = _run_epoch(module, loss_fn, batches, optimizer, config)
        if val_data is not None:
            metrics.update(_evaluate(module, loss_fn, _batches(val_data, generator, False)))
        monitored = metrics["val_loss" if val_data is not None else "train_loss"]
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step(monitored) if config.scheduler == "plateau" else scheduler.step()
        if monitored < history.best_loss - config.min_delta:
            history.best_loss, history.best_epoch = monitored, epoch
            best_state = _state_copy(module)
            bad_epochs = 0
        else:
            bad_epochs += 1
        metrics["epoch_time"] = time.perf_counter() - t0
        for k, v in metrics.items():
            history.metrics.setdefault(k, []).append(float(v))
        history.epochs_completed = epoch + 1
        if config.patience is not None and bad_epochs > config.patience:
            history.stopped_early = True
        if callback is not None:
            callback(epoch, {**metrics, "best_loss": history.best_loss})
        done = history.stopped_early or epoch + 1 == config.epochs
        if ckpt_path is not None and ((epoch + 1) % config.checkpoint_every == 0 or done):
            _save_checkpoint(
                ckpt_path,
                {
                    "config": _comparable(config),
                    "module": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "best_state": best_state,
                    "bad_epochs": bad_epochs,
                    "history": {
                        k: v for k, v in history.to_dict().items() if k not in ("wall_time",)
                    },
                },
            )
        if history.stopped_early:
            break

    if config.restore_best and history.best_epoch >= 0:
        module.load_state_dict(best_state)
    module.eval()
    history.wall_time = time.perf_counter() - start
    return history
