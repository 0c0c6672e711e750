"""Smoke test of the benchmark suite: a tiny quick subset runs end to end in one process and
writes its JSON and plots; the helpers it reports with are checked against closed forms."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.__main__ import main
from benchmarks.common import loglog_slope, table


def test_loglog_slope_recovers_power_law_exponents():
    x = np.array([25.0, 50, 100, 200, 400])
    for p in (1.0, 2.0, 3.0, 0.5):
        assert loglog_slope(x, 7.3 * x**p) == pytest.approx(p, abs=1e-12)


def test_table_aligns_columns_and_marks_missing_values():
    text = table("t", ["name", "value"], [("a", 1.23456), ("long name", float("nan"))])
    lines = text.splitlines()
    assert lines[1] == "== t"
    assert lines[3].startswith("a ") and lines[3].endswith("1.23")
    assert lines[4].endswith("-") and len({len(s) for s in lines[2:5]}) == 1


def test_quick_subset_writes_results_and_plots(tmp_path):
    assert main(["--quick", "--only", "cellsize", "kernels", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "benchmarks.json").read_text())
    assert report["quick"] is True and not report["errors"]
    assert report["machine"]["cpu_count"] >= 1 and len(report["machine"]["loadavg"]) == 3
    cells = report["results"]["cellsize"]
    assert cells["atoms"] == [32, 108, 256]  # 4 n^3 atoms of the cubic fcc supercells
    for name, secs in cells["seconds"].items():
        assert len(secs) == 3 and all(s > 0 for s in secs), name
        assert cells["exponent"][name] == pytest.approx(loglog_slope(cells["atoms"], secs))
    kern = report["results"]["kernels"]
    assert kern["atoms"] == [32 * n for n in kern["sizes"]]
    assert all(t > 0 for t in kern["seconds"]["KRR"])
    for png in ("featurize_vs_atoms.png", "krr_fit_vs_atoms.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 150_000, png
    assert not (tmp_path / "memory_vs_dataset.png").exists()  # memory did not run


def test_cuda_request_without_a_gpu_is_refused(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as exc:
        main(["--device", "cuda", "--only", "featurize"])
    assert exc.value.code == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_incremental_quick_grows_by_the_new_structures_only(tmp_path):
    from benchmarks.report import rows

    assert main(["--quick", "--only", "incremental", "--out", str(tmp_path), "--no-plots"]) == 0
    report = json.loads((tmp_path / "benchmarks.json").read_text())
    assert not report["errors"]
    inc = report["results"]["incremental"]
    assert inc["parent_structures"] == 200 and inc["new_structures"] == 4
    assert inc["featurized_atoms"] == 4 * inc["atoms_per_structure"] == 128
    assert inc["full_atoms"] == 204 * 32
    assert inc["max_abs_diff"] <= 1e-12 and inc["same_keys"] is True
    # the grown version's groups hold its 4 new structures only, not the parent's 200 again
    stored = inc["dataset_bytes"]
    assert stored["grown"] < stored["parent"] / 5
    assert stored["grown_features"] < stored["parent_features"] / 5
    for name in ("full", "grow", "_grow_features"):
        assert len(inc["seconds"][name]) == inc["repeat"] == 1
        assert inc["median_s"][name] > 0 and inc["spread"][name] == 1.0
    assert inc["ratio_full_over_features"] == pytest.approx(
        inc["median_s"]["full"] / inc["median_s"]["_grow_features"]
    )
    (row,) = [r for r in rows(report) if r[-1] == "`python -m benchmarks.incremental`"]
    assert row[0].startswith("incremental featurization, +4 structures on 200 (128 of 6528")
