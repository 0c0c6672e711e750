"""Every campaign shipped in data/campaigns/ validates, and its datasets are in the repository."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.config import load_campaign

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGNS = sorted((ROOT / "data" / "campaigns").glob("*.yaml"))


def test_there_is_a_demo_and_a_fuller_example():
    assert {p.name for p in CAMPAIGNS} >= {"demo.yaml", "molecules.yaml"}


@pytest.mark.parametrize("path", CAMPAIGNS, ids=lambda p: p.name)
def test_shipped_campaign_is_valid(path):
    cfg = load_campaign(path)
    for ds in cfg.datasets.values():
        for p in ds.paths:
            assert Path(p).is_file() and ROOT in Path(p).parents, p
    assert Path(cfg.workspace).is_relative_to(ROOT / "workspace")
    for model in cfg.models.values():
        assert model.features in cfg.features
