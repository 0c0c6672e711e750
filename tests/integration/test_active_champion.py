"""The active loop's registry (docs/active-learning.md, MLflow): each iteration's model is
registered, the alias "champion" ends on the iteration with the lowest test force MAE (found here
from the runs' metrics in the sqlite store itself, not through MLflow), and a rerun leaves it."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import ase.io
import pytest
import yaml
from test_active_flow import CAMPAIGN  # its tiny loop: two iterations, two labels each

from flows.config import load_campaign

pytestmark = pytest.mark.slow


def _from_sqlite(db) -> tuple[dict[str, tuple[float, str]], dict[str, str], str]:
    """Iteration runs' (test force MAE, model key) by run name, registered versions' run ids
    by version, and the version holding the alias, read with sqlite3 alone."""
    with closing(sqlite3.connect(db)) as con:
        iterations = {
            name: (mae, key)
            for name, mae, key in con.execute(
                "SELECT r.name, m.value, t.value FROM runs r "
                "JOIN latest_metrics m ON m.run_uuid = r.run_uuid AND m.key = 'test_force_mae' "
                "JOIN tags t ON t.run_uuid = r.run_uuid AND t.key = 'atompipe.model_key' "
                "WHERE r.name LIKE 'iteration-%' AND r.lifecycle_stage = 'active'"
            )
        }
        versions = {
            str(v): run_id
            for v, run_id in con.execute(
                "SELECT version, run_id FROM model_versions WHERE name = 'altest-active-champion'"
            )
        }
        (alias,) = con.execute(
            "SELECT version FROM registered_model_aliases "
            "WHERE name = 'altest-active-champion' AND alias = 'champion'"
        ).fetchone()
        (champion_key,) = con.execute(
            "SELECT t.value FROM model_versions v JOIN tags t ON t.run_uuid = v.run_id "
            "AND t.key = 'atompipe.model_key' WHERE v.name = 'altest-active-champion' "
            "AND v.version = ?",
            (alias,),
        ).fetchone()
    return iterations, versions, champion_key


def test_the_champion_is_the_iteration_with_the_lowest_test_force_error(
    tmp_path, shipped, prefect_harness
):
    from mlflow import MlflowClient

    from flows.active import run_active

    ase.io.write(tmp_path / "cu.extxyz", ase.io.read(shipped["cu"], ":15"))
    (tmp_path / "campaign.yaml").write_text(yaml.safe_dump(CAMPAIGN))
    cfg = load_campaign(tmp_path / "campaign.yaml")
    out = run_active(cfg)
    assert [r["iteration"] for r in out["iterations"]] == [0, 1, 2]
    db = tmp_path / "workspace" / "mlflow.db"

    iterations, versions, champion_key = _from_sqlite(db)
    assert sorted(iterations) == ["iteration-0", "iteration-1", "iteration-2"]
    assert len(versions) == len({key for _, key in iterations.values()})  # one per model
    best = min(iterations.values())
    assert champion_key == best[1]
    assert out["tracking"]["champion"]["model"] == best[1]

    # each iteration run says whether it took the alias, and the best before it
    client = MlflowClient(cfg.tracking_uri)
    exp = client.get_experiment_by_name("altest-active")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    best_so_far = None
    for k in range(3):
        tags = runs[f"iteration-{k}"].data.tags
        mae = iterations[f"iteration-{k}"][0]
        took = best_so_far is None or mae < best_so_far
        assert tags["champion"] == ("true" if took else "false"), (k, mae, best_so_far)
        assert tags["champion_previous_test_force_mae"] == str(best_so_far).lower()
        best_so_far = mae if took else best_so_far

    # the registered champion loads as an MLflow pyfunc and predicts forces
    import mlflow

    model = mlflow.pyfunc.load_model("models:/altest-active-champion@champion")
    assert model.metadata.run_id in versions.values()

    # a rerun: no new run of an iteration, no new version, the alias where it was
    alias_before = client.get_model_version_by_alias("altest-active-champion", "champion")
    again = run_active(cfg)
    assert again["tracking"]["recorded"] == []
    assert again["tracking"]["champion"]["version"] == str(alias_before.version)
    iterations2, versions2, champion_key2 = _from_sqlite(db)
    assert iterations2 == iterations and versions2 == versions
    assert champion_key2 == champion_key
    alias_after = client.get_model_version_by_alias("altest-active-champion", "champion")
    assert alias_after.version == alias_before.version
