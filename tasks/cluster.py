"""Dask clusters: a LocalCluster sized to the machine by default, or a scheduler address."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster

from atomistic import interrupt

__all__ = ["dask_client", "ClusterError"]


# Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 to its workers (and to this process): glibc
# then hands memory back to the OS after each large free, and featurization ran 3.5x slower on a
# LocalCluster worker than without it (benchmarks/dask_scaling.py). Our workers do without.
_NANNY_TRIM = "65536"
_NO_TRIM = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


class ClusterError(RuntimeError):
    """The Dask scheduler cannot be reached; the message names its address."""


def _worker_setup() -> None:  # runs on every worker: one thread per process for torch
    import signal
    import threading

    import torch

    torch.set_num_threads(1)
    # Ctrl-C in a terminal reaches the whole process group, workers included: a worker dying
    # of it mid-chunk prints a traceback and loses the scheduler. The campaign process stops
    # its workers itself (it cancels their chunks and closes the cluster).
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


@contextmanager
def dask_client(
    address: str | None = None, n_workers: int | None = None, timeout: float = 10.0
) -> Iterator[Client]:
    """A Dask client: connected to ``address`` if given, else to a fresh LocalCluster.

    The LocalCluster binds to 127.0.0.1, has one single-threaded worker process per core
    (``n_workers`` to override) and no dashboard.
    """
    if address:
        try:
            client = Client(address, timeout=timeout)
        except (OSError, TimeoutError) as exc:
            raise ClusterError(f"cannot reach the Dask scheduler at {address}: {exc}") from exc
        try:
            client.run(_worker_setup)
            yield client
        finally:
            client.close()
        return
    logging.getLogger("distributed").setLevel(logging.WARNING)  # keep the terminal readable
    n = n_workers or max(1, min(os.cpu_count() or 1, 8))
    if os.environ.get("MALLOC_TRIM_THRESHOLD_") == _NANNY_TRIM:  # left here by an earlier nanny
        del os.environ["MALLOC_TRIM_THRESHOLD_"]
    with (
        dask.config.set(_NO_TRIM),
        LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.ERROR,
        ) as cluster,
        Client(cluster) as client,
    ):
        client.run(_worker_setup)
        workers = list(client.run(os.getpid).values())
        try:
            yield client
        except BaseException:
            if interrupt.stop_requested():
                _stop_now(workers)
            raise


def _stop_now(pids: list[int]) -> None:
    """A stop was requested: end our LocalCluster's worker processes now instead of letting the
    cluster wait for the chunks they are computing (seconds each). A chunk cut short was never
    marked done, so the next run computes it again; the finished ones stay."""
    import signal

    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
