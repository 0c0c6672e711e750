"""Which stages run again when one key of a campaign changes (docs/campaign.md, "Caching").

    python docs/examples/cache_states.py [CAMPAIGN]   # default docs/examples/tiny.yaml

Runs the campaign once, then once per override below, all in one process (one temporary
Prefect API), in a fresh temporary workspace, and prints for each run the stages that were
not cache hits. Takes about two minutes on one core with the tiny campaign.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from flows.settings import configure_environment  # noqa: E402

OVERRIDES = [
    {},  # the first run: everything runs
    {},  # nothing changed: every stage is a cache hit
    {"models.nn.training.epochs": 21},
    {"models.krr.sigma": 3.0},
    {"scaler.kind": "standard"},
    {"features.gaussian.cutoff": 6.0},
    {"dask.n_workers": 2, "dask.rows_per_chunk": 90},
    {"evaluation.metric": "force_mae"},
    {"evaluation.split": "validation"},
    {"name": "tiny-renamed"},
    {
        "models.nn2": {
            "type": "neuralnetwork",
            "features": "gaussian",
            "hiddenlayers": [8, 8],
            "activation": "tanh",
            "training": {"epochs": 21, "lr": 0.01},
        }
    },
    {"split.seed": 1},
    {"datasets.ethanol.paths": ["{tmp}/renamed-copy.extxyz"]},  # same bytes, another name
]


def main(campaign: str) -> None:
    configure_environment()
    with tempfile.TemporaryDirectory(prefix="atompipe-cache-") as tmp:
        os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(Path(tmp) / "prefect-results")
        from flows.campaign import run_campaign
        from flows.config import load_campaign

        shutil.copy(ROOT / "docs/examples/ethanol_tiny.extxyz", Path(tmp) / "renamed-copy.extxyz")
        for overrides in OVERRIDES:
            if "datasets.ethanol.paths" in overrides:
                overrides = {"datasets.ethanol.paths": [f"{tmp}/renamed-copy.extxyz"]}
            workspace = {"workspace": str(Path(tmp) / "ws"), "allow_absolute_paths": True}
            cfg = load_campaign(campaign, {**workspace, **overrides})
            label = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "(no change)"
            try:
                summary = run_campaign(cfg, show_progress=False)
            except Exception as exc:  # report and go on with the next change
                print(f"{label[:60]:<60} failed: {type(exc).__name__}: {exc}", flush=True)
                continue
            ran = sorted(k for k, s in summary["states"].items() if s != "Cached")
            print(f"{label[:60]:<60} ran: {', '.join(ran) or 'nothing'}", flush=True)


if __name__ == "__main__":
    os.chdir(ROOT)
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/examples/tiny.yaml")
