"""Active learning: explore with the current model, pick what it does not know, label it.

The loop of FLARE (Vandermause et al., npj Comput. Mater. 6, 20 (2020)), DP-GEN (Zhang et al.,
Comput. Phys. Commun. 253, 107206 (2020)) and query by committee (Seung, Opper & Sompolinsky,
COLT 1992), split into plain functions that the pipeline caches stage by stage
(docs/active-learning.md):

1. :func:`explore` — Langevin molecular dynamics driven by the model through
   :class:`~atomistic.calculator.AtompipeCalculator`, from given starting structures at given
   temperatures; every ``interval`` steps a snapshot is kept with its uncertainty.
2. :func:`select` — snapshots whose uncertainty exceeds a threshold (fixed, or
   :func:`calibrate_threshold` on the validation split), at most ``max_labels`` of them, diverse
   (farthest-point sampling on structure descriptors, or a minimum separation in time).
3. :func:`label_structures` — a reference calculator (:func:`reference_calculator`: EMT,
   GFN2-xTB through tblite, or an allow-listed ASE calculator); a :class:`LabelStore` keyed by
   :func:`structure_key` makes sure no structure is ever labelled twice.
4. :func:`stop_reason` — label budget spent, target error reached, nothing uncertain left.

The uncertainty of a structure is the largest, over its atoms, of the norm of the committee's
per-component force standard deviation, u = max_i |σ_F,i| (eV/Å), with σ_F,i (3,) from
``predict(...)["forces_std"]`` (a committee ``NeuralNetwork(ensemble=N)``, or a
``GaussianProcess(forces=True)``).

Why it is one module of ~500 lines: it follows the loop's four steps in order, each a handful of
short functions with its equations and references beside it; a reader checks one step against
docs/active-learning.md here, and each part (identity and uncertainty, exploration, selection,
labelling) would be a file of 60 to 140 lines that only this loop uses.
"""

from __future__ import annotations

import importlib
import itertools
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator

from atomistic.metrics import calibration, z_scores
from atomistic.storage import content_hash

__all__ = [
    "BUILTIN_CALCULATORS",
    "LabelStore",
    "calibrate_threshold",
    "explore",
    "farthest_point_order",
    "force_calibration",
    "reference_calculator",
    "label_structures",
    "select",
    "stop_reason",
    "structure_descriptors",
    "structure_key",
    "structure_uncertainty",
    "warm_start",
]


# -- identity ------------------------------------------------------------------------------------
def structure_key(atoms: Atoms) -> str:
    """Content key of a structure: numbers, positions, cell and periodicity, bit for bit (the same
    identity as :meth:`atomistic.data.Dataset.structure_groups`)."""
    return content_hash(
        np.asarray(atoms.numbers, dtype=np.int64),
        np.asarray(atoms.positions, dtype=np.float64),
        np.asarray(atoms.cell.array, dtype=np.float64),
        np.asarray(atoms.pbc, dtype=bool),
    )


# -- uncertainty -----------------------------------------------------------------------------------
def structure_uncertainty(forces_std: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(S,) u_s = max over the atoms of structure s of |σ_F,i| (eV/Å).

    forces_std: (n_atoms, 3) eV/Å, per Cartesian component; offsets: (S + 1,) atom offsets.
    """
    norms = np.linalg.norm(np.asarray(forces_std, dtype=np.float64), axis=1)
    offsets = np.asarray(offsets, dtype=np.int64)
    return np.array([norms[offsets[s] : offsets[s + 1]].max() for s in range(len(offsets) - 1)])


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


# -- exploration -----------------------------------------------------------------------------------
def _min_distance(atoms: Atoms) -> float:
    if len(atoms) < 2:
        return np.inf
    d = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    return float(d[np.triu_indices(len(atoms), 1)].min())


def explore(
    model: Any,
    starts: Sequence[Atoms],
    temperatures: Sequence[float],
    steps: int,
    interval: int = 10,
    timestep_fs: float = 2.0,
    friction_per_fs: float = 0.02,
    rattle: float = 0.0,
    seed: int = 0,
    max_uncertainty: float | None = None,
    min_distance: float = 0.5,
) -> list[Atoms]:
    """Langevin MD with ``model`` (an atompipe model, a model directory or any ASE calculator
    that reports ``forces_std``) from every start at every temperature (K).

    Every ``interval`` steps the structure is kept (positions in Å, no calculator) with
    ``info``: ``uncertainty`` (u, eV/Å), ``energy_std`` (eV, when reported), ``temperature``
    (K), ``start`` (index), ``step``, ``trajectory`` (index). ``rattle`` (Å) displaces the start's
    atoms by Gaussian noise first. A trajectory ends early, its last snapshot kept, when u exceeds
    ``max_uncertainty`` (the model has left what it knows; the dynamics would be nonsense) or two
    atoms come closer than ``min_distance`` (Å). Seeded: same inputs, same snapshots.
    """
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from atomistic.calculator import AtompipeCalculator

    if steps < 0 or interval < 1:
        raise ValueError(f"steps >= 0 and interval >= 1 are required, got {steps}, {interval}")
    calc = model if isinstance(model, Calculator) else AtompipeCalculator(model)
    rng = np.random.default_rng(seed)
    frames: list[Atoms] = []
    trajectory = 0
    for s, start in enumerate(starts):
        for T in temperatures:
            atoms = Atoms(
                numbers=start.numbers, positions=start.positions, cell=start.cell, pbc=start.pbc
            )
            if rattle > 0:
                atoms.positions += rng.normal(0.0, rattle, atoms.positions.shape)
            atoms.set_constraint(FixCom())
            atoms.calc = calc
            MaxwellBoltzmannDistribution(atoms, temperature_K=float(T), rng=rng)
            Stationary(atoms)
            dyn = Langevin(
                atoms,
                timestep_fs * units.fs,
                temperature_K=float(T),
                friction=friction_per_fs / units.fs,
                fixcm=False,
                rng=rng,
            )
            for step in range(interval, steps + 1, interval):
                dyn.run(interval)
                atoms.get_forces()
                std = calc.results.get("forces_std")
                if std is None:
                    raise ValueError(
                        "exploration needs a model with force uncertainty (a committee "
                        "NeuralNetwork(ensemble>1) or a GaussianProcess(forces=True))"
                    )
                u = float(np.linalg.norm(std, axis=1).max())
                snap = Atoms(
                    numbers=atoms.numbers,
                    positions=atoms.positions.copy(),
                    cell=atoms.cell.array.copy(),
                    pbc=atoms.pbc.copy(),
                )
                snap.info.update(
                    uncertainty=u,
                    temperature=float(T),
                    start=s,
                    step=step,
                    trajectory=trajectory,
                )
                if "energy_std" in calc.results:
                    snap.info["energy_std"] = float(calc.results["energy_std"])
                frames.append(snap)
                if (max_uncertainty is not None and u > max_uncertainty) or (
                    _min_distance(atoms) < min_distance
                ):
                    break
            trajectory += 1
    return frames


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
    seed: int = 0,
) -> np.ndarray:
    """Indices (sorted) of the snapshots to label.

    method "uncertainty": the candidates are the snapshots with u > ``threshold``; at most
    ``max_labels`` of them are picked, by ``diversity``:

    - "none": the most uncertain first;
    - "fps": farthest-point sampling on ``descriptors`` (S, D), starting at the most uncertain;
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
        pool = np.flatnonzero(trusted)
        picked = rng.choice(pool, size=min(max_labels, len(pool)), replace=False)
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


# -- labelling -------------------------------------------------------------------------------------
BUILTIN_CALCULATORS = ("emt", "tblite")


def reference_calculator(
    name: str, params: Mapping[str, Any] | None = None, allowed: Iterable[str] = ()
) -> Calculator:
    """A new reference calculator.

    ``name``: "emt" (ASE's EMT), "tblite" (GFN2-xTB by default, ``tblite.ase.TBLite``; the
    optional extra ``pip install tblite``), or an import path "package.module:Class" (or
    "package.module.Class") that must appear in ``allowed``: a campaign file names the
    calculators it trusts, and nothing else is imported. ``params`` are the constructor's
    keyword arguments.
    """
    params = dict(params or {})
    if name == "emt":
        from ase.calculators.emt import EMT

        return EMT(**params)
    if name == "tblite":
        try:
            from tblite.ase import TBLite
        except ImportError as exc:  # pragma: no cover - depends on the optional extra
            raise ImportError(
                "the reference calculator 'tblite' needs the tblite package (pip install tblite)"
            ) from exc
        return TBLite(**{"method": "GFN2-xTB", "verbosity": 0, **params})
    if name not in set(allowed):
        raise ValueError(
            f"reference calculator {name!r} is neither built in {BUILTIN_CALCULATORS} nor in "
            f"the campaign's allow-list {sorted(allowed)}"
        )
    module, _, attr = name.partition(":") if ":" in name else name.rpartition(".")
    if not module or not attr:
        raise ValueError(f"reference calculator {name!r} is not an import path module:Class")
    klass = getattr(importlib.import_module(module), attr)
    if not (isinstance(klass, type) and issubclass(klass, Calculator)):
        raise ValueError(f"{name!r} is not an ASE Calculator class")
    return klass(**params)


class LabelStore:
    """Reference labels on disk, one file per structure, named by :func:`structure_key`:
    ``<directory>/<key>.npz`` holding energy () eV and forces (n_atoms, 3) eV/Å. A label is
    written to a temporary file and renamed into place, so a killed labelling leaves complete
    labels only, and a rerun computes just the missing ones."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / f"{key}.npz"

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def get(self, key: str) -> tuple[float, np.ndarray]:
        with np.load(self._path(key)) as f:
            return float(f["energy"]), np.array(f["forces"], dtype=np.float64)

    def put(self, key: str, energy: float, forces: np.ndarray) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, energy=np.float64(energy), forces=np.asarray(forces, np.float64))
            os.replace(tmp, self._path(key))
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def keys(self) -> list[str]:
        return sorted(p.stem for p in self.directory.glob("*.npz") if not p.name.startswith("."))


def _compute_label(atoms: Atoms, calculator: Calculator) -> tuple[float, np.ndarray]:
    a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    a.calc = calculator
    return float(a.get_potential_energy()), np.array(a.get_forces(), dtype=np.float64)


def label_structures(
    images: Sequence[Atoms],
    make_calculator: Callable[[], Calculator],
    store: LabelStore | None = None,
    failed: list[tuple[int, str]] | None = None,
) -> tuple[list[Atoms], int]:
    """Label ``images`` with a calculator from ``make_calculator()`` (made only if needed).

    Returns (copies of the images with a SinglePointCalculator holding energy and forces, the
    number of structures actually computed). With a ``store``, a structure already in it is read,
    never recomputed, and each new label is stored as soon as it is computed; a structure repeated
    within ``images`` is computed once. A reference calculation that fails raises, unless a
    ``failed`` list is given: then (index, message) is appended to it and the structure is left
    out of the result (an SCF that does not converge on a configuration far from equilibrium).
    """
    calc: Calculator | None = None
    memo: dict[str, tuple[float, np.ndarray]] = {}
    out: list[Atoms] = []
    computed = 0
    for index, atoms in enumerate(images):
        key = structure_key(atoms)
        if key in memo:
            energy, forces = memo[key]
        elif store is not None and key in store:
            energy, forces = store.get(key)
        else:
            calc = calc or make_calculator()
            try:
                energy, forces = _compute_label(atoms, calc)
            except Exception as exc:
                if failed is None:
                    raise
                failed.append((index, f"{type(exc).__name__}: {exc}"))
                calc = None  # a fresh calculator for the next structure
                continue
            computed += 1
            if store is not None:
                store.put(key, energy, forces)
        memo[key] = (energy, forces)
        a = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
        a.info.update(atoms.info)
        a.calc = SinglePointCalculator(a, energy=energy, forces=forces.copy())
        out.append(a)
    return out, computed


# -- stopping --------------------------------------------------------------------------------------
def stop_reason(
    labels_used: int,
    budget: int | None = None,
    test_error: float | None = None,
    target_error: float | None = None,
    n_uncertain: int | None = None,
) -> str | None:
    """Why the loop stops now, or None to go on: "budget" (``labels_used`` >= ``budget``),
    "target" (``test_error`` <= ``target_error``), "converged" (no uncertain snapshot left)."""
    if budget is not None and labels_used >= budget:
        return "budget"
    if target_error is not None and test_error is not None and test_error <= target_error:
        return "target"
    if n_uncertain is not None and n_uncertain == 0:
        return "converged"
    return None


# -- training --------------------------------------------------------------------------------------
def warm_start(model: Any, previous: Any) -> Any:
    """Make the next ``model.fit`` start every committee member from ``previous``'s weights.

    ``model`` is an unfitted :class:`~atomistic.models.NeuralNetwork`, ``previous`` a fitted one
    with the same elements, feature count and layer widths (member k starts from member k; extra
    members start fresh). The per-element shifts and scales are set from the new data as for a
    fresh fit, then the networks' weights and output scales are copied, so the previous residual
    function is the starting point (the energy constant is refitted after training, as always).
    Works through the per-fit output initialisation hook; returns ``model``.
    """
    init = model._init_output
    members = list(previous.members_)
    count = itertools.count()

    def _init_output(module, ds):
        init(module, ds)
        k = next(count)
        if k >= len(members):
            return
        old = members[k]
        theirs, ours = old.nets.state_dict(), module.nets.state_dict()
        if old.elements == module.elements and all(
            name in theirs and theirs[name].shape == t.shape for name, t in ours.items()
        ):
            module.nets.load_state_dict(theirs)
            module.scale.copy_(old.scale)  # the residual function is the previous one

    model._init_output = _init_output  # an instance attribute: this model's fits only
    return model
