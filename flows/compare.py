"""``atompipe compare``: a campaign's MLflow runs as a table, one row per model key, best first.
Reads MLflow only (no Prefect, no torch)."""

from __future__ import annotations

from typing import Any

__all__ = ["NoExperiment", "print_comparison"]


class NoExperiment(LookupError):
    """The tracking store has no experiment for the campaign; the message names both."""


def print_comparison(cfg: Any) -> None:
    """Print the campaign's MLflow runs on stdout, best first.

    Parameters
    ----------
    cfg : flows.config.CampaignConfig
        The campaign: its tracking URI, experiment and evaluation split and metric.

    Raises
    ------
    NoExperiment
        The tracking store has no experiment of the campaign.

    Notes
    -----
    One row per model key: its latest run, the number of its runs, the metrics of the
    evaluation split and the hyperparameters that tell it apart from models of the same type.
    """
    from mlflow import MlflowClient
    from rich import box
    from rich.console import Console
    from rich.table import Table

    from flows.progress import METRIC_COLUMNS, metric_cells

    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name(cfg.tracking.experiment or cfg.name)
    if exp is None:
        name = cfg.tracking.experiment or cfg.name
        raise NoExperiment(f"no MLflow experiment {name!r} at {cfg.tracking_uri}")
    prefix = cfg.evaluation.split
    metric = f"{prefix}_{cfg.evaluation.metric}"
    runs = [
        r
        for r in client.search_runs([exp.experiment_id], order_by=[f"metrics.{metric} ASC"])
        if "mlflow.parentRunId" in r.data.tags and r.data.tags.get("atompipe.role") != "encoder"
    ]
    rows = _one_row_per_model(runs)
    table = Table(
        title=f"{cfg.name}: {len(rows)} models ({len(runs)} runs), best first by {metric}",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("model", no_wrap=True)
    table.add_column("key", no_wrap=True)
    table.add_column("runs", justify="right", no_wrap=True)
    for header, _, _ in METRIC_COLUMNS:  # the unit on a line of its own: never cut at 80 columns
        table.add_column(header.replace(" (", "\n("), justify="right", no_wrap=True)
    table.add_column("hyperparameters\nthat differ", overflow="fold", min_width=15)
    differ = _differing_params([r for r, _ in rows])
    for (r, n), params in zip(rows, differ, strict=True):
        table.add_row(
            r.info.run_name,
            r.data.tags.get("atompipe.model_key", r.info.run_id)[:6],
            str(n),
            *metric_cells(r.data.metrics, f"{prefix}_"),
            " ".join(f"{k}={v}" for k, v in params.items()) or "-",
        )
    Console().print(table)


def _one_row_per_model(runs: list) -> list[tuple[Any, int]]:
    """The latest run of each model key (a rerun of an unchanged model logs the same key again)
    with the number of runs of that key, in the order of ``runs`` (best first)."""
    latest: dict[str, Any] = {}
    count: dict[str, int] = {}
    order: list[str] = []
    for r in runs:
        key = r.data.tags.get("atompipe.model_key", r.info.run_id)
        if key not in latest:
            order.append(key)
        count[key] = count.get(key, 0) + 1
        if key not in latest or r.info.start_time > latest[key].info.start_time:
            latest[key] = r
    return [(latest[k], count[k]) for k in order]


def _differing_params(runs: list) -> list[dict[str, str]]:
    """For each run, its logged hyperparameters whose values differ among the runs of the same
    model type (what tells two KRR rows apart); the type itself is left out."""
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(runs):
        groups.setdefault(r.data.params.get("type", r.info.run_name), []).append(i)
    out: list[dict[str, str]] = [{} for _ in runs]
    for members in groups.values():
        keys = sorted({k for i in members for k in runs[i].data.params} - {"type"})
        for k in keys:
            values = {runs[i].data.params.get(k) for i in members}
            if len(values) > 1:
                for i in members:
                    out[i][k] = runs[i].data.params.get(k, "-")
    return out
