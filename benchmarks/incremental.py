"""Incremental featurization: a +2 % dataset version grown by active learning's grow stage,
against featurizing the whole grown dataset from scratch.

The parent: 1000 Cu structures of 32 atoms (the first 500 frames of data/cu_emt.extxyz and a
rattled copy of each, 0.05 Å, EMT labels), stored and featurized with ML4Chem's default Gaussian
features (G2+G3, ``{"cutoff": 6.5}``) through ``tasks.featurize.featurize_dataset`` serially
(no Dask) into a fresh Zarr store. The +2 %: 20 further rattled copies (0.1 Å), written as an
exploration's snapshots and labelled with EMT into a label store beforehand (untimed), then
appended by the pipeline's own ``tasks.pipeline.pool.grow_stage``, which writes the new dataset
version (only the new structures; it names the parent whose structures it shares) and its
features (only the new structures' rows, computed; the group names the parent's group). Two
times of that one call: the whole of it (labels read, the dataset version written, features)
and its features part alone (``_grow_features``: the new structures featurized, the group
written; timed by wrapping that function, the pipeline unchanged). The
reference: ``featurize_dataset`` of the same 1020 structures into a fresh store (the dataset
written beforehand, untimed). Each repeat uses fresh stores; medians of 5 repeats (--quick:
100 + 100 structures + 4, one repeat) after one untimed warm-up, spread = max / min, one thread.

Checked: the grown group's rows, read along its chain, equal the full featurization's to 1e-12
(the new structures' and the parent's), and ``featurized_atoms`` is 20 x 32. Also reported: the
bytes stored by the parent's and the grown version's dataset and feature groups.

    python -m benchmarks.incremental [--quick]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from atomistic.data import Dataset, read_structures, write_dataset
from benchmarks.common import load_frames, module_main, table

PARAMS = {"cutoff": 6.5}


def _rattled(frames: list, amplitude: float, seed: int) -> list:
    """Copies of ``frames`` with their atoms displaced (no labels)."""
    from ase import Atoms

    out = []
    for i, a in enumerate(frames):
        b = Atoms(numbers=a.numbers, positions=a.positions, cell=a.cell, pbc=a.pbc)
        b.rattle(amplitude, seed=seed + i)
        out.append(b)
    return out


def _emt_labelled(frames: list) -> list:
    """``frames`` with EMT energies and forces (a SinglePointCalculator each)."""
    from ase.calculators.emt import EMT

    from atomistic.active import label_structures

    labelled, _ = label_structures(frames, EMT)
    return labelled


@contextmanager
def _timed_calls(module: Any, names: tuple[str, ...], times: dict[str, list[float]]) -> Iterator:
    """Wrap ``module``'s functions ``names`` so that each call's wall time is appended to
    ``times[name]``; the originals are put back on exit."""
    originals = {}
    for name in names:
        if not hasattr(module, name):
            raise AttributeError(f"{module.__name__}.{name} is gone: update this benchmark")
        originals[name] = getattr(module, name)

    def wrap(name: str, fn: Callable) -> Callable:
        def timed(*args, **kwargs):
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                times[name].append(time.perf_counter() - t)

        return timed

    for name, fn in originals.items():
        setattr(module, name, wrap(name, fn))
    try:
        yield
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)


def _store(root: Path, ds: Dataset, tag: str) -> tuple[str, str]:
    url = str(root / f"{tag}-{time.perf_counter_ns()}.zarr")
    key, _ = write_dataset(ds, url)
    return url, key


def _bytes(folder: Path) -> int:
    """Bytes of the files under ``folder``."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _spread(times: list[float]) -> float:
    return max(times) / min(times)


def run(quick: bool = False, device: str = "cpu") -> dict:
    """Medians of the incremental (grow) and the full featurization; ratio; the row check."""
    import tasks.pipeline.pool as pool
    from atomistic.active import LabelStore, label_structures, structure_key
    from atomistic.features.store import read_features
    from tasks.featurize import featurize_dataset
    from tasks.refs import DatasetRef, FeatureRef

    half, n_new, repeat = (100, 4, 1) if quick else (500, 20, 5)
    frames = load_frames("cu", half)
    parent_frames = list(frames) + _emt_labelled(_rattled(frames, 0.05, seed=1000))
    parent = Dataset.from_atoms(parent_frames, require_energy=True)
    atoms_per = int(parent.offsets[1] - parent.offsets[0])
    assert np.all(np.diff(parent.offsets) == atoms_per)
    times: dict[str, list[float]] = {
        "full": [],
        "parent": [],
        "grow": [],
        "_grow_features": [],
        "write_feature_array": [],
    }
    featurized_atoms, max_diff, same_key = [], 0.0, []
    stored_bytes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="atompipe-bench-incremental-") as tmp:
        root = Path(tmp)
        # the exploration's snapshots and their labels (the label stage's output), untimed
        snapshots = str(root / "snapshots.extxyz")
        import ase.io

        ase.io.write(snapshots, _rattled(frames[:n_new], 0.1, seed=2000), format="extxyz")
        new_frames = read_structures(snapshots)  # as grow_stage reads them, bit for bit
        labels_dir = str(root / "labels")
        from ase.calculators.emt import EMT

        new_labelled, computed = label_structures(new_frames, EMT, LabelStore(labels_dir))
        assert computed == n_new
        explored = {"path": snapshots}
        # label_stage's result, as the flow hands it to grow_stage
        labels = {
            "keys": [structure_key(a) for a in new_frames],
            "computed": computed,
            "failed": [],
            "labels_dir": labels_dir,
        }
        indices = list(range(n_new))
        full = Dataset.from_atoms(parent_frames + new_labelled, require_energy=True)

        # warm-up: imports, the featurizer's first call
        url, key = _store(root, full, "warm")
        featurize_dataset(url, key, "gaussian", PARAMS, client=None)

        for _ in range(repeat):
            # incremental: the parent stored and featurized (untimed), then grown
            url, pkey = _store(root, parent, "parent")
            t = time.perf_counter()
            fref = featurize_dataset(url, pkey, "gaussian", PARAMS, client=None)
            times["parent"].append(time.perf_counter() - t)
            pref = DatasetRef(store=url, key=pkey, summary=parent.summary())
            with _timed_calls(pool, ("_grow_features", "write_feature_array"), times):
                t = time.perf_counter()
                grown, gfeat = pool.grow_stage(pref, FeatureRef.of(fref), explored, indices, labels)
                times["grow"].append(time.perf_counter() - t)
            featurized_atoms.append(gfeat.featurized_atoms)
            stored_bytes["parent"] = _bytes(Path(url) / "datasets" / pkey)
            stored_bytes["grown"] = _bytes(Path(url) / "datasets" / grown.key)
            stored_bytes["parent_features"] = _bytes(Path(url) / "features" / fref["key"])
            stored_bytes["grown_features"] = _bytes(Path(url) / "features" / gfeat.key)
            assert grown.summary["structures"] == 2 * half + n_new

            # from scratch: the same 1020 structures into a fresh store
            furl, fkey = _store(root, full, "full")
            t = time.perf_counter()
            ffull = featurize_dataset(furl, fkey, "gaussian", PARAMS, client=None)
            times["full"].append(time.perf_counter() - t)
            assert ffull["computed_chunks"] == ffull["n_chunks"]

            X_inc, off_inc = read_features(url, gfeat.key)
            X_full, off_full = read_features(furl, ffull["key"])
            assert np.array_equal(off_inc, off_full)
            new_rows = slice(int(parent.n_atoms), None)
            np.testing.assert_allclose(X_inc[new_rows], X_full[new_rows], rtol=0, atol=1e-12)
            np.testing.assert_allclose(X_inc, X_full, rtol=0, atol=1e-12)
            max_diff = max(max_diff, float(np.max(np.abs(X_inc - X_full))))
            same_key.append(grown.key == fkey and gfeat.key == ffull["key"])

    assert all(n == n_new * atoms_per for n in featurized_atoms), featurized_atoms
    med = {k: statistics.median(v) for k, v in times.items() if v}
    out: dict[str, Any] = {
        "parent_structures": parent.n_structures,
        "new_structures": n_new,
        "atoms_per_structure": atoms_per,
        "full_atoms": int(full.n_atoms),
        "featurized_atoms": featurized_atoms[0],
        "repeat": repeat,
        "seconds": times,
        "median_s": med,
        "spread": {k: _spread(v) for k, v in times.items() if v},
        "ratio_full_over_features": med["full"] / med["_grow_features"],
        "ratio_full_over_grow": med["full"] / med["grow"],
        "max_abs_diff": max_diff,
        "same_keys": all(same_key),
        "dataset_bytes": stored_bytes,
    }
    compute = [
        g - w for g, w in zip(times["_grow_features"], times["write_feature_array"], strict=True)
    ]
    out["median_s"]["new_rows_compute"] = statistics.median(compute)
    n_full = full.n_structures
    rows = [
        (
            f"full: featurize_dataset, {n_full} structures, fresh store",
            out["full_atoms"],
            med["full"],
            out["spread"]["full"],
            1.0,
        ),
        (
            f"incremental: grow_stage's features (_grow_features), +{n_new}",
            out["featurized_atoms"],
            med["_grow_features"],
            out["spread"]["_grow_features"],
            out["ratio_full_over_features"],
        ),
        (
            "  of which: grown group written (write_feature_array)",
            "-",
            med["write_feature_array"],
            out["spread"]["write_feature_array"],
            None,
        ),
        (
            f"  of which: the {n_new} new structures featurized (rest)",
            out["featurized_atoms"],
            out["median_s"]["new_rows_compute"],
            _spread(compute),
            None,
        ),
        (
            "incremental: whole grow_stage (labels, dataset version, features)",
            out["featurized_atoms"],
            med["grow"],
            out["spread"]["grow"],
            out["ratio_full_over_grow"],
        ),
        (
            f"parent: featurize_dataset, {parent.n_structures} structures (untimed set-up)",
            int(parent.n_atoms),
            med["parent"],
            out["spread"]["parent"],
            med["full"] / med["parent"],
        ),
    ]
    out["table"] = [list(r) for r in rows]
    print(
        table(
            f"Incremental featurization: +{n_new} Cu structures on {parent.n_structures} "
            f"({atoms_per} atoms each), Gaussian G2+G3 {PARAMS}, serial, median of {repeat}",
            ["run", "atoms featurized", "median s", "spread", "full / this"],
            rows,
            f"featurized_atoms {out['featurized_atoms']} (= {n_new} x {atoms_per}); grown rows "
            f"= full rows, max |diff| {max_diff:.1e}; grown keys = the featurize stage's: "
            f"{out['same_keys']}. Ratio full / incremental features: "
            f"{out['ratio_full_over_features']:.1f}x (whole grow_stage: "
            f"{out['ratio_full_over_grow']:.1f}x). The grown dataset version stores "
            f"{stored_bytes['grown'] / 1024:.0f} KiB (its {n_new} new structures; the parent: "
            f"{stored_bytes['parent'] / 1024:.0f} KiB); its features "
            f"{stored_bytes['grown_features'] / 1024:.0f} KiB (the parent's: "
            f"{stored_bytes['parent_features'] / 1024:.0f} KiB).",
        ),
        flush=True,
    )
    return out


def main(argv=None) -> None:
    module_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
