"""The campaign's ``store`` key: a local path resolves like the workspace, a URL is kept as is,
and a workspace given as a URL is refused with a pointer to ``store``."""

from __future__ import annotations

import pytest
import yaml

from flows.config import ConfigError, load_campaign

BASE = {
    "datasets": {"cu": {"paths": ["cu.extxyz"]}},
    "features": {"g": {"type": "gaussian", "dataset": "cu"}},
}


def _load(tmp_path, **extra):
    (tmp_path / "cu.extxyz").write_text("")
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({**BASE, **extra}))
    return load_campaign(path)


def test_default_store_is_in_the_workspace(tmp_path):
    cfg = _load(tmp_path, workspace="ws")
    assert cfg.store_url == str(tmp_path / "ws" / "store.zarr")


def test_local_store_resolves_against_the_root(tmp_path):
    assert _load(tmp_path, store="shared/store.zarr").store_url == str(
        tmp_path / "shared" / "store.zarr"
    )
    with pytest.raises(
        ConfigError, match=r"store: '\.\./elsewhere\.zarr' leaves the campaign root"
    ):
        _load(tmp_path, store="../elsewhere.zarr")


def test_object_store_url_is_kept(tmp_path):
    cfg = _load(tmp_path, store="s3://bucket/campaigns/store.zarr")
    assert cfg.store_url == "s3://bucket/campaigns/store.zarr"


def test_workspace_url_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"workspace: 's3://b/ws' must be a local folder.*store"):
        _load(tmp_path, workspace="s3://b/ws")
