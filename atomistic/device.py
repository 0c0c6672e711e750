"""Where torch work runs: ``cpu`` or ``cuda``, with one clear fallback when no GPU is present."""

from __future__ import annotations

import sys
from collections.abc import Callable

__all__ = ["DEVICES", "resolve_device", "fallback_message"]

DEVICES = ("cpu", "cuda")
_reported: set[str] = set()


def fallback_message(requested: str) -> str:
    return (
        f"device {requested}: no CUDA GPU is available here (torch.cuda.is_available() is "
        "False); running on the CPU instead"
    )


def resolve_device(requested: str = "cpu", report: Callable[[str], None] | None = None) -> str:
    """The device to run on for a ``requested`` one (``cpu``, ``cuda`` or ``cuda:N``).

    ``cuda`` without a usable GPU falls back to ``cpu``; the fallback is reported once per
    process through ``report`` (default: a line on stderr), not once per model or chunk.
    Anything else is a ``ValueError`` naming the value.
    """
    name = str(requested).strip().lower()
    if name == "cpu":
        return "cpu"
    if name.partition(":")[0] != "cuda":
        raise ValueError(f"device {requested!r}: expected one of {', '.join(DEVICES)}")
    import torch

    if torch.cuda.is_available():
        return name
    message = fallback_message(requested)
    if message not in _reported:
        _reported.add(message)
        (report or (lambda m: print(m, file=sys.stderr)))(message)
    return "cpu"
