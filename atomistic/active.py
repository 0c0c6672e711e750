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

This module holds exploration, the stopping rule and :func:`warm_start`; uncertainty and
selection are in :mod:`atomistic.active_select`, identity and labelling in
:mod:`atomistic.active_label`. Every public name of the three is importable from here.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator

from atomistic.active_label import (
    BUILTIN_CALCULATORS,
    LabelStore,
    label_structures,
    reference_calculator,
    structure_key,
)
from atomistic.active_select import (
    calibrate_threshold,
    farthest_point_order,
    force_calibration,
    select,
    structure_descriptors,
    structure_uncertainty,
    variance_reduction_order,
)

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
    "variance_reduction_order",
    "warm_start",
]


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
    check_every: int = 1,
) -> list[Atoms]:
    """Langevin MD with ``model`` (an atompipe model, a model directory or any ASE calculator
    that reports ``forces_std``) from every start at every temperature (K).

    Every ``interval`` steps the structure is kept (positions in Å, no calculator) with
    ``info``: ``uncertainty`` (u, eV/Å), ``uncertainty_mean`` (the mean over the atoms of
    |σ_F,i|, eV/Å), ``energy_std`` (eV, when reported), ``temperature``
    (K), ``start`` (index), ``step``, ``trajectory`` (index). ``rattle`` (Å) displaces the start's
    atoms by Gaussian noise first. A trajectory ends early, its last snapshot kept, when u exceeds
    ``max_uncertainty`` (the model has left what it knows; the dynamics would be nonsense; u is
    checked at every step) or two atoms come closer than ``min_distance`` (Å, checked at the
    snapshots). When it leaves the trust bound, the step before, the last configuration within
    it, is kept too (unless it was a snapshot already): the edge of what the model knows, the
    most useful configuration to label, which a trajectory that breaks down between two
    snapshots would otherwise never offer. Seeded: same inputs, same snapshots.

    ``check_every`` > 1 computes u only every that many steps and at the snapshots, for
    models whose stds cost more than their forces (a GP's force stds: a forward-mode pass per
    atom and direction; a committee's come with its forces): the steps between run on the
    means alone, and the edge is the last checked step within the bound.
    """
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

    from atomistic.calculator import AtompipeCalculator

    if steps < 0 or interval < 1 or check_every < 1:
        raise ValueError(
            "steps >= 0, interval >= 1 and check_every >= 1 are required, got "
            f"{steps}, {interval}, {check_every}"
        )
    calc = model if isinstance(model, Calculator) else AtompipeCalculator(model)
    # the switch of a calculator whose stds cost extra, when u is not checked at every step
    switch = calc if check_every > 1 and isinstance(calc, AtompipeCalculator) else None
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
            edge: Atoms | None = None  # the last step within the trust bound, unless kept
            for step in range(1, steps + 1):
                checked = step % interval == 0 or step % check_every == 0
                if switch is not None:
                    switch.uncertainty = checked  # the forces of this step are computed in run
                dyn.run(1)
                atoms.get_forces()
                if switch is not None and not checked:
                    continue
                std = calc.results.get("forces_std")
                if std is None:
                    raise ValueError(
                        "exploration needs a model with force uncertainty (a committee "
                        "NeuralNetwork(ensemble>1) or a GaussianProcess(forces=True))"
                    )
                norms = np.linalg.norm(std, axis=1)
                u = float(norms.max())
                untrusted = max_uncertainty is not None and u > max_uncertainty
                info = {"uncertainty": u, "uncertainty_mean": float(norms.mean()), "step": step}
                info.update(temperature=float(T), start=s, trajectory=trajectory)
                if not (untrusted or step % interval == 0):
                    if max_uncertainty is not None:
                        edge = _snapshot(atoms, info, calc)
                    continue
                if untrusted and edge is not None:
                    frames.append(edge)
                frames.append(_snapshot(atoms, info, calc))
                edge = None
                if untrusted or _min_distance(atoms) < min_distance:
                    break
            trajectory += 1
    if switch is not None:
        switch.uncertainty = True
    return frames


def _snapshot(atoms: Atoms, info: dict[str, Any], calc):
    """A copy of the MD state (no calculator) with the exploration's ``info``."""
    snap = Atoms(
        numbers=atoms.numbers,
        positions=atoms.positions.copy(),
        cell=atoms.cell.array.copy(),
        pbc=atoms.pbc.copy(),
    )
    snap.info.update(info)
    if "energy_std" in calc.results:
        snap.info["energy_std"] = float(calc.results["energy_std"])
    return snap


# -- stopping --------------------------------------------------------------------------------------
def stop_reason(
    labels_used: int,
    budget: int | None = None,
    test_error: float | None = None,
    target_error: float | None = None,
    n_uncertain: int | None = None,
    n_picked: int | None = None,
) -> str | None:
    """Why the loop stops now, or None to go on: "budget" (``labels_used`` >= ``budget``),
    "target" (``test_error`` <= ``target_error``), "converged" (no uncertain snapshot left),
    "untrusted" (``n_uncertain`` snapshots above the threshold but ``n_picked`` = 0: every one
    above the trust bound or outside the trust window, where the model's dynamics went wrong)."""
    if budget is not None and labels_used >= budget:
        return "budget"
    if target_error is not None and test_error is not None and test_error <= target_error:
        return "target"
    if n_uncertain is not None and n_uncertain == 0:
        return "converged"
    if n_picked is not None and n_picked == 0:
        return "untrusted"
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
