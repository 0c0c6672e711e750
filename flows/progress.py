"""Progress a person can follow: a rich progress bar per stage, and a summary table."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["CampaignProgress", "METRIC_COLUMNS", "metric_cells"]


class CampaignProgress:
    """Thread-safe progress on stderr: in a terminal, a live bar per stage (featurization
    chunks, epochs, elapsed time) whose line ends saying whether the stage ran or was cached;
    into a file or pipe (no live display), one plain line per stage as it ends."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = Console(file=sys.stderr)
        self._live = enabled and self.console.is_terminal
        self._started: dict[str, float] = {}
        self._finished: set[str] = set()
        self._progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not self._live,
            transient=False,
        )
        self._bars: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> CampaignProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._progress.stop()

    def _update(self, label: str, done: int, total: int | None) -> None:
        with self._lock:
            if label not in self._bars:
                self._bars[label] = self._progress.add_task(label, total=total)
            self._progress.update(self._bars[label], completed=done, total=total)

    def stage_started(self, label: str) -> None:
        """A stage was submitted: a bar with its elapsed time (pulsing until it reports)."""
        with self._lock:
            self._started.setdefault(label, time.perf_counter())
            if label not in self._bars:
                self._bars[label] = self._progress.add_task(label, total=None)

    def stage_finished(self, label: str, how: str) -> None:
        """A stage ended: its bar completes, and its line says ``how`` (cached, run)."""
        with self._lock:
            if label in self._finished:
                return
            self._finished.add(label)
            if label not in self._bars:
                self._bars[label] = self._progress.add_task(label, total=None)
            bar = self._bars[label]
            task = next(t for t in self._progress.tasks if t.id == bar)
            total = task.total or 1
            self._progress.update(bar, completed=total, total=total, description=f"{label} · {how}")
            self._progress.stop_task(bar)
            if self.enabled and not self._live:
                took = time.perf_counter() - self._started.get(label, time.perf_counter())
                self.console.print(f"{label:<28} {how:<22} {took:6.1f} s", highlight=False)

    def chunk_callback(self, label: str) -> Callable[[int, int], None]:
        return lambda done, total: self._update(label, done, total)

    def epoch_callback(self, label: str, epochs: int | None) -> Callable[[int, dict], None]:
        return lambda epoch, metrics: self._update(label, epoch + 1, epochs)

    def summary_table(self, summary: dict[str, Any], metric: str) -> None:
        """The models of a campaign run, best first by ``metric``."""
        table = Table(title=f"campaign {summary['campaign']}  ({summary['wall_time_s']:.1f} s)")
        table.add_column("model")
        for header, _, _ in METRIC_COLUMNS:
            table.add_column(header, justify="right", no_wrap=True)
        rows = sorted(summary["models"].items(), key=lambda kv: kv[1].get(metric, float("inf")))
        for name, m in rows:
            table.add_row(name, *metric_cells(m))
        Console(file=sys.stdout).print(table)


# the metric columns of ``atompipe run``'s summary and ``atompipe compare``: header with its
# unit, the metric's name (eV-based, as stored), the factor to the unit shown
METRIC_COLUMNS = (
    ("E MAE (meV/atom)", "energy_mae_per_atom", 1000.0),
    ("E RMSE (meV/atom)", "energy_rmse_per_atom", 1000.0),
    ("F MAE (meV/Å)", "force_mae", 1000.0),
    ("fit (s)", "fit_time_s", 1.0),
)


def metric_cells(metrics: dict[str, Any], prefix: str = "") -> list[str]:
    """The cells of :data:`METRIC_COLUMNS` for one model's ``metrics`` ("-" where absent)."""
    cells = []
    for _, name, factor in METRIC_COLUMNS:
        key = name if name == "fit_time_s" else prefix + name
        value = metrics.get(key)
        cells.append("-" if value is None else f"{factor * float(value):.3g}")
    return cells
