"""Content-addressed cache keys for Prefect tasks.

A stage's cache key is a hash of its inputs' content keys (small references), its parameters and
the stage's format version — never of file paths or timestamps (docs/architecture.md). When the
output a key points at has gone from the store, the key changes, so the stage runs again instead
of handing back a reference to nothing: the flow asks each stage whether its output exists and,
if not, submits it with ``refresh_cache=True`` (:func:`submit_cached`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from atomistic.storage import content_hash
from tasks.refs import RUN_REPORT, Ref

__all__ = ["content_cache_key", "stage_task", "submit_cached", "STAGE_VERSION"]

STAGE_VERSION = 1


def content_cache_key(
    stage: str,
    ignore: tuple[str, ...] = (
        "on_chunk",
        "on_epoch",
        "scheduler",
        "n_workers",
        "rows_per_chunk",
        "device",
    ),
) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect ``cache_key_fn`` for ``stage``: a hash of its JSON-able parameters (callbacks
    and execution settings, which do not change the output, left out)."""

    def key_fn(context: Any, parameters: dict[str, Any]) -> str:
        params = {k: _identity(v) for k, v in parameters.items() if k not in ignore}
        return f"atompipe-{stage}-" + content_hash(stage, STAGE_VERSION, params)

    return key_fn


def _identity(value: Any) -> Any:
    """What of a parameter identifies the output: a reference (typed or its JSON form) without
    its run report (:data:`tasks.refs.RUN_REPORT`); the same key for either form."""
    if isinstance(value, Ref):
        value = value.to_dict()
    if isinstance(value, dict):
        return {k: v for k, v in value.items() if k not in RUN_REPORT}
    return value


def submit_cached(task: Any, exists: Callable[..., bool], *args: Any, **kwargs: Any) -> Any:
    """Submit ``task``; when ``exists(*args, **kwargs)`` says its output is gone from the store,
    refresh its cache entry instead of trusting it."""
    if not exists(*args, **kwargs):
        task = task.with_options(refresh_cache=True)
    return task.submit(*args, **kwargs)


def stage_task(name: str, cache_key_fn: Callable[[Any, dict[str, Any]], str] | None = None) -> Any:
    """The Prefect task decorator of a stage: content-keyed cache, results persisted as JSON."""
    from prefect import task

    return task(
        name=name,
        cache_key_fn=cache_key_fn or content_cache_key(name),
        persist_result=True,
        result_serializer="json",
    )
