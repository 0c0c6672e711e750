"""Process-wide defaults for the embedded engines: quiet, offline, local."""

from __future__ import annotations

import os

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
