"""``atompipe predict`` and ``atompipe export``: a saved model applied to structure files, or
written as TorchScript, and the prediction writers (extended XYZ, CSV). The model code (torch)
is imported inside the commands only."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from flows.cli_common import fail, note

PREDICTION_FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".csv": "csv"}
_VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")

ModelArgument = Annotated[Path, typer.Argument(help="a saved model directory")]


def predict(
    model: ModelArgument,
    files: Annotated[list[Path], typer.Argument(help="structure files")],
    output: Annotated[Path, typer.Option("--output", "-o", help=".extxyz, .xyz or .csv")] = Path(
        "predictions.extxyz"
    ),
    device: Annotated[str, typer.Option(help="cpu | cuda (falls back to the CPU)")] = "cpu",
) -> None:
    """Predict energies, forces, stress (periodic structures) and, where the model has them,
    uncertainties (energy_std, forces_std)."""
    fmt = PREDICTION_FORMATS.get(output.suffix.lower())
    if fmt is None:
        known = ", ".join(PREDICTION_FORMATS)
        fail(f"-o {output}: unknown output format {output.suffix or '(no suffix)'!r}; use {known}")
    if device not in ("cpu", "cuda"):
        fail(f"--device {device!r}: expected cpu or cuda")
    from atomistic.data import DataError, load_files
    from atomistic.device import resolve_device
    from atomistic.models.base import AtomisticModel
    from atomistic.models.io import ModelFileError
    from atomistic.predictions import predict_structures

    try:
        m = AtomisticModel.load(model)
        _use_device(m, resolve_device(device, report=note))
        ds = load_files(files, require_energy=False)
        images = ds.to_atoms()
        out = _predict_in_chunks(m, images, predict_structures)
    except (DataError, ModelFileError, OSError) as exc:
        fail(str(exc))
    except ValueError as exc:  # the structures do not fit the model (e.g. an unseen element)
        fail(f"{', '.join(map(str, files))}: {exc}")
    if fmt == "csv":
        _write_csv(output, images, out)
    else:
        _write_extxyz(output, images, out)
    written = [k for k in ("energy", "forces", "stress", "energy_std", "forces_std") if k in out]
    typer.echo(f"{len(images)} structures -> {output} ({', '.join(written)})")


def export(
    model: ModelArgument,
    output: Annotated[Path, typer.Option("--output", "-o", help="TorchScript file")] = Path(
        "potential.pt"
    ),
) -> None:
    """Export a model as TorchScript: forward(positions, numbers, cell, pbc) -> energy, forces,
    stress, loadable with torch.jit.load without atompipe (docs/python-api.md)."""
    from atomistic.export import export_model
    from atomistic.models.base import AtomisticModel
    from atomistic.models.io import ModelFileError

    try:
        export_model(AtomisticModel.load(model), output)
    except (ModelFileError, OSError, ValueError) as exc:
        fail(f"{model}: {exc}")
    typer.echo(f"{model} -> {output} (torch.jit.load; forward(positions, numbers, cell, pbc))")


def _predict_in_chunks(model: Any, images: list, predict_structures: Callable) -> dict:
    """``predict_structures`` over ``images`` a chunk at a time, with a progress bar (a line
    when stderr is not a terminal): a kernel model with forces takes seconds a structure."""
    from flows.progress import CampaignProgress

    chunk = 16
    label = f"predict {len(images)} structures"
    out: dict[str, list] = {}
    with CampaignProgress(enabled=len(images) > chunk) as progress:
        progress.stage_started(label)
        for start in range(0, len(images), chunk):
            part = predict_structures(model, images[start : start + chunk])
            for name, values in part.items():
                out.setdefault(name, []).extend(values)
            progress.chunk_callback(label)(min(start + chunk, len(images)), len(images))
        progress.stage_finished(label, "done")
    return out


def _use_device(model: Any, device: str) -> None:
    """Predict on ``device`` with a model that runs on torch devices (networks; the kernel
    models compute on the CPU)."""
    if hasattr(model, "device"):
        model.device = device


def _write_extxyz(output: Path, images: list, out: dict) -> None:
    """The structures with their predictions as single-point results, in extended XYZ.

    Parameters
    ----------
    output : Path
        The file to write.
    images : list of ase.Atoms
        The structures, in the order of ``out``'s rows.
    out : dict
        The predictions by name (``energy``, ``forces``, ``stress``, ``energy_std``,
        ``forces_std``), one entry per structure.
    """
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    for s, a in enumerate(images):
        stress = out.get("stress", [None] * len(images))[s]
        a.calc = SinglePointCalculator(
            a,
            energy=out["energy"][s],
            forces=out["forces"][s] if "forces" in out else None,
            stress=stress,
        )
        if "energy_std" in out:
            a.info["energy_std"] = out["energy_std"][s]
        if "forces_std" in out:
            a.arrays["forces_std"] = out["forces_std"][s]
    ase.io.write(output, images, format="extxyz")


def _write_csv(output: Path, images: list, out: dict) -> None:
    """One row per structure: energy, its std, stress (eV/Å³, Voigt order)."""
    import csv

    with output.open("w", newline="") as fh:
        w = csv.writer(fh)
        stress_cols = [f"stress_{c}_eV/Å³" for c in _VOIGT] if "stress" in out else []
        w.writerow(["structure", "n_atoms", "energy_eV", "energy_std_eV", *stress_cols])
        for s, a in enumerate(images):
            std = out.get("energy_std")
            row = [s, len(a), out["energy"][s], "" if std is None else std[s]]
            if stress_cols:
                st = out["stress"][s]
                row += [""] * 6 if st is None else list(st)
            w.writerow(row)
