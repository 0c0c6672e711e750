"""Deployments with Prefect's own machinery: a cron schedule and a file-arrival trigger.

``serve_campaign`` serves the campaign as a deployment of this process. With ``watch``, a
small poller emits a Prefect event ``atompipe.files.arrived`` when new files appear in the
folder, and the deployment's ``DeploymentEventTrigger`` starts a run on that event.

What a run is (:func:`served_flow`): the campaign flow, or, for a campaign with an ``active:``
section, the active-learning loop for one more iteration (``new_iterations=1``: the finished
iterations are cache hits, then one iteration is run, within ``active.iterations``, the budget
and the stopping rule). :func:`run_trigger` runs it in this process.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from flows.config import CampaignConfig

__all__ = [
    "ARRIVAL_EVENT",
    "build_deployment",
    "run_trigger",
    "serve_campaign",
    "served_flow",
    "watch_folder",
]

ARRIVAL_EVENT = "atompipe.files.arrived"


def watch_folder(folder: Path, interval: float = 5.0, stop: threading.Event | None = None) -> None:
    """Emit ``ARRIVAL_EVENT`` whenever files appear in ``folder`` that were not there before."""
    from prefect.events import emit_event

    folder = Path(folder).resolve()
    seen = {p for p in folder.rglob("*") if p.is_file()}
    while stop is None or not stop.is_set():
        time.sleep(interval)
        now = {p for p in folder.rglob("*") if p.is_file()}
        new = sorted(now - seen)
        if new:
            emit_event(
                event=ARRIVAL_EVENT,
                resource={"prefect.resource.id": f"atompipe.folder.{folder}"},
                payload={"files": [str(p) for p in new]},
            )
        seen = now


def served_flow(cfg: CampaignConfig) -> tuple[Any, dict[str, Any]]:
    """The flow that each run of ``atompipe serve`` runs, and its parameters.

    Parameters
    ----------
    cfg : CampaignConfig
        The campaign.

    Returns
    -------
    tuple[prefect.Flow, dict[str, Any]]
        With an ``active:`` section, the active-learning flow with ``new_iterations=1`` (one more
        iteration per run); otherwise the campaign flow.
    """
    config = cfg.model_dump(mode="json")
    if cfg.active is not None:
        from flows.active import active_flow

        return active_flow, {"config": config, "new_iterations": 1}
    from flows.campaign import campaign

    return campaign, {"config": config, "show_progress": False}


def run_trigger(cfg: CampaignConfig) -> dict[str, Any]:
    """Run here what one scheduled or triggered run of the served deployment runs.

    Parameters
    ----------
    cfg : CampaignConfig
        The campaign.

    Returns
    -------
    dict[str, Any]
        The flow's summary.
    """
    flow, parameters = served_flow(cfg)
    return flow(**parameters)


def build_deployment(
    cfg: CampaignConfig,
    cron: str | None = None,
    watch: Path | None = None,
    name: str | None = None,
) -> Any:
    """The deployment of :func:`served_flow` (a Prefect ``RunnerDeployment``): its cron
    schedule, and with ``watch`` an event trigger on files arriving in that folder."""
    from prefect.events import DeploymentEventTrigger, DeploymentTriggerTypes, TriggerTypes

    flow, parameters = served_flow(cfg)
    triggers: list[DeploymentTriggerTypes | TriggerTypes] = []
    if watch is not None:
        triggers.append(
            DeploymentEventTrigger(
                expect={ARRIVAL_EVENT},
                match={"prefect.resource.id": f"atompipe.folder.{Path(watch).resolve()}"},
                parameters=parameters,
            )
        )
    return flow.to_deployment(
        name=name or cfg.name,
        cron=cron,
        triggers=triggers or None,
        parameters=parameters,
        tags=["atompipe"],
    )


def serve_campaign(
    cfg: CampaignConfig,
    cron: str | None = None,
    watch: Path | None = None,
    name: str | None = None,
    watch_interval: float = 5.0,
) -> None:
    """Serve until interrupted (Prefect's ``serve``; needs a Prefect API, e.g. a server)."""
    from prefect import serve

    deployment = build_deployment(cfg, cron, watch, name)
    if watch is not None:
        threading.Thread(
            target=watch_folder, args=(Path(watch), watch_interval), daemon=True
        ).start()
    serve(deployment)
