"""The suite's scaling plots (matplotlib, Agg), drawn from its results JSON.

    python -m benchmarks.plots benchmarks/results/benchmarks.json [--out DIR]

* featurize_vs_atoms.png: featurization time per structure against atoms per cell (log-log,
  fitted exponent; linear expected);
* krr_fit_vs_atoms.png: KRR/GP fit time against training atoms, with scipy's Cholesky of the
  same-size structure matrix (log-log, fitted exponents; cubic expected of the factorisation);
* memory_vs_dataset.png: peak RSS of featurization against dataset size (flat expected when
  streamed).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import loglog_slope

SIZE = (5.6, 3.8)
DPI = 90


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=SIZE, dpi=DPI)
    return plt, fig, ax


def _finish(plt, fig, ax, path: Path, title: str, subtitle: str) -> Path:
    ax.set_title(title, fontsize=10)
    fig.text(0.01, 0.01, subtitle, fontsize=6, color="0.35", wrap=True)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7.5, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _fit_line(ax, x, y, style, label):
    ok = np.isfinite(np.asarray(y, float))
    x, y = np.asarray(x, float)[ok], np.asarray(y, float)[ok]
    if len(x) < 2:
        return
    p = loglog_slope(x, y)
    c = np.exp(np.mean(np.log(y) - p * np.log(x)))
    xs = np.geomspace(x.min(), x.max(), 50)
    (line,) = ax.plot(x, y, style, label=f"{label}: p = {p:.2f}")
    ax.plot(xs, c * xs**p, "-", color=line.get_color(), alpha=0.35, lw=1)


def _log_axes(ax, ticks) -> None:
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def featurize_vs_atoms(res: dict[str, Any], path: Path, note: str) -> Path:
    plt, fig, ax = _figure()
    for name, secs in res["seconds"].items():
        _fit_line(ax, res["atoms"], [1e3 * s for s in secs], "o", name)
    _log_axes(ax, res["atoms"])
    ax.set_xlabel("atoms per cell (rattled fcc Cu supercell)")
    ax.set_ylabel("time per structure (ms)")
    return _finish(
        plt,
        fig,
        ax,
        path,
        "Featurization time against cell size (time ~ atoms^p; p = 1 is linear)",
        note,
    )


def krr_vs_atoms(res: dict[str, Any], path: Path, note: str) -> Path:
    plt, fig, ax = _figure()
    for name, secs in res["seconds"].items():
        label = name if name != "scipy cho_factor" else "scipy cho_factor (N x N)"
        _fit_line(ax, res["atoms"], secs, "s" if "scipy" in name else "o", label)
    x = np.asarray(res["atoms"], float)
    y0 = res["seconds"]["KRR"][-1]
    ax.plot(x, y0 * (x / x[-1]) ** 3, ":", color="0.5", lw=1, label="slope 3 (guide)")
    _log_axes(ax, res["atoms"])
    ax.set_xlabel("training atoms (N structures x 32 Cu atoms)")
    ax.set_ylabel("fit time (s)")
    return _finish(
        plt, fig, ax, path, "Kernel model fit time against training size (time ~ atoms^p)", note
    )


def memory_vs_dataset(res: dict[str, Any], path: Path, note: str) -> Path:
    plt, fig, ax = _figure()
    recs = res["records"]
    atoms = [r["atoms"] for r in recs]
    ax.plot(
        atoms,
        [r["streamed"]["peak_rss_mb"] for r in recs],
        "o-",
        ms=10,
        label="peak, streamed to Zarr (Dask, pipeline path)",
    )
    if all("in_memory" in r for r in recs):
        ax.plot(
            atoms,
            [r["in_memory"]["peak_rss_mb"] for r in recs],
            "s--",
            ms=5,
            label="peak, whole dataset in memory (featurize_arrays)",
        )
    ax.plot(
        atoms,
        [r["streamed"]["rss_before_mb"] for r in recs],
        "^-.",
        label="before featurizing (imports, cluster, dataset), streamed",
    )
    base = recs[0]["streamed"]["peak_rss_mb"]
    ax.plot(
        atoms,
        [base + r["feature_array_mb"] - recs[0]["feature_array_mb"] for r in recs],
        ":",
        color="0.5",
        label="streamed 1x peak + growth of the feature array",
    )
    for r in recs:
        ax.annotate(
            f"{r['factor']}x",
            (r["atoms"], r["streamed"]["peak_rss_mb"]),
            textcoords="offset points",
            xytext=(0, 6),
            fontsize=7,
            ha="center",
        )
    ax.set_ylim(
        0,
        1.25 * max(r[m]["peak_rss_mb"] for r in recs for m in ("streamed", "in_memory") if m in r),
    )
    ax.set_xlabel("atoms in the dataset (Cu set replicated 1x to 8x)")
    ax.set_ylabel("peak RSS of the process (MB)")
    return _finish(
        plt,
        fig,
        ax,
        path,
        f"Peak memory of featurization against dataset size ({res['n_features']} features)",
        note,
    )


def draw_all(results: dict[str, Any], out: Path) -> list[Path]:
    """Draw every plot whose benchmark is in ``results`` (the suite's JSON); return paths."""
    out.mkdir(parents=True, exist_ok=True)
    m = results.get("machine", {})
    load = ", ".join(f"{x:.2f}" for x in m.get("loadavg", []))
    note = (
        f"{m.get('cpu_count')} CPUs ({m.get('processor', '?')}), load {load}, one thread; "
        f"git {m.get('git', '?')}, {m.get('time_utc', '')}\n"
        + results.get("command", "python -m benchmarks")
    )
    r = results.get("results", {})
    paths = []
    if "cellsize" in r:
        paths.append(featurize_vs_atoms(r["cellsize"], out / "featurize_vs_atoms.png", note))
    if "kernels" in r:
        paths.append(krr_vs_atoms(r["kernels"], out / "krr_fit_vs_atoms.png", note))
    if "memory" in r:
        paths.append(memory_vs_dataset(r["memory"], out / "memory_vs_dataset.png", note))
    return paths


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("results", type=Path)
    p.add_argument("--out", type=Path, default=None, help="default: beside the JSON")
    a = p.parse_args(argv)
    for path in draw_all(json.loads(a.results.read_text()), a.out or a.results.parent):
        print(path)


if __name__ == "__main__":
    main()
