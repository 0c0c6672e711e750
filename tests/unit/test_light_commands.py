"""Commands that compute nothing (`atompipe compare`, `atompipe ui`) read the campaign without
importing torch: a fresh interpreter loads the campaign the way they do and torch stays out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_loading_a_campaign_for_compare_does_not_import_torch():
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from flows.cli import _load\n"
        "cfg = _load(Path('data/campaigns/demo.yaml'), None, build_featurizers=False)\n"
        "assert cfg.name == 'demo'\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout[:500]


def test_activation_names_in_the_configuration_are_the_buildable_ones():
    from atomistic.models.layers import ACTIVATION_NAMES as BUILDABLE
    from flows.config import ACTIVATION_NAMES

    assert tuple(ACTIVATION_NAMES) == tuple(BUILDABLE)
