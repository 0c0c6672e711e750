"""Deployments with Prefect's own machinery: a cron schedule and a file-arrival trigger.

``serve_campaign`` serves the campaign flow as a deployment of this process. With ``watch``, a
small poller emits a Prefect event ``atompipe.files.arrived`` when new files appear in the
folder, and the deployment's ``DeploymentEventTrigger`` starts a campaign run on that event.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from flows.config import CampaignConfig

__all__ = ["serve_campaign", "watch_folder", "ARRIVAL_EVENT"]

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


def build_deployment(
    cfg: CampaignConfig,
    cron: str | None = None,
    watch: Path | None = None,
    name: str | None = None,
) -> Any:
    from prefect.events import DeploymentEventTrigger, DeploymentTriggerTypes, TriggerTypes

    from flows.campaign import campaign

    triggers: list[DeploymentTriggerTypes | TriggerTypes] = []
    if watch is not None:
        triggers.append(
            DeploymentEventTrigger(
                expect={ARRIVAL_EVENT},
                match={"prefect.resource.id": f"atompipe.folder.{Path(watch).resolve()}"},
                parameters={"config": cfg.model_dump(mode="json"), "show_progress": False},
            )
        )
    return campaign.to_deployment(
        name=name or cfg.name,
        cron=cron,
        triggers=triggers or None,
        parameters={"config": cfg.model_dump(mode="json"), "show_progress": False},
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
