"""The exported TorchScript potential against the Python model it came from: features to 1e-10
(float64), then energies, forces and stress, loaded with ``torch.jit.load`` in an isolated
Python (``-I``, run from an empty folder: atompipe cannot be imported there)."""

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.stress import full_3x3_to_voigt_6_stress
from atoms_factory import cu_images, make_data, molecule_images

from atomistic.export import ExportedFeatures, export_model
from atomistic.features import AEV, Gaussian
from atomistic.models import (
    GaussianProcess,
    KernelRidge,
    NeuralNetwork,
    TrainingConfig,
)

pytestmark = pytest.mark.filterwarnings("ignore::atomistic.models.TrainingWarning")


def _skewed_cu(size=(2, 1, 1)):
    """A rattled, sheared Cu cell with one atom outside the cell (wrapping is tested too)."""
    atoms = cu_images(1, seed=5, size=size)[0]
    shear = np.eye(3) + [[0.02, 0.01, 0], [0, -0.01, 0.015], [0, 0, 0]]
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.positions[0] += 1.3 * atoms.cell[0] - 0.4 * atoms.cell[2]
    return atoms


def _call(module, atoms):
    return module(
        torch.tensor(atoms.positions),
        torch.tensor(atoms.numbers),
        torch.tensor(atoms.cell.array),
        torch.tensor(atoms.pbc),
    )


@pytest.mark.parametrize(
    "featurizer, kind",
    [
        (Gaussian(cutoff=4.0, elements=["Cu"]), "cu"),
        (Gaussian(cutoff=4.0, elements=["Cu"], angular_type="G4"), "cu"),
        (Gaussian(cutoff=5.0, elements=["H", "C", "O"]), "mol"),
        (
            Gaussian(
                cutoff={"radial": 5.0, "angular": 3.5},
                elements=["H", "C", "O"],
                angular_type="G4",
                weighted=True,
            ),
            "mol",
        ),
        (
            Gaussian(cutoff=5.0, elements=["H", "C", "O"], custom={"G3": {"zetas": [1.5, 2]}}),
            "mol",
        ),
        (AEV.like_ani1x(), "mol"),
        (AEV(elements=["Cu"]), "cu"),
    ],
)
def test_exported_features_equal_the_featurizer(featurizer, kind):
    atoms = _skewed_cu() if kind == "cu" else molecule_images(1, seed=2)[0]
    scripted = torch.jit.script(ExportedFeatures(featurizer))
    X = _call_features(scripted, atoms)
    np.testing.assert_allclose(X, featurizer.featurize([atoms])[0], rtol=0, atol=1e-10)


def _call_features(module, atoms):
    return module(
        torch.tensor(atoms.positions),
        torch.tensor(atoms.numbers),
        torch.tensor(atoms.cell.array),
        torch.tensor(atoms.pbc),
    ).numpy()


MODELS = {
    "nn": lambda: NeuralNetwork((8,), "silu", training=TrainingConfig(epochs=2)),
    "nn_committee": lambda: NeuralNetwork(
        (6,), "tanh", dtype="float64", ensemble=2, training=TrainingConfig(epochs=2)
    ),
    "krr_laplacian": lambda: KernelRidge(kernel="laplacian", sigma=2.0),
    "gp": lambda: GaussianProcess(sigma=2.0, optimize=False),
    "krr_sparse_forces": lambda: KernelRidge(sigma=2.0, forces=True, n_sparse=8),
}


@pytest.fixture(scope="module")
def cu_data():
    return make_data(cu_images(10, seed=1), cutoff=4.0)


@pytest.mark.parametrize("kind", list(MODELS))
def test_exported_model_equals_predict(cu_data, kind, tmp_path):
    model = MODELS[kind]().fit(cu_data)
    export_model(model, tmp_path / "potential.pt")
    atoms = _skewed_cu()
    out = _call(torch.jit.load(str(tmp_path / "potential.pt")), atoms)
    ref = model.predict([atoms], forces=True, stress=True)
    assert float(out["energy"]) == pytest.approx(ref["energy"][0], abs=1e-9)
    np.testing.assert_allclose(out["forces"].numpy(), ref["forces"], atol=1e-9)
    stress = full_3x3_to_voigt_6_stress(out["stress"].numpy())
    np.testing.assert_allclose(stress, ref["stress"][0], atol=1e-10)


# run with -I -S: no user site, no .pth files (atompipe's editable install is one); only the
# folder that holds torch is put on the path, so torch imports and atompipe cannot
_CHILD = """
import json, sys
sys.path.append(sys.argv[2])
import torch
try:
    import atomistic
    raise SystemExit("atomistic must not be importable here")
except ImportError:
    pass
m = torch.jit.load(sys.argv[1])
inp = json.loads(sys.stdin.read())
out = m(torch.tensor(inp["positions"], dtype=torch.float64), torch.tensor(inp["numbers"]),
        torch.tensor(inp["cell"], dtype=torch.float64), torch.tensor(inp["pbc"]))
print(json.dumps({k: v.tolist() for k, v in out.items()}))
"""


def _torch_site() -> str:
    return str(Path(torch.__file__).resolve().parent.parent)


def test_cli_export_loads_without_atompipe(cu_data, tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    model_dir = (
        NeuralNetwork((8,), "silu", dtype="float64", training=TrainingConfig(epochs=2))
        .fit(cu_data)
        .save(tmp_path / "model")
    )
    target = tmp_path / "potential.pt"
    result = CliRunner().invoke(app, ["export", str(model_dir), "-o", str(target)])
    assert result.exit_code == 0, result.output
    atoms = _skewed_cu((1, 1, 1))
    payload = {
        "positions": atoms.positions.tolist(),
        "numbers": atoms.numbers.tolist(),
        "cell": atoms.cell.array.tolist(),
        "pbc": atoms.pbc.tolist(),
    }
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        proc = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHILD, str(target), _torch_site()],
            input=json.dumps(payload),
            capture_output=True,
            text=True,
            cwd=empty,
            timeout=600,  # a fresh Python imports torch: minutes on a crowded machine
        )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    from atomistic.models import load_model

    ref = load_model(model_dir).predict([atoms], forces=True, stress=True)
    assert out["energy"] == pytest.approx(ref["energy"][0], abs=1e-10)
    np.testing.assert_allclose(out["forces"], ref["forces"], atol=1e-10)
    np.testing.assert_allclose(
        full_3x3_to_voigt_6_stress(np.array(out["stress"])), ref["stress"][0], atol=1e-10
    )
