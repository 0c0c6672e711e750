"""Small, clean figures for runs: latent maps, learning curves, parity plots.

Figures are drawn on matplotlib ``Figure`` objects (no pyplot state, Agg rendering, safe in worker
threads) and saved as PNG; each function returns the path it wrote, ready to be logged as an
artifact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter, ScalarFormatter

__all__ = ["latent_map", "learning_curve", "parity_plot"]

_DPI = 120


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def _project_2d(Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """PCA of codes (n, d) to (n, 2) and the explained variance ratios (2,)."""
    from sklearn.decomposition import PCA

    if Z.shape[1] == 1:
        return np.hstack([Z, np.zeros_like(Z)]), np.array([1.0, 0.0])
    n_comp = 2 if Z.shape[0] >= 2 else 1
    pca = PCA(n_components=n_comp).fit(Z)
    P = pca.transform(Z)
    ratio = pca.explained_variance_ratio_
    if n_comp == 1:
        P, ratio = np.hstack([P, np.zeros_like(P)]), np.append(ratio, 0.0)
    return P, ratio


def latent_map(
    Z: np.ndarray,
    numbers: np.ndarray,
    atomic_energy: np.ndarray | None = None,
    *,
    path: str | Path,
    title: str = "Latent space",
) -> Path:
    """Scatter of latent codes ``Z`` (n_atoms, latent_dim) projected to 2-D by PCA, coloured by
    element (``numbers``, (n_atoms,)) and, in a second panel, by the atomic energy contribution
    ``atomic_energy`` (n_atoms,), eV, where given. Saved as PNG at ``path``; returns the path."""
    Z = np.asarray(Z, dtype=np.float64)
    numbers = np.asarray(numbers).reshape(-1)
    if Z.ndim != 2 or Z.shape[0] != numbers.shape[0] or Z.shape[0] == 0:
        raise ValueError(
            f"latent_map needs Z (n_atoms, d) and numbers (n_atoms,), got "
            f"{Z.shape} and {numbers.shape}"
        )
    P, ratio = _project_2d(Z)
    panels = 1 if atomic_energy is None else 2
    fig = Figure(figsize=(5.2 * panels, 4.4), layout="constrained")
    axes = fig.subplots(1, panels, squeeze=False)[0]
    labels = (f"PC1 ({100 * ratio[0]:.0f}%)", f"PC2 ({100 * ratio[1]:.0f}%)")
    ax = axes[0]
    for z in np.unique(numbers):
        m = numbers == z
        ax.scatter(
            P[m, 0], P[m, 1], s=10, alpha=0.7, label=chemical_symbols[int(z)], edgecolors="none"
        )
    ax.legend(title="element", markerscale=2.5, frameon=False)
    ax.set(xlabel=labels[0], ylabel=labels[1], title="by element")
    if atomic_energy is not None:
        e = np.asarray(atomic_energy, dtype=np.float64).reshape(-1)
        if e.shape != numbers.shape:
            raise ValueError(f"atomic_energy must be (n_atoms,) = {numbers.shape}, got {e.shape}")
        ax = axes[1]
        sc = ax.scatter(P[:, 0], P[:, 1], c=e, s=10, cmap="viridis", edgecolors="none")
        fig.colorbar(sc, ax=ax, label="atomic energy (eV)")
        ax.set(xlabel=labels[0], ylabel=labels[1], title="by atomic energy")
    fig.suptitle(title)
    return _save(fig, path)


def learning_curve(history: Mapping[str, Any], path: str | Path, title: str = "Training") -> Path:
    """Errors per epoch of a training run: ``history`` is ``History.to_dict()`` or its
    ``metrics`` ({"train_energy_mse": [...], "val_force_mse": [...], "train_loss": [...], ...}).

    Where the history has ``*_energy_mse`` (eV²/atom², per atom) and ``*_force_mse``
    (eV²/Å²) series, they are drawn as RMSE in meV/atom and meV/Å, one panel each (train and
    validation); otherwise every ``*_loss`` series is drawn, unitless. Log scale when all values
    are positive; the best epoch is marked when known. Returns the PNG path."""
    metrics = history.get("metrics", history)
    panels = []  # (title, y label, {label: values})
    for kind, label in (("energy", "energy RMSE (meV/atom)"), ("force", "force RMSE (meV/Å)")):
        series = {
            split: 1000.0 * np.sqrt(np.clip(np.asarray(metrics[k], dtype=float), 0.0, None))
            for split, k in (("train", f"train_{kind}_mse"), ("validation", f"val_{kind}_mse"))
            if k in metrics and len(metrics[k])
        }
        if series:
            panels.append((f"{kind} error", label, series))
    if not panels:
        series = {
            k.replace("_", " "): np.asarray(v, dtype=float)
            for k, v in metrics.items()
            if k.endswith("loss")
        }
        if not series:
            raise ValueError(
                f"no '*_energy_mse' or '*_loss' series in the history (keys: {sorted(metrics)})"
            )
        panels.append(("loss", "loss", series))
    best = history.get("best_epoch", -1) if "metrics" in history else -1
    fig = Figure(figsize=(4.8 * len(panels), 4.0), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, ylabel, series) in zip(axes, panels, strict=True):
        for label, values in sorted(series.items()):
            ax.plot(np.arange(len(values)), values, label=label, lw=1.4)
        if all(np.all(v[np.isfinite(v)] > 0) for v in series.values()):
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(ScalarFormatter())  # 30, not 3 × 10^1
            ax.yaxis.set_minor_formatter(NullFormatter())
        if best is not None and best >= 0:
            ax.axvline(best, color="0.5", ls="--", lw=1, label=f"best epoch {best}")
        ax.set(xlabel="epoch", ylabel=ylabel, title=name)
        ax.legend(frameon=False)
    fig.suptitle(title)
    return _save(fig, path)


def parity_plot(
    true: Sequence[float] | np.ndarray,
    pred: Sequence[float] | np.ndarray,
    path: str | Path,
    title: str = "Parity",
    units: str = "eV",
    std: Sequence[float] | np.ndarray | None = None,
) -> Path:
    """Predicted against reference values with the y = x line and MAE / RMSE in ``units``.
    ``true``, ``pred`` and, for a model with uncertainty, ``std`` (the predicted standard
    deviation, drawn as ±1σ error bars) have the same shape (flattened). Returns the PNG path."""
    t = np.asarray(true, dtype=np.float64).reshape(-1)
    p = np.asarray(pred, dtype=np.float64).reshape(-1)
    if t.shape != p.shape or t.size == 0:
        raise ValueError(f"parity_plot needs equal, non-empty shapes, got {t.shape} and {p.shape}")
    s = None if std is None else np.asarray(std, dtype=np.float64).reshape(-1)
    if s is not None and s.shape != t.shape:
        raise ValueError(f"parity_plot: std must have the shape {t.shape}, got {s.shape}")
    err = p - t
    mae, rmse = np.mean(np.abs(err)), np.sqrt(np.mean(err**2))
    lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
    pad = 0.05 * (hi - lo or 1.0)
    fig = Figure(figsize=(4.8, 4.6), layout="constrained")
    ax = fig.subplots()
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.4", lw=1, ls="--")
    if s is not None:
        ax.errorbar(
            t,
            p,
            yerr=s,
            fmt="o",
            ms=2.5,
            alpha=0.6,
            elinewidth=0.8,
            capsize=0,
            label="predicted ± 1σ",
        )
        ax.legend(frameon=False, loc="lower right")
    else:
        ax.scatter(t, p, s=8, alpha=0.6, edgecolors="none")
    ax.set(
        xlim=(lo - pad, hi + pad),
        ylim=(lo - pad, hi + pad),
        aspect="equal",
        xlabel=f"reference ({units})",
        ylabel=f"predicted ({units})",
        title=title,
    )
    for axis in (ax.xaxis, ax.yaxis):  # few, short tick labels: none overlap
        axis.set_major_locator(MaxNLocator(nbins=4))
        formatter = axis.get_major_formatter()
        if isinstance(formatter, ScalarFormatter):  # the default formatter
            formatter.set_useOffset(False)
    ax.tick_params(axis="x", labelrotation=30)
    within = "" if s is None else f"\nwithin 1σ {100 * np.mean(np.abs(err) <= s):.0f}%"
    ax.text(
        0.04,
        0.96,
        f"MAE {mae:.3g} {units}\nRMSE {rmse:.3g} {units}\nn = {t.size}{within}",
        transform=ax.transAxes,
        va="top",
        ha="left",
    )
    return _save(fig, path)
