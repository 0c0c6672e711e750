"""Session-wide settings: quiet, offline engines; shared structure builders."""

from __future__ import annotations

import os
from pathlib import Path

for _name, _value in {
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "GIT_PYTHON_REFRESH": "quiet",
}.items():
    os.environ.setdefault(_name, _value)

import pytest  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"
SHIPPED = {
    "cu": DATA / "cu_emt.extxyz",
    "ethanol": DATA / "ethanol_gfn2.extxyz",
    "malonaldehyde": DATA / "malonaldehyde_gfn2.extxyz",
}


@pytest.fixture(scope="session")
def shipped() -> dict[str, Path]:
    return SHIPPED
