"""``atompipe ui`` and ``atompipe serve``: long-running servers for a campaign (the MLflow UI,
a Prefect deployment). ``ui`` imports neither torch nor Prefect
(tests/unit/test_light_commands.py)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from flows.cli_common import CampaignArgument, SetOption, fail, load_config
from flows.cli_signals import INTERRUPTED


def ui(
    campaign: CampaignArgument,
    host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 5000,
    set_: SetOption = None,
) -> None:
    """Start the MLflow UI for the campaign's tracking store (127.0.0.1 by default)."""
    cfg = load_config(campaign, set_, build_featurizers=False)  # computes nothing: no torch
    if cfg.tracking_uri.startswith(("http://", "https://")):
        typer.echo(f"the campaign tracks to a server: open {cfg.tracking_uri} in a browser")
        return
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "ui",
        "--backend-store-uri",
        cfg.tracking_uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    from tasks.tracking import TrackingError, check_tracking

    try:
        check_tracking(cfg.tracking_uri)
    except TrackingError as exc:
        fail(f"{campaign}: tracking.uri: {exc}")
    import socket

    with socket.socket() as probe:  # MLflow's server would log the clash and still exit 0
        try:
            probe.bind((host, port))
        except OSError as exc:
            fail(f"--port {port}: cannot listen on {host}:{port} ({exc.strerror})")
    typer.echo(f"MLflow UI on http://{host}:{port}")
    raise typer.Exit(_serve_child(cmd))


def serve(
    campaign: CampaignArgument,
    cron: Annotated[str | None, typer.Option(help="cron schedule, e.g. '0 3 * * *'")] = None,
    watch: Annotated[
        Path | None, typer.Option(help="start the campaign when new files arrive here")
    ] = None,
    watch_interval: Annotated[float, typer.Option(help="seconds between folder scans")] = 5.0,
    name: Annotated[str | None, typer.Option(help="deployment name")] = None,
    set_: SetOption = None,
) -> None:
    """Serve the campaign as a Prefect deployment (schedule and/or file-arrival trigger); with
    an `active:` section, each run is one more active-learning iteration."""
    cfg = load_config(campaign, set_)
    if cfg.active is not None:
        from flows.active import check_active
        from flows.config import ConfigError

        try:
            check_active(cfg)
        except ConfigError as exc:
            fail(f"{campaign}: {exc}")
    if watch is not None and not watch.is_dir():
        fail(f"--watch {watch}: not a folder")
    from flows.deploy import serve_campaign

    serve_campaign(cfg, cron=cron, watch=watch, name=name, watch_interval=watch_interval)


def _serve_child(cmd: list[str]) -> int:
    """Run a server command as the leader of its own process group and take the group down
    with us: SIGINT/SIGTERM to this process stop every process of it (MLflow's server starts
    workers of its own), and the leader gets SIGTERM if this process dies without a word
    (Linux ``PR_SET_PDEATHSIG``).

    Parameters
    ----------
    cmd : list of str
        The server's command line.

    Returns
    -------
    int
        The server's exit status (non-zero on failure; 130 when it was stopped by a signal).
    """
    import os
    import signal
    import subprocess

    def child_setup() -> None:  # in the child, before exec
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
        except (OSError, AttributeError):  # not Linux: the signal forwarding still holds
            pass

    proc = subprocess.Popen(cmd, start_new_session=True, preexec_fn=child_setup)

    def forward(signum: int, frame: object) -> None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass

    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = proc.wait()
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # workers the server left behind
        except ProcessLookupError:
            pass
    return INTERRUPTED if code in (-signal.SIGTERM, -signal.SIGINT) else abs(code)
