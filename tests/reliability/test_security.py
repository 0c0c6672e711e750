"""Security: no pickle and no ``torch.load`` without ``weights_only`` on files a user hands in,
YAML loaded safely, servers on 127.0.0.1 by default, campaign paths confined to the campaign's
root unless it allows absolute paths."""

from __future__ import annotations

import ast
import inspect
import os
from pathlib import Path

import pytest
import torch
import yaml

from atomistic.models.training import TrainingConfig, train
from flows.config import ConfigError, load_campaign

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("atomistic", "tasks", "flows", "benchmarks")
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "UniqueKeyLoader"}  # the last: a SafeLoader
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "cloudpickle", "dill", "joblib", "marshal"}


def _sources() -> list[Path]:
    files = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    assert len(files) > 30
    return files


def _kw(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _unsafe_calls(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            mod = getattr(node, "module", None)
            for m in [mod, *names]:
                if m and m.split(".")[0] in PICKLE_MODULES:
                    found.append(f"line {node.lineno}: imports {m}")
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
        owner = f.value.id if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) else ""
        where = f"line {node.lineno}: {owner + '.' if owner else ''}{name}"
        if owner == "torch" and name == "load":
            wo = _kw(node, "weights_only")
            if not (isinstance(wo, ast.Constant) and wo.value is True):
                found.append(f"{where} without weights_only=True")
        if owner == "yaml" and name in ("unsafe_load", "full_load", "load_all", "unsafe_load_all"):
            found.append(where)
        if owner == "yaml" and name == "load":
            loader = _kw(node, "Loader")
            loader_name = getattr(loader, "attr", getattr(loader, "id", None))
            if loader_name not in SAFE_YAML_LOADERS:
                found.append(f"{where} with Loader={loader_name}")
        if name == "load" and owner in ("np", "numpy"):
            ap = _kw(node, "allow_pickle")
            if ap is not None and not (isinstance(ap, ast.Constant) and ap.value is False):
                found.append(f"{where} with allow_pickle")
        if isinstance(f, ast.Name) and name in ("eval", "exec"):  # the builtins
            found.append(where)
        if name == "read_pickle" and owner in ("pd", "pandas"):
            found.append(where)
    return found


def test_no_pickle_no_unsafe_torch_or_yaml_load_in_the_code():
    problems = {
        str(p.relative_to(ROOT)): bad
        for p in _sources()
        if (bad := _unsafe_calls(ast.parse(p.read_text(), str(p))))
    }
    assert problems == {}


def test_the_scan_finds_what_it_forbids():
    bad = """
import pickle
from joblib import load
torch.load(path)
torch.load(path, weights_only=False)
yaml.load(text, Loader=yaml.Loader)
yaml.unsafe_load(text)
np.load(path, allow_pickle=True)
eval(text)
pd.read_pickle(path)
"""
    assert len(_unsafe_calls(ast.parse(bad))) == 9
    good = "torch.load(p, weights_only=True)\nyaml.safe_load(t)\nnp.load(p)\nnet.eval()\n"
    assert _unsafe_calls(ast.parse(good)) == []


def test_campaign_yaml_loader_is_safe():
    from flows.config import _UniqueKeyLoader

    assert issubclass(_UniqueKeyLoader, yaml.SafeLoader)


class _Bomb:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_with_code_in_it_is_refused_unexecuted(tmp_path):
    """A pickle that would run a command, left where training looks for its checkpoint."""
    marker = tmp_path / "executed"
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    torch.save({"config": _Bomb(marker)}, ckpt_dir / "last.pt")
    net = torch.nn.Linear(2, 1)
    x = torch.randn(8, 2)

    def loss_fn(module, batch):
        return {"loss": (module(batch) ** 2).mean()}

    config = TrainingConfig(epochs=2, checkpoint_dir=str(ckpt_dir))
    with pytest.raises(ValueError, match=r"checkpoint .*last\.pt cannot be loaded safely"):
        train(net, loss_fn, [x], config=config)
    assert not marker.exists()


def test_servers_bind_to_loopback_by_default():
    from flows import cli
    from tasks import cluster

    assert inspect.signature(cli.ui).parameters["host"].default == "127.0.0.1"
    assert 'host="127.0.0.1"' in inspect.getsource(cluster.dask_client)
    # the LocalCluster's sockets are checked for real in test_faults (psutil)


# -- campaign paths ------------------------------------------------------------------------
BASE = "datasets: {{cu: {{paths: [{path}]}}}}\nfeatures: {{g: {{type: gaussian, dataset: cu}}}}\n"


def _load(folder: Path, text: str, **overrides):
    path = folder / "c.yaml"
    path.write_text(text)
    return load_campaign(path, overrides or None)


def test_relative_paths_resolve_against_the_campaign_not_the_cwd(tmp_path, monkeypatch):
    sub = tmp_path / "camp"
    sub.mkdir()
    monkeypatch.chdir(tmp_path)
    cfg = _load(sub, BASE.format(path="data/*.extxyz"))
    assert cfg.datasets["cu"].paths == [str(sub / "data" / "*.extxyz")]
    assert cfg.workspace == str(sub / "workspace")
    assert cfg.store_url == str(sub / "workspace" / "store.zarr")
    monkeypatch.chdir("/")
    assert load_campaign(sub / "c.yaml") == cfg


@pytest.mark.parametrize(
    ("key", "text", "overrides"),
    [
        ("datasets.cu.paths", BASE.format(path="../x.extxyz"), {}),
        ("datasets.cu.paths", BASE.format(path="/etc/passwd"), {}),
        ("datasets.cu.paths", BASE.format(path="a/../../x.extxyz"), {}),
        ("workspace", BASE.format(path="x.extxyz") + "workspace: ../ws\n", {}),
        ("workspace", BASE.format(path="x.extxyz"), {"workspace": "/tmp/ws"}),
        ("root", BASE.format(path="x.extxyz") + "root: /\n", {}),
        ("root", BASE.format(path="etc/passwd") + "root: " + "../" * 40 + "\n", {}),
        ("store", BASE.format(path="x.extxyz") + "store: file:///tmp/elsewhere.zarr\n", {}),
        ("store", BASE.format(path="x.extxyz") + "store: ../elsewhere.zarr\n", {}),
        ("tracking.uri", BASE.format(path="x.extxyz"), {"tracking.uri": "sqlite:////tmp/x.db"}),
    ],
)
def test_escapes_are_refused_naming_the_key(tmp_path, key, text, overrides):
    with pytest.raises(ConfigError, match=rf"c\.yaml: {key}: .*allow_absolute_paths: true"):
        _load(tmp_path, text, **overrides)


def test_allow_absolute_paths_permits_them(tmp_path):
    text = BASE.format(path="../x.extxyz") + "workspace: /tmp/ws\nallow_absolute_paths: true\n"
    cfg = _load(tmp_path, text)
    assert cfg.datasets["cu"].paths == [str(tmp_path.parent / "x.extxyz")]
    assert cfg.workspace == "/tmp/ws"


def test_root_widens_the_boundary_explicitly(tmp_path):
    (tmp_path / ".git").mkdir()  # root may climb as far as the repository holding the campaign
    sub = tmp_path / "campaigns"
    sub.mkdir()
    cfg = _load(sub, "root: ..\n" + BASE.format(path="data/x.extxyz"))
    assert cfg.root == str(tmp_path)
    assert cfg.datasets["cu"].paths == [str(tmp_path / "data" / "x.extxyz")]
    assert cfg.workspace == str(tmp_path / "workspace")
    with pytest.raises(ConfigError, match=r"datasets\.cu\.paths: '\.\./y' leaves"):
        _load(sub, "root: ..\n" + BASE.format(path="../y"))


def test_the_demo_campaign_stays_inside_the_repository():
    cfg = load_campaign(ROOT / "data" / "campaigns" / "demo.yaml")
    assert cfg.root == str(ROOT) and not cfg.allow_absolute_paths
    assert cfg.datasets["cu"].paths == [str(ROOT / "data" / "cu_emt.extxyz")]
    assert cfg.workspace == str(ROOT / "workspace")


def test_root_stays_in_the_repository_and_sqlite_in_the_root(tmp_path):
    sub = tmp_path / "campaigns"
    sub.mkdir()  # no .git anywhere up to tmp_path: root may not climb at all
    with pytest.raises(ConfigError, match=r"c\.yaml: root: '\.\.' climbs above"):
        _load(sub, "root: ..\n" + BASE.format(path="data/x.extxyz"))
    cfg = _load(sub, BASE.format(path="x.extxyz") + "tracking: {uri: 'sqlite:///runs/m.db'}\n")
    assert cfg.tracking_uri == f"sqlite:///{sub / 'runs' / 'm.db'}"
    cfg = _load(sub, BASE.format(path="x.extxyz") + "store: file://shared/s.zarr\n")
    assert cfg.store_url == str(sub / "shared" / "s.zarr")


def test_a_glob_cannot_reach_a_link_pointing_out(tmp_path):
    outside = tmp_path / "outside.extxyz"
    outside.write_text("1\n\nCu 0 0 0\n")
    camp = tmp_path / "camp"
    (camp / "data").mkdir(parents=True)
    (camp / "data" / "ok.extxyz").write_text("1\n\nCu 0 0 0\n")
    (camp / "data" / "evil.extxyz").symlink_to(outside)
    cfg = _load(camp, BASE.format(path="'data/*.extxyz'"))  # the glob itself stays inside
    with pytest.raises(ConfigError, match=r"datasets\.cu\.paths: .*evil\.extxyz resolves to"):
        cfg.dataset_files("cu")
    (camp / "data" / "evil.extxyz").unlink()
    assert cfg.dataset_files("cu") == [camp / "data" / "ok.extxyz"]
