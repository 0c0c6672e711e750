"""Featurization of a stored dataset on a Dask cluster, chunk by chunk, into Zarr."""

from __future__ import annotations

import fcntl
import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

from distributed import Client, wait

from atomistic import interrupt
from atomistic.data import read_dataset
from atomistic.features import featurizer_from_params
from atomistic.features.store import compute_chunk, finish_feature_group, plan_feature_group
from atomistic.storage import Store, StoreError
from tasks.refs import FeatureRef

__all__ = ["build_featurizer", "featurize_dataset"]


def build_featurizer(name: str, params: dict[str, Any], elements: tuple[str, ...]) -> Any:
    """A featurizer from its name and parameters, its element list fixed (from the dataset)."""
    params = dict(params)
    if not params.get("elements"):
        params["elements"] = list(elements)
    return featurizer_from_params(name, params)


@functools.lru_cache(maxsize=8)
def _cached_featurizer(name: str, params_json: str, device: str = "cpu") -> Any:
    featurizer = featurizer_from_params(name, json.loads(params_json))
    featurizer.device = device  # where it computes, not what: not part of the params or key
    return featurizer


def _run_chunk(
    store_url: str,
    dataset_key: str,
    key: str,
    chunk: int,
    name: str,
    params_json: str,
    device: str = "cpu",
) -> int:
    try:
        featurizer = _cached_featurizer(name, params_json, device)
        return compute_chunk(store_url, dataset_key, key, chunk, featurizer)
    except OSError as exc:  # disk full, read-only store: name the store and the chunk
        raise StoreError(
            f"cannot write chunk {chunk} of features/{key} to the store {store_url}: {exc}"
        ) from exc


@contextmanager
def _planning_lock(store: Store, name: str) -> Iterator[None]:
    """An inter-process lock (``flock``) around creating or reopening a feature group.

    Two campaigns featurizing the same dataset at once must not both create the group's arrays
    (the second creation would wipe the first one's finished chunks); under the lock the second
    one finds the group and resumes it, and the chunks both compute are byte-identical.
    Object stores (no local path) are left without a lock.
    """
    if store.path is None:
        yield
        return
    lock_dir = store.path / ".locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_dir / f"features-{name}.lock"
    fh: IO[Any]
    try:
        fh = open(lock, "ab")  # noqa: SIM115 - closed below
    except PermissionError:  # a store this user may only read: flock needs no write access
        fh = open(lock, "rb")  # noqa: SIM115
    with fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def featurize_dataset(
    store_url: str,
    dataset_key: str,
    name: str,
    params: dict[str, Any],
    *,
    client: Client | None = None,
    rows_per_chunk: int | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Featurize ``datasets/<dataset_key>`` into ``features/<key>``; resumes an interrupted run.

    Chunks run on ``client`` (one task per chunk; workers read their structures from the store
    and write their rows), or serially in this process when ``client`` is None, computing on
    ``device`` (``cpu`` or ``cuda``; the CPU, with one message, where no GPU is present).
    ``on_chunk(done, total)`` reports progress. Returns the JSON form of a
    :class:`~tasks.refs.FeatureRef` (with ``computed_chunks`` and ``n_chunks``).
    """
    store = Store(store_url)
    dataset = read_dataset(store, dataset_key)
    featurizer = build_featurizer(name, params, dataset.elements)
    workers = len(client.scheduler_info().get("workers", {})) if client is not None else 1
    try:
        with _planning_lock(store, name):
            plan = plan_feature_group(
                store,
                dataset,
                featurizer,
                rows_per_chunk=rows_per_chunk,
                workers=workers,
                exclusive=store.path is not None,  # _planning_lock holds the local store's lock
            )
    except OSError as exc:
        raise StoreError(f"cannot write features to the store {store_url}: {exc}") from exc
    full_params = featurizer.get_params()
    params_json = json.dumps(full_params, sort_keys=True)
    total, finished = plan.n_chunks, plan.n_chunks - len(plan.todo)
    if plan.todo:
        if client is None:
            for chunk in plan.todo:
                interrupt.check()  # a stop request: the finished chunks stay, resumable
                _run_chunk(store_url, dataset_key, plan.key, chunk, name, params_json, device)
                finished += 1
                if on_chunk:
                    on_chunk(finished, total)
        else:
            futures = client.map(
                _run_chunk,
                [store_url] * len(plan.todo),
                [dataset_key] * len(plan.todo),
                [plan.key] * len(plan.todo),
                list(plan.todo),
                [name] * len(plan.todo),
                [params_json] * len(plan.todo),
                [device] * len(plan.todo),
                pure=False,
            )
            pending = set(futures)
            try:
                while pending:
                    interrupt.check()
                    try:
                        wait(list(pending), timeout=0.2, return_when="FIRST_COMPLETED")
                    except TimeoutError:  # nothing finished yet: check for a stop again
                        continue
                    done = {f for f in pending if f.done()}
                    pending -= done
                    for future in done:
                        future.result()  # re-raise a chunk's error here, nothing half-done
                        finished += 1
                        if on_chunk:
                            on_chunk(finished, total)
            except BaseException:
                client.cancel(list(pending))  # a stop or an error: no chunk starts after it
                raise
        try:
            finish_feature_group(store, plan.key)
        except OSError as exc:
            raise StoreError(f"cannot publish features/{plan.key} in {store_url}: {exc}") from exc
    return FeatureRef(
        store=store_url,
        key=plan.key,
        dataset=dataset_key,
        featurizer=name,
        params=full_params,
        computed_chunks=len(plan.todo),
        n_chunks=total,
    ).to_dict()
