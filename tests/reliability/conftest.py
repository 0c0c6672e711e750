"""One real Prefect API (temporary server and database) for the reliability tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory) -> str:
    """A real, temporary Prefect API (server and database) for in-process flows; its URL is
    handed to ``atompipe`` subprocesses so that they need not start their own."""
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(tmp_path_factory.mktemp("prefect-results"))
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        url = PREFECT_API_URL.value()
        assert url.startswith("http://127.0.0.1:"), url  # the server binds to the loopback
        yield url
