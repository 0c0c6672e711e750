"""Active learning, uncertainty and selection: what the model does not know, and which of it to
label (:mod:`atomistic.active`, step 2; docs/active-learning.md).

The uncertainty of a structure is the largest, over its atoms, of the norm of the committee's
per-component force standard deviation, u = max_i |σ_F,i| (eV/Å) (:func:`structure_uncertainty`);
:func:`calibrate_threshold` sets the selection threshold from the validation split and
:func:`force_calibration` measures how well the standard deviations describe the errors.
:func:`select` picks the snapshots to label, diverse by farthest-point sampling on
:func:`structure_descriptors` (Gonzalez 1985) or by a minimum separation in time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms

from atomistic.metrics import calibration, z_scores

__all__ = [
    "calibrate_threshold",
    "farthest_point_order",
    "force_calibration",
    "select",
    "structure_descriptors",
    "structure_uncertainty",
]


# -- uncertainty -----------------------------------------------------------------------------------
def structure_uncertainty(
    forces_std: np.ndarray, offsets: np.ndarray, reduce: str = "max"
) -> np.ndarray:
    """(S,) u_s = max over the atoms of structure s of |σ_F,i| (eV/Å); ``reduce="mean"``: their
    mean.

    forces_std: (n_atoms, 3) eV/Å, per Cartesian component; offsets: (S + 1,) atom offsets.
    """
    if reduce not in ("max", "mean"):
        raise ValueError(f"reduce must be 'max' or 'mean', got {reduce!r}")
    norms = np.linalg.norm(np.asarray(forces_std, dtype=np.float64), axis=1)
    offsets = np.asarray(offsets, dtype=np.int64)
    fn = np.max if reduce == "max" else np.mean
    return np.array([fn(norms[offsets[s] : offsets[s + 1]]) for s in range(len(offsets) - 1)])


def calibrate_threshold(
    uncertainty: np.ndarray, quantile: float = 0.9, factor: float = 1.0
) -> float:
    """A selection threshold from structures the model was validated on (eV/Å).

    ``factor`` times the ``quantile`` of the validation structures' uncertainties u_s: a
    configuration met in exploration is "uncertain" when the committee disagrees more there than
    on all but a fraction 1 - ``quantile`` of the held-out structures of the training
    distribution.
    """
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.size == 0:
        raise ValueError("threshold calibration needs at least one validation structure")
    if not 0.0 <= quantile <= 1.0:
        raise ValueError(f"quantile must be in [0, 1], got {quantile}")
    return float(factor * np.quantile(u, quantile))


def force_calibration(true: np.ndarray, pred: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """How well predicted force standard deviations describe the errors (eV/Å arrays, same shape,
    per Cartesian component): Spearman rank correlation of σ with |error|, and the fraction of
    components with |error| <= k σ (k = 1, 2, 3; a Gaussian gives 0.683, 0.954, 0.997)."""
    from scipy.stats import spearmanr

    err = np.abs(np.asarray(true, dtype=np.float64) - np.asarray(pred, dtype=np.float64))
    s = np.asarray(std, dtype=np.float64)
    varied = err.size > 1 and np.ptp(s) > 0 and np.ptp(err) > 0  # else the rank is undefined
    rho = spearmanr(s.reshape(-1), err.reshape(-1)).statistic if varied else np.nan
    cal = calibration(z_scores(true, pred, np.maximum(s, 1e-12)))
    return {
        "spearman": float(rho),
        **{f"within_{k}sigma": cal[f"within_{k}sigma"] for k in (1, 2, 3)},
    }


# -- selection -------------------------------------------------------------------------------------
def structure_descriptors(images: Sequence[Atoms], featurizer: Any, scaler: Any = None):
    """(S, 2 F) a fixed-length descriptor per structure: the mean and the standard deviation over
    its atoms of the (scaled) atomic features; invariant like the features themselves."""
    from atomistic.data import Dataset

    ds = Dataset.from_atoms(list(images))
    X = np.asarray(
        featurizer.featurize_arrays(ds.numbers, ds.positions, ds.cell, ds.pbc, ds.offsets),
        dtype=np.float64,
    )
    if scaler is not None:
        X = scaler.transform(X, ds.numbers)
    o = ds.offsets
    return np.stack(
        [
            np.concatenate([X[o[s] : o[s + 1]].mean(0), X[o[s] : o[s + 1]].std(0)])
            for s in range(ds.n_structures)
        ]
    )


def farthest_point_order(X: np.ndarray, first: int, k: int) -> np.ndarray:
    """Greedy farthest-point sampling (Gonzalez 1985): start at row ``first``, then repeatedly
    add the row farthest (Euclidean) from all rows chosen so far; returns up to ``k`` row indices
    in the order chosen (ties: the lowest index)."""
    X = np.asarray(X, dtype=np.float64)
    k = min(int(k), len(X))
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    chosen = [int(first)]
    dist = np.linalg.norm(X - X[first], axis=1)
    while len(chosen) < k:
        nxt = int(np.argmax(dist))
        if dist[nxt] <= 0.0:  # only duplicates of chosen rows remain
            break
        chosen.append(nxt)
        dist = np.minimum(dist, np.linalg.norm(X - X[nxt], axis=1))
    return np.asarray(chosen, dtype=np.int64)


def select(
    uncertainty: np.ndarray,
    threshold: float,
    max_labels: int,
    *,
    method: str = "uncertainty",
    diversity: str = "none",
    descriptors: np.ndarray | None = None,
    times: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    min_separation: float = 0.0,
    upper: float | None = None,
    pool: float | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices (sorted) of the snapshots to label.

    method "uncertainty": the candidates are the snapshots with u > ``threshold``; at most
    ``max_labels`` of them are picked, by ``diversity``:

    - "none": the most uncertain first;
    - "fps": farthest-point sampling on ``descriptors`` (S, D), starting at the most uncertain,
      among the ``pool`` × ``max_labels`` most uncertain candidates (``pool`` None: among all of
      them; then, when nearly every snapshot is above the threshold, the picks are diverse but
      no more uncertain than a random draw);
    - "time": the most uncertain first, skipping any snapshot within ``min_separation`` (in the
      units of ``times``, e.g. MD steps) of one already picked in the same ``groups`` entry
      (trajectory).

    method "random": ``max_labels`` snapshots drawn uniformly without replacement (seeded),
    whatever their uncertainty: the baseline active learning is measured against.

    ``upper`` (eV/Å, DP-GEN's trust upper bound): snapshots with u > ``upper`` are never picked,
    by either method; the model's dynamics had left physical configurations there.
    """
    u = np.asarray(uncertainty, dtype=np.float64)
    n = len(u)
    max_labels = int(max_labels)
    if max_labels < 0:
        raise ValueError(f"max_labels must be >= 0, got {max_labels}")
    trusted = np.ones(n, dtype=bool) if upper is None else u <= upper
    if method == "random":
        rng = np.random.default_rng(seed)
        allowed = np.flatnonzero(trusted)
        picked = rng.choice(allowed, size=min(max_labels, len(allowed)), replace=False)
        return np.sort(picked).astype(np.int64)
    if method != "uncertainty":
        raise ValueError(f"method must be 'uncertainty' or 'random', got {method!r}")
    cand = np.flatnonzero((u > threshold) & trusted)
    # most uncertain first; ties by index, so the order is deterministic
    cand = cand[np.lexsort((cand, -u[cand]))]
    if diversity == "none":
        picked = cand[:max_labels]
    elif diversity == "fps":
        if descriptors is None:
            raise ValueError("diversity 'fps' needs descriptors")
        if pool is not None:
            if pool < 1.0:
                raise ValueError(f"pool must be >= 1, got {pool}")
            cand = cand[: int(np.ceil(pool * max_labels))]
        D = np.asarray(descriptors, dtype=np.float64)[cand]
        picked = cand[farthest_point_order(D, 0, max_labels)] if len(cand) else cand
    elif diversity == "time":
        if times is None:
            raise ValueError("diversity 'time' needs times")
        t = np.asarray(times, dtype=np.float64)
        g = np.zeros(n, dtype=np.int64) if groups is None else np.asarray(groups)
        chosen: list[int] = []
        for i in cand:
            if len(chosen) >= max_labels:
                break
            if all(g[j] != g[i] or abs(t[j] - t[i]) >= min_separation for j in chosen):
                chosen.append(int(i))
        picked = np.asarray(chosen, dtype=np.int64)
    else:
        raise ValueError(f"diversity must be 'none', 'fps' or 'time', got {diversity!r}")
    return np.sort(np.asarray(picked, dtype=np.int64))
