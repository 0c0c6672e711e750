"""The Prefect task that records a campaign in MLflow: a few lines over
:func:`tasks.pipeline.record.record_campaign`, which holds the logging, the runs and the champion's
registration; this adds the Prefect flow run's id to its tags."""

from __future__ import annotations

from typing import Any

from prefect.context import get_run_context

from tasks.caching import stage_task
from tasks.pipeline import record as work
from tasks.pipeline.record import _MODEL_CODE as _MODEL_CODE  # the pyfunc's pieces, re-exported
from tasks.pipeline.record import _requirement as _requirement
from tasks.pipeline.record import _signature as _signature
from tasks.refs import DatasetRef, FeatureRef, ModelRef
from tasks.tracking import TrackingError, check_tracking, follow_moved_workspace

__all__ = ["record_campaign", "check_tracking", "TrackingError", "follow_moved_workspace"]


def _flow_run_id() -> str:
    try:
        ctx = get_run_context()
        run = getattr(ctx, "flow_run", None) or getattr(
            getattr(ctx, "task_run", None), "flow_run_id", None
        )
        return str(getattr(run, "id", run))
    except Exception:  # outside a run
        return "none"


@stage_task("record")
def record_campaign(
    config: dict[str, Any],
    datasets: dict[str, Any],
    features: dict[str, Any],
    results: dict[str, Any],
) -> dict[str, Any]:
    """:func:`tasks.pipeline.record.record_campaign`; returns the run ids and the champion model
    version.

    ``datasets``, ``features`` and ``results`` map the campaign's names to references
    (:class:`~tasks.refs.DatasetRef`, :class:`~tasks.refs.FeatureRef`, evaluated
    :class:`~tasks.refs.ModelRef`), typed or in their JSON form."""
    return work.record_campaign(
        config,
        {n: DatasetRef.of(r) for n, r in datasets.items()},
        {n: FeatureRef.of(r) for n, r in features.items()},
        {n: ModelRef.of(r) for n, r in results.items()},
        flow_run=_flow_run_id(),
    )
