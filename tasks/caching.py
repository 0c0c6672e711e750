"""Content-addressed cache keys for Prefect tasks.

A stage's cache key is a hash of its inputs' content keys (small references), its parameters and
the stage's format version — never of file paths or timestamps (DESIGN.md). When the output a key
points at has gone from the store, the key changes, so the stage runs again instead of handing
back a reference to nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from atomistic.storage import content_hash

__all__ = ["content_cache_key", "STAGE_VERSION"]

STAGE_VERSION = 1


def content_cache_key(
    stage: str,
    exists: Callable[[dict[str, Any]], bool] | None = None,
    ignore: tuple[str, ...] = ("client", "on_chunk", "on_epoch"),
) -> Callable[[Any, dict[str, Any]], str]:
    """A Prefect ``cache_key_fn`` for ``stage``: a hash of the JSON-able parameters.

    ``exists(parameters)`` says whether the stage's output is still in the store; when it is
    not, the key gets a suffix that no earlier run wrote, and the stage runs.
    """

    def key_fn(context: Any, parameters: dict[str, Any]) -> str:
        params = {k: v for k, v in parameters.items() if k not in ignore}
        key = f"atompipe-{stage}-" + content_hash(stage, STAGE_VERSION, params)
        if exists is not None and not exists(parameters):
            key += "-missing"
        return key

    return key_fn
