"""Progress a person can follow: a rich progress bar per stage, and a summary table."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

__all__ = ["CampaignProgress"]


class CampaignProgress:
    """Thread-safe progress bars (featurization chunks, epochs) on stderr."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = Console(file=sys.stderr)
        self._progress = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            disable=not enabled,
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

    def chunk_callback(self, label: str) -> Callable[[int, int], None]:
        return lambda done, total: self._update(label, done, total)

    def epoch_callback(self, label: str, epochs: int | None) -> Callable[[int, dict], None]:
        return lambda epoch, metrics: self._update(label, epoch + 1, epochs)

    def summary_table(self, summary: dict[str, Any], metric: str) -> None:
        """The models of a campaign run, best first by ``metric``."""
        table = Table(title=f"campaign {summary['campaign']}  ({summary['wall_time_s']:.1f} s)")
        cols = ["energy_mae_per_atom", "energy_rmse_per_atom", "force_mae", "fit_time_s"]
        table.add_column("model")
        for c in cols:
            table.add_column(c, justify="right")
        rows = sorted(summary["models"].items(), key=lambda kv: kv[1].get(metric, float("inf")))
        for name, m in rows:
            table.add_row(name, *(f"{m[c]:.4g}" if c in m else "-" for c in cols))
        Console(file=sys.stdout).print(table)
