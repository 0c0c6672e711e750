"""Featurization time against atoms per cell: rattled fcc Cu supercells of 32 to 864 atoms.

A local descriptor costs the same per atom whatever the cell, so the time per structure should
grow linearly with its number of atoms (log-log slope 1). Prints the time per structure and per
atom of atompipe's Gaussian (G2+G3, ML4Chem's defaults; G2+G4) and AEV featurizers, and of
DScribe's ACSF with the same G2+G3 and G2+G4 parameters, the fitted exponent p of time ~ atoms^p,
and DScribe's time over ours at each size. All featurizers of one cell run in turn, and each
figure is the median of the repeats (:func:`benchmarks.featurize.interleaved`).

    python -m benchmarks.cellsize [--quick] [--device cuda]
"""

from __future__ import annotations

from atomistic.features import AEV, Gaussian
from atomistic.features.aev import ANI1X
from benchmarks.common import cu_supercell, loglog_slope, module_main, table
from benchmarks.featurize import ANG, ETAS, RC, dscribe_acsf, interleaved, ours_features


def _featurizers() -> dict:
    return {
        "atompipe G2+G3": Gaussian(
            cutoff=RC, elements=["Cu"], angular_type="G3", custom={"G2": {"etas": ETAS}, "G3": ANG}
        ),
        "atompipe G2+G4": Gaussian(
            cutoff=RC, elements=["Cu"], angular_type="G4", custom={"G2": {"etas": ETAS}, "G4": ANG}
        ),
        "atompipe AEV": AEV(elements=[29], **ANI1X),
    }


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Seconds per structure against atoms per cell, and the fitted exponents."""
    repeats = (2, 3, 4) if quick else (2, 3, 4, 5, 6)
    n_rep = 3 if quick else 5
    peers = ["DScribe ACSF G2+G3", "DScribe ACSF G2+G4"] if device == "cpu" else []
    names = list(_featurizers()) + peers
    times: dict[str, list[float]] = {n: [] for n in names}
    spread: dict[str, list[float]] = {n: [] for n in names}
    atoms = []
    for r in repeats:
        cell = cu_supercell(r, seed=r)
        atoms.append(len(cell))
        fns = {name: ours_features(f, [cell], device) for name, f in _featurizers().items()}
        for name in peers:
            acsf = dscribe_acsf(["Cu"], True, name[-2:])
            fns[name] = lambda acsf=acsf, cell=cell: acsf.create(cell, n_jobs=1)
        for name, (t, s) in interleaved(fns, n_rep).items():
            times[name].append(t)
            spread[name].append(s)
    slopes = {n: loglog_slope(atoms, t) for n, t in times.items()}
    rows = [(n, *[1e3 * t for t in times[n]], slopes[n]) for n in names]
    ratios = {
        f"DScribe / atompipe {g}": [
            d / o for d, o in zip(times[f"DScribe ACSF {g}"], times[f"atompipe {g}"], strict=True)
        ]
        for g in ("G2+G3", "G2+G4")
        if peers
    }
    rows += [(n, *v, float("nan")) for n, v in ratios.items()]
    print(
        table(
            f"featurization time per structure (ms) against atoms per cell ({device})",
            ["featurizer", *[f"{a} atoms" for a in atoms], "exponent p"],
            rows,
            f"p: fitted slope of log time against log atoms (1 = linear); medians of {n_rep} "
            "interleaved calls; the DScribe / atompipe rows are ratios of those medians.",
        ),
        flush=True,
    )
    per_atom = {n: [1e6 * t / a for t, a in zip(times[n], atoms, strict=True)] for n in names}
    return {
        "device": device,
        "atoms": atoms,
        "seconds": times,
        "us_per_atom": per_atom,
        "exponent": slopes,
        "ratio": ratios,
        "spread": spread,
        "repeat": n_rep,
    }


def main(argv=None) -> None:
    module_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
