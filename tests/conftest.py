"""Session-wide settings: quiet, offline engines; shared structure builders."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

from flows.settings import configure_environment  # before any engine is imported

configure_environment()  # quiet, offline engines, as `atompipe` itself runs them
os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

# Property tests draw the same examples on every run and every machine (a failure reproduces;
# a pass is not a lucky draw that the next run may not repeat), and keep no example database.
settings.register_profile("atompipe", derandomize=True, database=None)
settings.load_profile("atompipe")

# The packages whose numbers the reference tests compare against. Under
# ATOMPIPE_REQUIRE_REFERENCES=1 (the CI command sets it) a test skipped because one of them is
# missing fails instead: a skip would let CI pass without the comparison it exists for.
REFERENCE_PACKAGES = ("torchani", "dscribe")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and os.environ.get("ATOMPIPE_REQUIRE_REFERENCES") == "1"):
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else ""
    if "could not import" in reason and any(p in reason for p in REFERENCE_PACKAGES):
        report.outcome = "failed"
        report.longrepr = f"{reason} (a reference package is required here)"


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


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    """A real S3 API for a test module: moto's server on 127.0.0.1 (s3fs as the client); yields
    the environment that points a client at it (test credentials, region, endpoint). Skips
    when moto or s3fs is not installed."""
    pytest.importorskip("s3fs")
    server_mod = pytest.importorskip("moto.server")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": f"http://{host}:{port}",
        }
    finally:
        server.stop()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Torch on one thread for a module of tiny networks: faster, and reproducible on a shared
    machine (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
