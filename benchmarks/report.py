"""The README's results table, written from the suite's JSON (figures copied, not retyped).

    python -m benchmarks.report benchmarks/results/benchmarks.json

Prints Markdown: one row per figure, each with the command that reproduces it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def _f(v: float, digits: int = 3) -> str:
    if v is None or v != v:
        return "—"
    if abs(v) >= 1000:
        return f"{v:,.0f}".replace(",", " ")
    return f"{v:.{digits}g}"


def _cmd(name: str, extra: str = "") -> str:
    return f"`python -m benchmarks.{name}{extra}`"


def rows(report: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(figure, atompipe, peer or reference, ratio, command) rows."""
    r = report["results"]
    out = []
    if "featurize" in r:
        for row in r["featurize"]["rows"]:
            peer = row["peer"].split()[0]
            out.append(
                (
                    f"featurization, {row['data']}, {row['featurizer']} "
                    f"({row['atoms']} atoms), atoms/s (spread of 5 calls)",
                    f"{_f(row['ours_atoms_per_s'])} ({_f(row.get('ours_spread'))})",
                    f"{peer} {_f(row['peer_atoms_per_s'])} ({_f(row.get('peer_spread'))})",
                    f"{_f(row['ratio'])}×",
                    _cmd("featurize"),
                )
            )
        for row in r["featurize"]["rows"]:
            if row["data"] == "Cu" and row["featurizer"] != "G2+G4":
                kind = (
                    "one backward pass" if "TorchANI" in row["peer"] else "full numerical Jacobian"
                )
                out.append(
                    (
                        f"features + gradients, Cu, {row['featurizer']}, atoms/s",
                        _f(row["ours_grad_atoms_per_s"]),
                        f"{row['peer'].split()[0]} {_f(row['peer_grad_atoms_per_s'])} ({kind})",
                        f"{_f(row['ratio_grad'])}×",
                        _cmd("featurize"),
                    )
                )
    if "cellsize" in r:
        c = r["cellsize"]
        ours = ", ".join(
            f"{n.removeprefix('atompipe ')} {_f(p)}"
            for n, p in c["exponent"].items()
            if n.startswith("atompipe")
        )
        peer = ", ".join(
            f"{n} {_f(p)}" for n, p in c["exponent"].items() if not n.startswith("atompipe")
        )
        out.append(
            (
                f"featurization time ~ atoms^p, Cu cells {c['atoms'][0]}–{c['atoms'][-1]} "
                "atoms (1 = linear)",
                ours,
                peer or "—",
                "—",
                _cmd("cellsize"),
            )
        )
    if "forces" in r:
        feats = ", ".join(
            f"{row['what'].split(' (')[0]} {_f(row['ratio'])}×"
            for row in r["forces"]["features"]
            if row["data"] == "cu"
        )
        out.append(
            (
                "cost of forces, Cu features: time with gradients / without",
                feats,
                "—",
                "—",
                _cmd("forces"),
            )
        )
        models = ", ".join(
            f"{row['what'].split()[0]} {_f(row['ratio'])}×" for row in r["forces"]["models"]
        )
        out.append(
            (
                "cost of forces, Cu predictions from structures: (E + F) / E (GP's E "
                "includes its std)",
                models,
                "—",
                "—",
                _cmd("forces"),
            )
        )
    if "training" in r:
        for row in r["training"]["rows"]:
            out.append(
                (
                    f"NN training, ethanol, {row['target']}, AEV → 64 → 64 → 1, "
                    f"structures/s per epoch",
                    _f(row["atompipe_per_s"]),
                    f"plain TorchANI loop ({row['variant']}) {_f(row['torchani_loop_per_s'])}",
                    f"{_f(row['ratio'])}×",
                    _cmd("training"),
                )
            )
    if "kernels" in r:
        k = r["kernels"]
        n, s = k["sizes"][-1], k["seconds"]
        for name in ("KRR", "GP fixed"):
            out.append(
                (
                    f"{name} fit, {n} Cu structures ({k['atoms'][-1]} atoms), s; "
                    f"exponent p of time ~ N^p",
                    f"{_f(s[name][-1])} s, p = {_f(k['exponent'][name])}",
                    f"scipy cho_factor {n}×{n}: {_f(s['scipy cho_factor'][-1])} s, "
                    f"p = {_f(k['exponent']['scipy cho_factor'])}",
                    "—",
                    _cmd("kernels"),
                )
            )
        opt = [(m, t) for m, t in zip(k["sizes"], s["GP optimised"], strict=True) if t == t]
        if opt:
            m, t = opt[-1]
            out.append(
                (
                    f"GP fit with marginal-likelihood search, {m} structures, s",
                    _f(t),
                    "—",
                    "—",
                    _cmd("kernels"),
                )
            )
        demo = k.get("demo_search")
        if demo:
            runs = demo["runs"][0]
            out.append(
                (
                    f"GP fit of the demo campaign ({demo['train_structures']} structures, "
                    "marginal-likelihood search), new process, median of "
                    f"{len(demo['runs'])}, s",
                    f"{_f(demo['seconds'])} (σ {_f(runs['sigma'], 4)}, noise "
                    f"{_f(runs['noise'], 4)})",
                    f"target {_f(demo['target_s'])} s",
                    "—",
                    _cmd("kernels"),
                )
            )
    if "dask_scaling" in r:
        d = r["dask_scaling"]
        out.append(
            (
                f"Dask featurization, {d['atoms']} atoms ({d.get('chunks_2', '?')} chunks "
                f"with 2 workers, {d.get('chunks_1', '?')} with 1): 2 workers vs 1, median of "
                f"{d.get('repeat', '?')}",
                f"{_f(d['workers_2_s'])} s vs {_f(d['workers_1_s'])} s",
                f"serial, no Dask: {_f(d['serial_s'])} s",
                f"{_f(d['speedup_2_vs_1'])}×",
                _cmd("dask_scaling"),
            )
        )
    if "incremental" in r:
        inc = r["incremental"]
        med = inc["median_s"]
        out.append(
            (
                f"incremental featurization, +{inc['new_structures']} structures on "
                f"{inc['parent_structures']} ({inc['featurized_atoms']} of {inc['full_atoms']} "
                f"atoms): grow stage's features vs the whole set, median of {inc['repeat']}, s",
                f"{_f(med['_grow_features'])} s (whole grow stage {_f(med['grow'])} s)",
                f"full featurize_dataset {_f(med['full'])} s",
                f"{_f(inc['ratio_full_over_features'])}×",
                _cmd("incremental"),
            )
        )
    if "cache" in r:
        c = r["cache"]
        out.append(
            (
                f"campaign ({c['structures']} Cu structures): first run vs cached rerun "
                "(same process)",
                f"{_f(c['first_s'])} s vs {_f(c['rerun_s'])} s",
                f"Prefect start-up {_f(c['prefect_startup_s'])} s",
                f"{_f(c['ratio'])}×",
                _cmd("cache"),
            )
        )
        if "rerun_new_process_s" in c:
            out.append(
                (
                    "cached rerun in a new process (Python + Prefect start-up + campaign)",
                    f"{_f(c['rerun_new_process_s'])} s",
                    "—",
                    "—",
                    _cmd("cache"),
                )
            )
        if "noop_fast_path_s" in c:
            out.append(
                (
                    f"no-op rerun of a complete campaign, new process, median of "
                    f"{c['noop_repeats']}, s",
                    f"{_f(c['noop_fast_path_s'])} (fast path)",
                    f"{_f(c['noop_full_path_s'])} (through Prefect, --no-fast-path)",
                    f"{_f(c['noop_full_path_s'] / c['noop_fast_path_s'])}×",
                    _cmd("cache"),
                )
            )
    if "memory" in r:
        m = r["memory"]
        recs = m["records"]
        out.append(
            (
                f"peak RSS of featurization, {recs[0]['atoms']} → {recs[-1]['atoms']} atoms "
                f"({recs[0]['factor']}x → {recs[-1]['factor']}x)",
                f"streamed {_f(recs[0]['streamed']['peak_rss_mb'])} → "
                f"{_f(recs[-1]['streamed']['peak_rss_mb'])} MB",
                (
                    "in memory " + f"{_f(recs[0]['in_memory']['peak_rss_mb'])} → "
                    f"{_f(recs[-1]['in_memory']['peak_rss_mb'])} MB"
                )
                if "in_memory" in recs[0]
                else "—",
                "—",
                _cmd("memory"),
            )
        )
    if "accuracy" in r:
        names = {"nn_e": "NN, energies", "nn_ef": "NN, energies + forces", "krr": "KRR", "gp": "GP"}
        sets = {
            "cu": "Cu (EMT)",
            "ethanol": "ethanol (GFN2-xTB)",
            "malonaldehyde": "malonaldehyde (GFN2-xTB)",
        }
        for row in r["accuracy"]["rows"]:
            model = names.get(row["model"], row["model"])
            out.append(
                (
                    f"accuracy, {sets.get(row['dataset'], row['dataset'])}, {model}: test E MAE "
                    "/ RMSE, F MAE; training time",
                    f"{_f(1e3 * row['energy_mae_per_atom'])} / "
                    f"{_f(1e3 * row['energy_rmse_per_atom'])} meV/atom, "
                    f"{_f(1e3 * row['force_mae'])} meV/Å; {_f(row['train_s'])} s",
                    "—",
                    "—",
                    f"`python -m benchmarks.accuracy --datasets {row['dataset']} "
                    f"--models {row['model']}`",
                )
            )
    return out


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "| figure | atompipe | peer or reference | ratio | reproduce |",
        "|---|---|---|---|---|",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in rows(report)]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument("results", type=Path)
    a = p.parse_args(argv)
    print(markdown(json.loads(a.results.read_text())))


if __name__ == "__main__":
    main()
