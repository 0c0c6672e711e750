"""Ctrl-C and SIGTERM on the command line: a stop request at the work's next safe point, the
work in a worker thread so that Prefect leaves our handlers in place, and the exit status 130.

Nothing here imports torch or Prefect at module level.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn, TypeVar

import typer

from flows.cli_common import fail

T = TypeVar("T")

INTERRUPTED = 130  # the shell's status for a command stopped by SIGINT


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM ask the work to stop at its next safe point (a featurization chunk,
    a training batch: :mod:`atomistic.interrupt`) instead of killing it mid-write; what is
    complete stays and a rerun resumes from it. A second signal stops at once.

    Yields
    ------
    None
        While the handlers are installed; the previous ones come back on exit.
    """
    import signal

    from atomistic import interrupt

    def handler(signum: int, frame: object) -> None:
        if interrupt.stop_requested():  # impatient: the default behaviour from now on
            signal.signal(signal.SIGINT, signal.default_int_handler)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            raise KeyboardInterrupt
        interrupt.request_stop()

    interrupt.clear()
    sigs = (signal.SIGINT, signal.SIGTERM)
    try:
        previous = {sig: signal.signal(sig, handler) for sig in sigs}
    except ValueError:  # not the main thread (an embedding application): leave its handlers
        previous = {}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def stoppable(fn: Callable[[], T]) -> T:
    """``fn()`` in a worker thread while this (the main) thread waits with the stop handlers
    installed. Prefect swaps in its own SIGTERM handler for a flow run in the main thread (it
    aborts the flow where it stands, training threads still running); a flow in a worker thread
    leaves ours in place, so SIGTERM stops at a safe point exactly as SIGINT does.

    Parameters
    ----------
    fn : callable
        The work, without arguments; it runs in a copy of this thread's context.

    Returns
    -------
    T
        What ``fn`` returned; what it raised is raised here.
    """
    import contextvars
    import threading

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:  # handed to the main thread below
            box["error"] = exc

    context = contextvars.copy_context()  # Prefect's settings (API URL) travel with it
    worker = threading.Thread(target=context.run, args=(target,), name="atompipe-run", daemon=True)
    with stop_on_signals():
        worker.start()
        while worker.is_alive():
            worker.join(0.2)
    if "error" in box:
        raise box["error"]
    return box["result"]


def stopped(exc: BaseException) -> bool:
    """Whether a failure is a stop request (or came after one: a server that died of the
    signal).

    Parameters
    ----------
    exc : BaseException
        What the work raised.

    Returns
    -------
    bool
        True when a stop was requested or ``exc`` is Prefect's interrupt or termination.
    """
    from atomistic import interrupt

    name = type(exc).__name__
    return interrupt.stop_requested() or name in ("Interrupted", "TerminationSignal")


def exit_interrupted(what: str) -> NoReturn:
    """Say that ``what`` stopped and can be resumed, and exit with status 130.

    Parameters
    ----------
    what : str
        The work that stopped (``campaign demo``).

    Raises
    ------
    typer.Exit
        Always, with code :data:`INTERRUPTED`.
    """
    typer.secho(
        f"interrupted: {what} stopped; nothing partial was published, run the same command "
        "again to resume",
        fg=typer.colors.YELLOW,
        err=True,
    )
    raise typer.Exit(code=INTERRUPTED)


def run_or_exit(fn: Callable[[], T], what: str) -> T:
    """:func:`stoppable` ``fn()``, ending the command on failure: a stop exits with status 130,
    an error with one line, ``<what> failed: <error>``, and status 1.

    Parameters
    ----------
    fn : callable
        The flow to run, without arguments.
    what : str
        The work, as the messages name it (``campaign demo``).

    Returns
    -------
    T
        What ``fn`` returned.
    """
    try:
        return stoppable(fn)
    except BaseException as exc:  # the flow failed: one clear line, non-zero exit
        if stopped(exc):
            exit_interrupted(what)
        if not isinstance(exc, Exception):
            raise
        fail(f"{what} failed: {exc}")
