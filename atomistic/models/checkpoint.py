"""Checkpoints of :func:`atomistic.models.training.train`: written with ``torch.save``
atomically (temporary file, then rename), read back with ``torch.load(weights_only=True)`` (never
executing anything in the file), and tied to the training configuration they were written with.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

import torch

from atomistic.models.training_config import TrainingConfig

__all__ = ["CHECKPOINT", "comparable", "load_checkpoint", "save_checkpoint"]

CHECKPOINT = "last.pt"
# Fields that may change between a run and its resumption without changing the result so far.
RESUMABLE_FIELDS = {"epochs", "checkpoint_dir", "checkpoint_every", "max_time"}


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temporary file unique to this process, then rename: a reader (or a second
    trainer sharing the folder) sees the old checkpoint or the new one, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
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


def comparable(config: TrainingConfig) -> dict[str, Any]:
    """The fields of ``config`` a checkpoint must match to be resumed (all but
    ``RESUMABLE_FIELDS``, which may change between a run and its resumption)."""
    return {k: v for k, v in config.to_dict().items() if k not in RESUMABLE_FIELDS}
