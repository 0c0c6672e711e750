"""Commands that compute nothing (`atompipe compare`, `atompipe ui`) read the campaign without
importing torch or Prefect: a fresh interpreter imports the command line, loads the campaign the
way they do, and torch and Prefect stay out."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_loading_a_campaign_for_compare_imports_neither_torch_nor_prefect():
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "import flows.cli\n"
        "from flows.cli_common import load_config\n"
        "cfg = load_config(Path('data/campaigns/demo.yaml'), None, build_featurizers=False)\n"
        "assert cfg.name == 'demo'\n"
        "print(sorted(m for m in sys.modules if m.partition('.')[0] in ('torch', 'prefect')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout[:500]


def test_activation_names_in_the_configuration_are_the_buildable_ones():
    from atomistic.models.layers import ACTIVATION_NAMES as BUILDABLE
    from flows.config import ACTIVATION_NAMES

    assert tuple(ACTIVATION_NAMES) == tuple(BUILDABLE)
