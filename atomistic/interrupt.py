"""Cooperative interruption of long computations (training epochs, featurization chunks).

Signals reach only the main thread of a process, while the pipeline runs its work in worker
threads (Prefect task runners) and worker processes (Dask). A handler installed by the command
line therefore does not raise inside the work; it calls :func:`request_stop`, and every long loop
in :mod:`atomistic` calls :func:`check` at a safe point (after a minibatch, after a chunk), which
raises :class:`Interrupted` there. What was completed before that point (the last checkpoint, the
completed chunks) stays valid and is resumed by a rerun; nothing partial is published.

Example::

    from atomistic import interrupt
    for batch in batches:
        step(batch)
        interrupt.check()      # raises Interrupted once request_stop() was called
"""

from __future__ import annotations

import threading

__all__ = ["Interrupted", "request_stop", "clear", "stop_requested", "check"]

_STOP = threading.Event()


class Interrupted(Exception):  # noqa: N818 - the name says what happened, like KeyboardInterrupt
    """A stop was requested (SIGINT/SIGTERM); raised at the next safe point."""


def request_stop() -> None:
    """Ask every cooperating loop of this process to stop at its next safe point."""
    _STOP.set()


def clear() -> None:
    """Forget an earlier request (tests; a long-lived process starting new work)."""
    _STOP.clear()


def stop_requested() -> bool:
    return _STOP.is_set()


def check() -> None:
    """Raise :class:`Interrupted` if a stop was requested."""
    if _STOP.is_set():
        raise Interrupted("stopped on request (SIGINT/SIGTERM)")
