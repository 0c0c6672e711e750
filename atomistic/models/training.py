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

The pieces live beside this loop: the settings and the record in
:mod:`atomistic.models.training_config`, the optimizer, schedule, EMA and clock in
:mod:`atomistic.models.optimization`, the checkpoint files in :mod:`atomistic.models.checkpoint`;
:class:`TrainingConfig` and :class:`History` stay importable from here.

Example::

    config = TrainingConfig(epochs=200, lr=1e-2, patience=20, seed=0)
    history = train(net, loss_fn, batches, val_batches, config, callback=print)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomistic import interrupt
from atomistic.models.checkpoint import CHECKPOINT, comparable, load_checkpoint, save_checkpoint
from atomistic.models.optimization import EMA, Accumulator, Clock, Schedule, make_optimizer
from atomistic.models.training_config import History, TrainingConfig

__all__ = ["TrainingConfig", "History", "train", "minibatches", "seed_everything"]

LossFn = Callable[[torch.nn.Module, Any], dict[str, torch.Tensor]]
BatchSource = Sequence[Any] | Callable[[torch.Generator], Iterable[Any]]


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


def _check_loss(out: dict[str, torch.Tensor]) -> torch.Tensor:
    if "loss" not in out:
        raise KeyError("loss_fn must return a dict with the key 'loss'")
    loss = out["loss"]
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite training loss {float(loss)}")
    return loss


def _run_epoch(module, loss_fn, batches, optimizer, config, epoch, schedule, ema, clock):
    """One pass over ``batches``; returns (metrics, completed) where completed is False when the
    time budget ran out part-way."""
    module.train()
    acc = Accumulator()
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
    acc = Accumulator()
    for batch in batches:
        acc.add({k: v.detach() for k, v in loss_fn(module, batch).items()})
    module.zero_grad(set_to_none=True)
    return acc.means("val")


def _state_copy(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


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
    clock = Clock(config, time.perf_counter())
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = make_optimizer(module, config)
    schedule = Schedule(config)
    ema = EMA(module, config.ema_decay) if config.ema_decay is not None else None
    history = History()
    best_state = _state_copy(module)
    bad_epochs = 0
    first_epoch = 0

    ckpt_path = Path(config.checkpoint_dir) / CHECKPOINT if config.checkpoint_dir else None
    ckpt = load_checkpoint(ckpt_path) if ckpt_path is not None else None
    if ckpt is not None:
        if ckpt["config"] != comparable(config):
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
            save_checkpoint(
                ckpt_path,
                {
                    "config": comparable(config),
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
