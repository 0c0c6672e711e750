"""docs/campaign.md cannot rot: its key tables are what docs/make_reference.py writes from the
campaign's pydantic models, every field has a meaning, and its example is a valid campaign."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
from pydantic import Field

from flows.config import CampaignConfig, ConfigError, load_campaign

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "campaign.md"


@pytest.fixture(scope="module")
def ref():
    spec = importlib.util.spec_from_file_location("make_reference", ROOT / "docs/make_reference.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_reference"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("make_reference", None)


def test_committed_doc_is_in_sync_with_the_models(ref):
    current = DOC.read_text(encoding="utf-8")
    assert ref.render(current) == current, "run: python docs/make_reference.py"


def test_every_field_has_a_meaning_and_no_entry_is_stale(ref):
    assert ref.problems() == []


def test_every_key_of_every_model_is_in_the_doc(ref):
    """Independent of the generator's walk: the keys pydantic itself reports."""
    text = DOC.read_text(encoding="utf-8")

    def keys(model):
        for name, info in model.model_fields.items():
            yield model, name
            for sub, _, _ in ref._nested(info.annotation, name):
                yield from keys(sub)

    for model, name in keys(CampaignConfig):
        anchor = f'<a id="{model.__name__.lower()}"></a>'
        table = text.split(anchor, 1)[1].split("<a id=", 1)[0]
        assert f"| `{name}` |" in table, f"{model.__name__}.{name} missing from docs/campaign.md"


def test_generated_rows_state_defaults_and_bounds(ref):
    text = DOC.read_text(encoding="utf-8")
    # read against flows/config.py by hand: SplitConfig.seed, TrainingSettings.epochs/lr,
    # CampaignConfig.datasets, DaskConfig.address
    assert "| `seed` | integer | `0` |  |" in text
    assert "| `epochs` | integer | `200` | ≥ 1 |" in text
    assert "| `lr` | number | `0.01` | > 0 |" in text
    assert "| `datasets` | mapping: name → mapping ([table](#datasetconfig)) | required |" in text
    assert "| `address` | string or null | `null` |" in text


def test_a_drifted_doc_or_an_undocumented_field_is_caught(ref, monkeypatch):
    current = DOC.read_text(encoding="utf-8")
    drifted = current.replace("| `seed` | integer | `0` |", "| `seed` | integer | `1` |", 1)
    assert drifted != current and ref.render(drifted) != drifted

    class Extra(CampaignConfig):
        brand_new_key: int = Field(3, ge=0)

    monkeypatch.setattr(ref, "CampaignConfig", Extra)
    assert any("brand_new_key" in p for p in ref.problems())
    assert "| `brand_new_key` | integer | `3` | ≥ 0 |" in ref.tables()


def test_the_example_is_a_valid_campaign(tmp_path):
    text = DOC.read_text(encoding="utf-8")
    example = re.search(r"<!-- example:.*?-->\n```yaml\n(.*?)```", text, re.S).group(1)
    path = tmp_path / "my-campaign.yaml"
    path.write_text(example)
    cfg = load_campaign(path)
    assert set(cfg.features) == {"gaussian", "latent"} and set(cfg.models) == {
        "nn",
        "krr",
        "gp_latent",
    }
    assert cfg.datasets["ethanol"].paths == [str(tmp_path / "data/ethanol_gfn2.extxyz")]
    with pytest.raises(ConfigError, match=r"my-campaign.yaml: models\.nn\..*hiddenlayers"):
        load_campaign(path, {"models.nn.hiddenlayers": "wide"})
