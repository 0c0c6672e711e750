"""A generic, seeded, resumable training loop for any ``torch.nn.Module``.

The loop knows nothing about atoms: a model supplies ``loss_fn(module, batch) -> dict`` of scalar
tensors with the key ``"loss"`` (the value minimised; every other key is logged as a metric, and an
optional ``"weight"`` key weights the batch in the epoch average, e.g. its number of structures).

Data are either a sequence of batches (the order is shuffled each epoch when ``config.shuffle``)
or a callable ``make_batches(generator: torch.Generator) -> Iterable[batch]`` called once per epoch
with the trainer's seeded generator, so that minibatch sampling is reproducible and resumable.

Optimisation (:class:`TrainingConfig`): Adam, AdamW (decoupled weight decay, Loshchilov & Hutter,
ICLR 2019) or LBFGS; a linear learning-rate warm-up; constant, plateau, step or cosine decay;
gradient-norm clipping; an exponential moving average (EMA) of the weights, which is what
validation, early stopping, checkpoints and the returned module use when ``ema_decay`` is set
(Polyak & Juditsky 1992; the practice of NequIP and MACE). A run ends after ``epochs`` epochs,
after ``max_time`` seconds (checked after every minibatch) or when the validation loss stops
improving (``patience``), whichever comes first; :attr:`History.stop_reason` says which. The cosine
schedule follows the progress max(epoch / epochs, elapsed / max_time), so it decays to ``min_lr``
within the time budget. Every minibatch ends with :func:`atomistic.interrupt.check`: a requested
stop raises :class:`~atomistic.interrupt.Interrupted` there, and the last checkpoint stays valid.

Checkpoints (``config.checkpoint_dir``) hold the module and optimizer state dicts, the schedule
state, the epoch, the history, the best weights so far and every RNG state the loop uses; they are
written with ``torch.save`` (atomically: temporary file, then rename) and read back with
``torch.load(weights_only=True)``. A rerun with the same configuration resumes after the last
completed epoch and ends with the same weights as an uninterrupted run (when ``max_time`` does not
take part: a time budget depends on the machine).

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

from atomistic import interrupt

__all__ = ["TrainingConfig", "History", "train", "minibatches", "seed_everything"]

LossFn = Callable[[torch.nn.Module, Any], dict[str, torch.Tensor]]
BatchSource = Sequence[Any] | Callable[[torch.Generator], Iterable[Any]]

_CHECKPOINT = "last.pt"
# Fields that may change between a run and its resumption without changing the result so far.
_RESUMABLE_FIELDS = {"epochs", "checkpoint_dir", "checkpoint_every", "max_time"}
_OPTIMIZERS = ("adam", "adamw", "lbfgs")
_SCHEDULERS = (None, "plateau", "cosine", "step")


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
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if self.scheduler not in _SCHEDULERS:
            raise ValueError(f"scheduler must be one of {_SCHEDULERS}, got {self.scheduler!r}")
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
    if config.optimizer in ("adam", "adamw"):
        klass = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
        # the fused kernel updates all parameters in one pass (4x cheaper a step on a CPU)
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        return klass(params, lr=config.lr, weight_decay=config.weight_decay, fused=fused or None)
    if config.weight_decay:
        raise ValueError("weight_decay is not supported with the LBFGS optimizer")
    return torch.optim.LBFGS(
        params, lr=config.lr, max_iter=config.lbfgs_max_iter, line_search_fn="strong_wolfe"
    )


class _Schedule:
    """The learning rate as a function of progress: warm-up (per minibatch) times the decay of
    ``config.scheduler`` (per epoch; cosine follows epochs and elapsed time). Its state is two
    numbers, so checkpoints carry it as plain data."""

    def __init__(self, config: TrainingConfig) -> None:
        self.config = config
        self.plateau_scale = 1.0  # product of the plateau reductions so far
        self.plateau_best = math.inf
        self.plateau_bad = 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.plateau_scale, "best": self.plateau_best, "bad": self.plateau_bad}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.plateau_scale = float(state["scale"])
        self.plateau_best = float(state["best"])
        self.plateau_bad = int(state["bad"])

    def lr(self, epoch: int, step_in_epoch: int, steps_per_epoch: int, progress: float) -> float:
        c = self.config
        if c.scheduler == "cosine":
            base = c.min_lr + (c.lr - c.min_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        elif c.scheduler == "step":
            base = c.lr * c.gamma ** (epoch // c.step_size)
        elif c.scheduler == "plateau":
            base = max(c.lr * self.plateau_scale, c.min_lr)
        else:
            base = c.lr
        warm_steps = c.warmup_epochs * steps_per_epoch
        step = epoch * steps_per_epoch + step_in_epoch
        if warm_steps > 0 and step < warm_steps:
            base *= 0.01 + 0.99 * step / warm_steps
        return base

    def end_epoch(self, monitored: float) -> None:
        """Plateau bookkeeping (as torch's ReduceLROnPlateau, relative threshold 1e-4)."""
        if self.config.scheduler != "plateau":
            return
        if monitored < self.plateau_best * (1 - 1e-4):
            self.plateau_best, self.plateau_bad = monitored, 0
            return
        self.plateau_bad += 1
        if self.plateau_bad > self.config.plateau_patience:
            self.plateau_scale *= self.config.plateau_factor
            self.plateau_bad = 0


class _EMA:
    """Exponential moving average of a module's floating-point parameters (buffers are copied):
    ema <- d ema + (1 - d) p after every step, with d = min(decay, (1 + t) / (10 + t))."""

    def __init__(self, module: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.steps = 0
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.shadow = [p.detach().clone() for p in self.params]

    def update(self) -> None:
        self.steps += 1
        d = min(self.decay, (1 + self.steps) / (10 + self.steps))
        with torch.no_grad():
            torch._foreach_lerp_(self.shadow, [p.detach() for p in self.params], 1.0 - d)

    def swap(self) -> None:
        """Exchange the live weights and the averaged ones (call twice to undo)."""
        with torch.no_grad():
            for p, s in zip(self.params, self.shadow, strict=True):
                tmp = p.detach().clone()
                p.copy_(s)
                s.copy_(tmp)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "shadow": [s.clone() for s in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = int(state["steps"])
        with torch.no_grad():
            for s, v in zip(self.shadow, state["shadow"], strict=True):
                s.copy_(v)


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


@dataclass
class _Clock:
    """Progress of a run: epochs and the wall-clock budget."""

    config: TrainingConfig
    start: float
    spent_before: float = 0.0  # seconds of earlier (resumed) calls, counted against max_time

    def elapsed(self) -> float:
        return self.spent_before + time.perf_counter() - self.start

    def out_of_time(self) -> bool:
        return self.config.max_time is not None and self.elapsed() >= self.config.max_time

    def progress(self, epoch: int, step: int, steps: int) -> float:
        c = self.config
        p = (epoch + step / max(steps, 1)) / max(c.epochs, 1)
        if c.max_time is not None:
            p = max(p, self.elapsed() / c.max_time)
        return p


def _run_epoch(module, loss_fn, batches, optimizer, config, epoch, schedule, ema, clock):
    """One pass over ``batches``; returns (metrics, completed) where completed is False when the
    time budget ran out part-way."""
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

        for g in optimizer.param_groups:
            g["lr"] = schedule.lr(epoch, 0, 1, clock.progress(epoch, 0, 1))
        optimizer.step(closure)
        interrupt.check()
        return acc.means("train"), True
    n = len(batches)
    for k, batch in enumerate(batches):
        lr = schedule.lr(epoch, k, n, clock.progress(epoch, k, n))
        for g in optimizer.param_groups:
            g["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        out = loss_fn(module, batch)
        _check_loss(out).backward()
        if config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        optimizer.step()
        if ema is not None:
            ema.update()
        acc.add(out)
        interrupt.check()
        if clock.out_of_time():
            return acc.means("train"), False
    return acc.means("train"), True


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
    keys = ("config", "module", "optimizer", "schedule", "generator", "history")
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
    in :class:`History`, plus ``best_loss``). See the module docstring for the data contract,
    the schedule, the EMA and checkpointing.
    """
    config = config or TrainingConfig()
    clock = _Clock(config, time.perf_counter())
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = _make_optimizer(module, config)
    schedule = _Schedule(config)
    ema = _EMA(module, config.ema_decay) if config.ema_decay is not None else None
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
        schedule.load_state_dict(ckpt["schedule"])
        if ema is not None:
            ema.load_state_dict(ckpt["ema"])
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
            stop_reason=h["stop_reason"],
            epochs_completed=h["epochs_completed"],
        )
        clock.spent_before = float(ckpt["elapsed"])
        first_epoch = history.epochs_completed
        history.resumed_from = first_epoch
        if history.stop_reason == "patience" or (
            history.stop_reason == "max_time" and clock.out_of_time()
        ):
            first_epoch = config.epochs  # it had ended; nothing left to do
        else:
            history.stop_reason = ""

    for epoch in range(first_epoch, config.epochs):
        t0 = time.perf_counter()
        batches = _batches(train_data, generator, config.shuffle)
        metrics, completed = _run_epoch(
            module, loss_fn, batches, optimizer, config, epoch, schedule, ema, clock
        )
        if ema is not None:
            ema.swap()  # validate, keep and save the averaged weights
        if val_data is not None:
            metrics.update(_evaluate(module, loss_fn, _batches(val_data, generator, False)))
        monitored = metrics["val_loss" if val_data is not None else "train_loss"]
        metrics["lr"] = optimizer.param_groups[0]["lr"]
        schedule.end_epoch(monitored)
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
            history.stopped_early, history.stop_reason = True, "patience"
        elif not completed or clock.out_of_time():
            history.stop_reason = "max_time"
        elif epoch + 1 == config.epochs:
            history.stop_reason = "epochs"
        if callback is not None:
            callback(epoch, {**metrics, "best_loss": history.best_loss})
        done = history.stop_reason != ""
        if ema is not None:
            ema.swap()  # back to the live weights (saved as such, and trained next epoch)
        if ckpt_path is not None and ((epoch + 1) % config.checkpoint_every == 0 or done):
            _save_checkpoint(
                ckpt_path,
                {
                    "config": _comparable(config),
                    "module": module.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict(),
                    "ema": ema.state_dict() if ema is not None else None,
                    "generator": generator.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "best_state": best_state,
                    "bad_epochs": bad_epochs,
                    "elapsed": clock.elapsed(),
                    "history": {
                        k: v for k, v in history.to_dict().items() if k not in ("wall_time",)
                    },
                },
            )
        if done:
            break

    if config.restore_best and history.best_epoch >= 0:
        module.load_state_dict(best_state)
    elif ema is not None:
        ema.swap()
    module.eval()
    history.wall_time = time.perf_counter() - clock.start
    return history
