"""Deploy a campaign to a Prefect work pool (docs/scale-out.md, "Prefect server and work pools").

    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python docs/examples/deploy_to_pool.py CAMPAIGN POOL [--cron "0 3 * * *"] [--source DIR|GIT-URL]

The deployment runs the campaign flow (flows/campaign.py:campaign) with the campaign's validated
configuration as its parameter; a ``prefect worker start --pool POOL`` process picks its runs up.
``--source`` is where workers fetch the code: this checkout by default (workers on this machine
or on a shared filesystem), or a git URL that every worker can clone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("campaign")
    parser.add_argument("pool")
    parser.add_argument("--cron", default=None)
    parser.add_argument("--source", default=str(ROOT))
    args = parser.parse_args()

    from prefect import flow

    from flows.config import load_campaign
    from flows.settings import configure_environment

    configure_environment()
    cfg = load_campaign(args.campaign)
    remote = flow.from_source(source=args.source, entrypoint="flows/campaign.py:campaign")
    deployment_id = remote.deploy(
        name=cfg.name,
        work_pool_name=args.pool,
        parameters={"config": cfg.model_dump(mode="json"), "show_progress": False},
        cron=args.cron,
        tags=["atompipe"],
    )
    print(f"deployment atompipe-campaign/{cfg.name} ({deployment_id}) on pool {args.pool}")


if __name__ == "__main__":
    main()
