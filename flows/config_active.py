"""The ``active:`` section of a campaign file: the active-learning loop (docs/active-learning.md)
that explores with a committee's molecular dynamics, selects uncertain snapshots, labels them
with a reference calculator and retrains (``atompipe active``, :mod:`flows.active`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field

from flows.config_stages import Strict

__all__ = ["ActiveConfig", "ActiveExploration", "ActiveLabelling", "ActiveSelection"]


class ActiveExploration(Strict):
    temperatures: list[Annotated[float, Field(gt=0)]] = Field(
        [300.0], min_length=1, description="Langevin thermostat temperatures, K"
    )
    steps: int = Field(
        200, ge=1, description="MD steps per trajectory (one per start and temperature)"
    )
    interval: int = Field(10, ge=1, description="a snapshot (a candidate) every this many steps")
    timestep_fs: float = Field(2.0, gt=0, description="MD time step, fs")
    friction_per_fs: float = Field(0.02, gt=0, description="Langevin friction, 1/fs")
    starts: int = Field(
        2, ge=1, description="starting structures per iteration, drawn from the labelled set"
    )
    rattle: float = Field(0.0, ge=0, description="Gaussian displacement of the starts' atoms, Å")
    max_uncertainty: float | None = Field(
        None,
        gt=0,
        description="end a trajectory once its force uncertainty exceeds this, eV/Å; nothing "
        "above it is picked",
    )
    check_every: int = Field(
        1,
        ge=1,
        description="compute the uncertainty every this many steps (and at every snapshot); "
        "a GP's force stds cost several times its forces, so a GP explores faster with "
        "`interval` here, a committee's come with its forces",
    )


class ActiveSelection(Strict):
    method: Literal["uncertainty", "random"] = Field(
        "uncertainty", description="pick uncertain snapshots, or at random (the baseline)"
    )
    threshold: float | Literal["auto"] = Field(
        "auto",
        description="force uncertainty above which a snapshot is a candidate, eV/Å; `auto`: "
        "`factor` × the `quantile` of the validation structures' uncertainties",
    )
    quantile: float = Field(0.9, ge=0, le=1, description="quantile of `threshold: auto`")
    factor: float = Field(1.0, gt=0, description="multiplier of `threshold: auto`")
    upper_factor: float | None = Field(
        None,
        gt=1,
        description="pick nothing above this × the threshold (a trust window: the moderately "
        "uncertain snapshots, not those the dynamics is about to leave); null: no window",
    )
    max_labels: int = Field(10, ge=1, description="new labels per iteration at most")
    diversity: Literal["fps", "time", "none"] = Field(
        "fps",
        description="`fps`: farthest-point sampling on structure descriptors; `time`: at least "
        "`min_separation` MD steps apart within a trajectory; `none`: most uncertain first",
    )
    min_separation: int = Field(0, ge=0, description="`diversity: time`: MD steps between picks")
    pool: float | None = Field(
        2.0,
        ge=1,
        description="`diversity: fps`: farthest-point sampling among the `pool` × `max_labels` "
        "most uncertain candidates (null: among all above the threshold)",
    )


class ActiveLabelling(Strict):
    calculator: str = Field(
        "emt",
        description="reference method: `emt` (ASE), `tblite` (GFN2-xTB, optional extra), or an "
        "import path `module:Class` listed in `allow`",
    )
    params: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the calculator"
    )
    allow: list[str] = Field(
        default_factory=list, description="import paths of ASE calculators this campaign trusts"
    )


class ActiveConfig(Strict):
    model: str = Field(
        description="the campaign model that drives the loop: a neuralnetwork with ensemble > 1 "
        "(a committee) or a gaussianprocess with forces: true"
    )
    test: str | None = Field(
        None,
        description="a campaign dataset used as the fixed test set; default: the test split of "
        "the model's dataset",
    )
    iterations: int = Field(5, ge=1, description="explore-select-label-train rounds at most")
    budget: int | None = Field(None, ge=1, description="stop once this many labels were added")
    target_error: float | None = Field(
        None, gt=0, description="stop once the test force MAE is at or below this, eV/Å"
    )
    warm_start: bool = Field(True, description="start each training from the previous weights")
    seed: int = Field(0, description="seeds the starts, the dynamics and random selection")
    exploration: ActiveExploration = Field(
        default_factory=ActiveExploration, description="molecular dynamics with the model"
    )
    selection: ActiveSelection = Field(
        default_factory=ActiveSelection, description="which snapshots to label"
    )
    labelling: ActiveLabelling = Field(
        default_factory=ActiveLabelling, description="the reference calculator"
    )
