"""Session-wide settings: quiet, offline engines; shared structure builders."""

from __future__ import annotations

import os
from pathlib import Path

from flows.settings import configure_environment  # before any engine is imported

configure_environment()  # quiet, offline engines, as `atompipe` itself runs them
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

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


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> str:
    """One real, temporary Prefect API (server and database) for the whole session, for
    in-process flows; its URL is handed to ``atompipe`` subprocesses so that they need not
    start their own."""
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp_path_factory.mktemp("prefect-results"))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        assert url.startswith("http://127.0.0.1:"), url  # the server binds to the loopback
        yield url


@pytest.fixture(scope="session")
def prefect_harness(prefect_api) -> str:
    return prefect_api
