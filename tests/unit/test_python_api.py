"""docs/python-api.md runs: its ```python blocks, in order, in one namespace, in a temporary
folder; plus the API's contracts that the page states (names, inputs, ML4Chem keywords)."""

import re
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "python-api.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.mark.filterwarnings("ignore::atomistic.models.TrainingWarning")
def test_python_api_page_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = _blocks()
    assert len(blocks) >= 6
    namespace: dict = {"__name__": "python_api_doc"}
    for k, code in enumerate(blocks):
        exec(compile(code, f"{DOC.name}[block {k}]", "exec"), namespace)
    assert (tmp_path / "features.scaler").exists() and (tmp_path / "potential.pt").exists()


def test_public_names_and_light_import():
    import subprocess
    import sys

    code = (
        "import sys, atomistic; heavy = 'torch' in sys.modules;"
        "missing = [n for n in atomistic.__all__ if getattr(atomistic, n, None) is None];"
        "print(heavy, missing)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "[]"]


def test_inputs_and_ml4chem_keywords(tmp_path):
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    from atomistic import AtomicData, Gaussian, KernelRidge, Scaler

    images = []
    for k, a in enumerate((3.5, 3.6, 3.7, 3.55)):
        atoms = bulk("Cu", "fcc", a=a, cubic=True)
        atoms.rattle(0.02, seed=k)
        atoms.calc = EMT()
        e = atoms.get_potential_energy()
        atoms.calc = SinglePointCalculator(atoms, energy=e)
        images.append(atoms)
    # ML4Chem's StandardScaler preprocessor, saved where ML4Chem would
    f = Gaussian(
        cutoff=4.0,
        preprocessor=("StandardScaler", None),
        save_preprocessor=str(tmp_path / "s.json"),
    )
    model = KernelRidge(sigma=1.0).fit(images, featurizer=f)
    assert model.scaler_.kind == "standard" and Scaler.load(tmp_path / "s.json").kind == "standard"
    assert Gaussian(cutoff=4.0).get_params() == Gaussian(cutoff=4.0, preprocessor=None).get_params()
    # the same predictions from atoms, a single Atoms, and AtomicData built by hand
    data = AtomicData.from_atoms(images, model.featurizer_, model.scaler_)
    e1 = model.predict(images)["energy"]
    np.testing.assert_allclose(model.predict(data)["energy"], e1, atol=1e-12)
    assert model.predict(images[0])["energy"][0] == pytest.approx(e1[0], abs=1e-12)
    # no scaling at all
    assert (
        KernelRidge(sigma=1.0).fit(images, featurizer=Gaussian(4.0), scaler=False).scaler_ is None
    )
    with pytest.raises(TypeError, match="ase.Atoms"):
        model.predict([1, 2])
    with pytest.raises(ValueError, match="preprocessor"):
        KernelRidge().fit(images, featurizer=Gaussian(4.0, preprocessor=("RobustScaler", None)))
