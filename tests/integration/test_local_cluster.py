"""The LocalCluster's workers run without Dask's MALLOC_TRIM_THRESHOLD_=65536, which made
featurization 3.5x slower on a worker (benchmarks/dask_scaling.py), and bind to 127.0.0.1."""

from __future__ import annotations

import os

from tasks.cluster import dask_client


def _trim() -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_workers_do_without_the_nannys_malloc_trim(monkeypatch):
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")  # as an earlier nanny leaves it
    with dask_client(n_workers=1) as client:
        assert set(client.run(_trim).values()) == {None}
        assert all(a.startswith("tcp://127.0.0.1:") for a in client.run(_trim))
    assert _trim() is None
