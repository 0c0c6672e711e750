"""Process-wide defaults for the embedded engines: quiet, offline, local."""

from __future__ import annotations

import os
from typing import Any

_DEFAULTS = {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}


def configure_environment() -> None:
    """Set the defaults that the user has not set already (never overrides)."""
    for name, value in _DEFAULTS.items():
        os.environ.setdefault(name, value)


def start_prefect_server_apart() -> None:
    """Start Prefect's ephemeral API server now, when no ``PREFECT_API_URL`` is set, as the
    leader of a session of its own.

    Prefect would start it on first use inside the terminal's process group, so Ctrl-C reached
    the server too: it shut down, and the stopping campaign spent a minute retrying its state
    reports ("Connection refused") before it could exit. Apart, it keeps serving while the
    campaign stops at its next safe point; Prefect still stops it when this process exits, and
    on Linux it gets SIGTERM if this process dies without a word (``PR_SET_PDEATHSIG``).
    """
    import signal
    import subprocess
    import types

    from prefect.server.api import server as api_server
    from prefect.settings import PREFECT_API_URL, PREFECT_SERVER_EPHEMERAL_ENABLED

    if PREFECT_API_URL.value() or not PREFECT_SERVER_EPHEMERAL_ENABLED.value():
        return
    instance = api_server.SubprocessASGIServer()
    if instance.running:
        return

    def die_with_parent() -> None:  # in the child, before exec
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # not Linux
            pass

    class _Apart(types.ModuleType):  # `subprocess` as Prefect's server module sees it, one call
        def __getattr__(self, name: str) -> Any:
            return getattr(subprocess, name)

        @staticmethod
        def Popen(*args, **kwargs):  # noqa: N802 - stands in for subprocess.Popen
            kwargs.setdefault("start_new_session", True)
            kwargs.setdefault("preexec_fn", die_with_parent)
            return subprocess.Popen(*args, **kwargs)

    api_server.subprocess = _Apart("subprocess")
    try:
        instance.start()
    finally:
        api_server.subprocess = subprocess
