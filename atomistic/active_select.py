"""Active learning, uncertainty and selection: what the model does not know, and which of it to
label (:mod:`atomistic.active`, step 2; docs/active-learning.md).

The uncertainty of a structure is the largest, over its atoms, of the norm of the committee's
per-component force standard deviation, u = max_i |σ_F,i| (eV/Å) (:func:`structure_uncertainty`);
:func:`calibrate_threshold` sets the selection threshold from the validation split and
:func:`force_calibration` measures how well the standard deviations describe the errors.
:func:`select` picks the snapshots to label, diverse by farthest-point sampling on
:func:`structure_descriptors` (Gonzalez 1985) or by a minimum separation in time. For a sparse GP,
:func:`variance_reduction_order` picks a batch by the expected reduction of the predictive
variance over all candidates, each pick accounting for the ones before it.
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
    "variance_reduction_order",
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
    upper_factor: float | None = None,
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
    ``upper_factor`` (> 1): method "uncertainty" picks only snapshots with u <= ``upper_factor``
    × ``threshold`` as well, the moderately uncertain ones, a trust window like DP-GEN's
    ``trust_lo``-``trust_hi`` with its upper end relative to the threshold; the most uncertain are
    often configurations the dynamics is about to leave, far from those the model will be asked
    about (random selection ignores it).
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
    if upper_factor is not None:
        if not upper_factor > 1.0:
            raise ValueError(f"upper_factor must be > 1, got {upper_factor}")
        trusted &= u <= upper_factor * threshold
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


def variance_reduction_order(
    V: np.ndarray,
    rest: np.ndarray,
    offsets: np.ndarray,
    max_labels: int,
    amplitude: float,
    force_noise: float,
    *,
    eligible: np.ndarray | None = None,
    shortlist: int | None = None,
    sample_rows: int = 2000,
    scale: float = 1.0,
    seed: int = 0,
) -> np.ndarray:
    """A batch for a sparse GP on forces, greedily by the expected reduction of the predictive
    variance summed over every candidate's force components (Cohn, Ghahramani & Jordan, JAIR 4,
    129 (1996); Seo et al., IJCNN 2000: integrated variance, "ALC"). Returns the picks in order.

    ``V`` (M, R) and ``rest`` (R,): the whitened design rows and the rest of the variance of all
    R = 3 n_atoms force components of the candidates
    (:meth:`~atomistic.models.GaussianProcess.force_variance_terms`), structure s owning atoms
    ``offsets[s]:offsets[s + 1]``. In whitened coordinates the posterior covariance starts as
    the identity, Σ = I; labelling structure s adds its rows W = (a / σ_F) V_s (a the
    amplitude, σ_F the force noise) with S = I + W^T Σ W, and
    Σ' = Σ - Σ W S^-1 W^T Σ. The variance of component r drops by a^2 (W^T Σ v_r)^T S^-1
    (W^T Σ v_r); summed over the candidates' components, a^2 tr(S^-1 W^T H W) with
    H = Σ (Σ_r v_r v_r^T) Σ. Each step picks the structure of largest reduction and updates Σ
    (kept as G = Σ V), so that a near-copy of a pick gains little: the batch is diverse by
    construction, and a representative uncertain structure beats an uncertain outlier.

    ``eligible`` (S,) bool: structures that may be picked (e.g. within the trust bound);
    ``shortlist``: at each step only the this many most uncertain eligible structures (their u
    = ``scale`` × the largest atomic |σ_F| under the current Σ) are scored; H is estimated from
    ``sample_rows`` components drawn at random (seeded), scaled to all R."""
    V = np.asarray(V, dtype=np.float64)
    rest = np.asarray(rest, dtype=np.float64)
    offsets = np.asarray(offsets, dtype=np.int64)
    n_structures = len(offsets) - 1
    if V.shape[1] != 3 * offsets[-1] or rest.shape != (V.shape[1],):
        raise ValueError(f"V {V.shape} and rest {rest.shape} do not match {offsets[-1]} atoms")
    ok = np.ones(n_structures, dtype=bool) if eligible is None else np.array(eligible, bool)
    rng = np.random.default_rng(seed)
    R = V.shape[1]
    sample = np.sort(rng.choice(R, size=min(R, sample_rows), replace=False))
    f2, a2 = (amplitude / force_noise) ** 2, amplitude**2
    atom_of = np.repeat(np.arange(n_structures), np.diff(offsets))
    G = V.copy()
    picks: list[int] = []
    while len(picks) < max_labels and ok.any():
        var = a2 * np.einsum("mr,mr->r", V, G) + rest
        atom_std = scale * np.sqrt(np.maximum(var, 0.0).reshape(-1, 3).sum(1))
        u = np.full(n_structures, -np.inf)
        np.maximum.at(u, atom_of, atom_std)
        cand = np.flatnonzero(ok)
        cand = cand[np.lexsort((cand, -u[cand]))][:shortlist]
        Gs = G[:, sample]
        H = (Gs @ Gs.T) * (R / len(sample))
        best, best_score = -1, -np.inf
        for s in cand:
            cols = slice(3 * offsets[s], 3 * offsets[s + 1])
            Vs, Gs_ = V[:, cols], G[:, cols]
            S = np.eye(Vs.shape[1]) + f2 * (Vs.T @ Gs_)
            score = a2 * f2 * np.trace(np.linalg.solve(S, Vs.T @ H @ Vs))
            if score > best_score:
                best, best_score = int(s), score
        cols = slice(3 * offsets[best], 3 * offsets[best + 1])
        Vs, Gs_ = V[:, cols], G[:, cols]
        S = np.eye(Vs.shape[1]) + f2 * (Vs.T @ Gs_)
        G -= f2 * Gs_ @ np.linalg.solve(S, Vs.T @ G)
        picks.append(best)
        ok[best] = False
    return np.asarray(picks, dtype=np.int64)
