"""Ingestion: exact round trips, content keys, and validation that names the culprit."""

from __future__ import annotations

import hashlib
from pathlib import Path

import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from typer.testing import CliRunner

from atomistic.data import (
    DataError,
    Dataset,
    load_files,
    make_split,
    read_dataset,
    read_split,
    write_dataset,
)
from atomistic.storage import Store
from flows.cli import app


def _labelled(atoms: Atoms) -> Atoms:
    atoms.calc = EMT()
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=e, forces=f)
    return atoms


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` with the sha256 of its bytes."""
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def slab_file(tmp_path: Path) -> Path:
    images = []
    for seed in range(3):
        slab = fcc111("Cu", size=(2, 2, 3), vacuum=6.0)
        slab.rattle(0.02, seed=seed)
        images.append(_labelled(slab))
    assert tuple(images[0].pbc) == (True, True, False)
    path = tmp_path / "slab.extxyz"
    ase.io.write(path, images)
    return path


def _assert_same(ds: Dataset, images: list[Atoms]) -> None:
    assert ds.n_structures == len(images)
    for s, ref in enumerate(images):
        got = ds.atoms(s)
        np.testing.assert_array_equal(got.numbers, ref.numbers)
        np.testing.assert_array_equal(got.positions, ref.positions)
        np.testing.assert_array_equal(got.cell.array, ref.cell.array)
        np.testing.assert_array_equal(got.pbc, ref.pbc)
        assert got.get_potential_energy() == ref.get_potential_energy()
        np.testing.assert_array_equal(got.get_forces(), ref.get_forces())


@pytest.mark.parametrize("name", ["cu", "ethanol", "malonaldehyde", "slab"])
def test_round_trip_is_exact(name, shipped, slab_file, tmp_path):
    path = slab_file if name == "slab" else shipped[name]
    images = ase.io.read(path, ":")
    key, written = write_dataset(load_files([path]), tmp_path / "store.zarr")
    assert written
    back = read_dataset(tmp_path / "store.zarr", key)
    assert back.key == key
    _assert_same(back, images)
    sources = Store(tmp_path / "store.zarr").open("datasets", key).attrs["sources"]
    assert sources[0]["sha256"] == hashlib.sha256(Path(path).read_bytes()).hexdigest()


def test_shipped_sets_are_as_documented(shipped):
    cu = load_files([shipped["cu"]])
    assert cu.n_structures >= 500 and cu.atoms_per_structure.min() >= 32
    assert cu.pbc.all() and cu.forces is not None
    for name in ("ethanol", "malonaldehyde"):
        mol = load_files([shipped[name]])
        assert mol.n_structures >= 500 and not mol.pbc.any() and mol.forces is not None
        assert Path(shipped[name]).stat().st_size <= 5 * 2**20


def test_same_content_other_name_and_format_same_key_no_write(slab_file, tmp_path):
    store = tmp_path / "store.zarr"
    key, written = write_dataset(load_files([slab_file]), store)
    assert written
    before = _snapshot(store)
    images = ase.io.read(slab_file, ":")
    other = tmp_path / "renamed" / "other_name.traj"
    other.parent.mkdir()
    ase.io.write(other, images)
    key2, written2 = write_dataset(load_files([other]), store)
    assert (key2, written2) == (key, False)
    assert _snapshot(store) == before
    # A folder and a glob find the same content too.
    assert load_files([other.parent]).key == key
    assert load_files([str(tmp_path / "renamed" / "*.traj")]).key == key

    moved = [a.copy() for a in images]
    for a, ref in zip(moved, images, strict=True):
        a.calc = SinglePointCalculator(a, **ref.calc.results)
    moved[1].positions[3, 0] += 1e-6
    assert Dataset.from_atoms(moved).key != key


def test_split_is_seeded_and_stored(shipped, tmp_path):
    ds = load_files([shipped["ethanol"]])
    key, _ = write_dataset(ds, tmp_path / "s.zarr", split=(0.8, 0.1, 0.1), seed=7)
    split = read_split(tmp_path / "s.zarr", key)
    again = make_split(ds.n_structures, (0.8, 0.1, 0.1), seed=7)
    for name in ("train", "validation", "test"):
        np.testing.assert_array_equal(split[name], again[name])
    allidx = np.concatenate(list(split.values()))
    assert sorted(allidx.tolist()) == list(range(ds.n_structures))
    assert len(split["train"]) == round(0.8 * ds.n_structures)
    assert not np.array_equal(make_split(ds.n_structures, seed=8)["test"], split["test"])


def test_unlabelled_set_accepted_for_prediction(tmp_path):
    path = tmp_path / "pred.xyz"
    ase.io.write(path, [molecule("H2O"), molecule("CH4")], format="xyz")
    ds = load_files([path], require_energy=False)
    assert ds.energy is None and ds.n_structures == 2
    with pytest.raises(DataError, match=r"pred\.xyz, structure 0: no energy"):
        load_files([path])


# -- bad input: one clear message naming the culprit, nothing written -------------------------
def _write_images(path: Path, images: list[Atoms], **kw) -> Path:
    ase.io.write(path, images, **kw)
    return path


def _cu(seed: int = 0) -> Atoms:
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.rattle(0.01, seed=seed)
    return _labelled(a)


def _bad_unreadable(d: Path) -> tuple[Path, str]:
    p = d / "garbage.extxyz"
    p.write_text("3\nthis is not\nan xyz file at all\n")
    return p, r"garbage\.extxyz: cannot read"


def _bad_unknown_format(d: Path) -> tuple[Path, str]:
    p = d / "structure.unknownext"
    p.write_text("hello")
    return p, r"structure\.unknownext: cannot read"


def _bad_empty(d: Path) -> tuple[Path, str]:
    p = d / "empty.xyz"
    p.write_text("")
    return p, r"empty\.xyz: empty file"


def _bad_nan_positions(d: Path) -> tuple[Path, str]:
    images = [_cu(0), _cu(1)]
    images[1].positions[2, 1] = np.nan
    return _write_images(d / "nanpos.extxyz", images), r"nanpos\.extxyz, structure 1: positions"


def _bad_nan_energy(d: Path) -> tuple[Path, str]:
    images = [_cu(0), _cu(1), _cu(2)]
    images[2].calc.results["energy"] = float("inf")
    return _write_images(d / "nanE.extxyz", images), r"nanE\.extxyz, structure 2: energy"


def _bad_nan_forces(d: Path) -> tuple[Path, str]:
    images = [_cu(0), _cu(1)]
    images[0].calc.results["forces"][1, 1] = np.nan
    return _write_images(d / "nanF.extxyz", images), r"nanF\.extxyz, structure 0: forces"


def _bad_close_atoms(d: Path) -> tuple[Path, str]:
    images = [_cu(0), _cu(1)]
    images[1].positions[1] = images[1].positions[0] + [0.05, 0, 0]
    images[1].calc = SinglePointCalculator(images[1], energy=0.0, forces=np.zeros((4, 3)))
    return _write_images(d / "close.extxyz", images), r"close\.extxyz, structure 1: atoms 0 and 1"


def _bad_close_periodic_image(d: Path) -> tuple[Path, str]:
    a = bulk("Cu", "fcc", a=3.6, cubic=True)
    a.positions[1] = a.positions[0] + a.cell[0] - [0.03, 0, 0]  # close to the image of atom 0
    a.calc = SinglePointCalculator(a, energy=0.0, forces=np.zeros((4, 3)))
    return _write_images(d / "image.extxyz", [a]), r"image\.extxyz, structure 0: atoms"


def _bad_missing_energy(d: Path) -> tuple[Path, str]:
    images = [_cu(0), _cu(1)]
    images[1].calc = None
    return _write_images(d / "noE.extxyz", images), r"noE\.extxyz, structure 1: no energy"


def _bad_unknown_symbol(d: Path) -> tuple[Path, str]:
    p = d / "unknown.xyz"
    p.write_text("2\n\nCu 0 0 0\nQq 0 0 2.5\n")
    return p, r"unknown\.xyz: unknown chemical symbol 'Qq'"


def _bad_pbc_zero_cell(d: Path) -> tuple[Path, str]:
    p = d / "pbc.extxyz"
    p.write_text(
        '1\nLattice="3.6 0 0 0 3.6 0 0 0 0" Properties=species:S:1:pos:R:3 '
        'energy=1.0 pbc="T T T"\nCu 0 0 0\n'
    )
    return p, r"pbc\.extxyz, structure 0: pbc is True along axis 2"


def _bad_force_shape(d: Path) -> tuple[Path, str]:
    p = d / "fshape.extxyz"
    p.write_text(
        '2\nProperties=species:S:1:pos:R:3:forces:R:2 energy=1.0 pbc="F F F"\n'
        "H 0 0 0 0.1 0.2\nH 0 0 0.8 0.1 0.2\n"
    )
    return p, r"fshape\.extxyz(, structure 0)?: .*forces"


BAD = [
    _bad_unreadable,
    _bad_unknown_format,
    _bad_empty,
    _bad_nan_positions,
    _bad_nan_energy,
    _bad_nan_forces,
    _bad_close_atoms,
    _bad_close_periodic_image,
    _bad_missing_energy,
    _bad_unknown_symbol,
    _bad_pbc_zero_cell,
    _bad_force_shape,
]


@pytest.mark.parametrize("make_bad", BAD, ids=lambda f: f.__name__[5:])
def test_bad_input_names_culprit_and_leaves_store_unchanged(make_bad, tmp_path, slab_file):
    store = tmp_path / "store.zarr"
    write_dataset(load_files([slab_file]), store)  # a store with content already in it
    before = _snapshot(store)
    bad, pattern = make_bad(tmp_path)

    with pytest.raises(DataError, match=pattern):
        write_dataset(load_files([slab_file, bad]), store)
    assert _snapshot(store) == before

    result = CliRunner().invoke(app, ["ingest", str(slab_file), str(bad), "--store", str(store)])
    assert result.exit_code != 0
    assert bad.name in result.output
    assert _snapshot(store) == before


def test_cli_prints_key_and_summary(slab_file, tmp_path):
    store = tmp_path / "store.zarr"
    result = CliRunner().invoke(app, ["ingest", str(slab_file), "--store", str(store)])
    assert result.exit_code == 0, result.output
    key = load_files([slab_file]).key
    assert f"dataset {key}" in result.output
    assert "structures" in result.output and "['Cu']" in result.output
    again = CliRunner().invoke(app, ["ingest", str(slab_file), "--store", str(store)])
    assert "nothing written" in again.output


def test_a_split_not_stored_is_made_on_read(tmp_path, shipped):
    """A campaign that changes split.seed on an existing dataset reads a fresh partition."""
    import ase.io

    ase.io.write(tmp_path / "cu.extxyz", ase.io.read(shipped["cu"], ":20"))
    store = str(tmp_path / "store.zarr")
    key, _ = write_dataset(load_files([tmp_path / "cu.extxyz"]), store)
    parts = read_split(store, key, (0.5, 0.25, 0.25), 7)
    assert [len(parts[k]) for k in ("train", "validation", "test")] == [10, 5, 5]
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(20))
