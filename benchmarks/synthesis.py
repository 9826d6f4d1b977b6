"""DP synthesizers vs an SDV reference on 30k rows x 8 columns (run by the owner: it reads the TRUE marginals).

Each DP method runs as the node runs it (task ``synth.fit``, :mod:`workbench.node.tasks`, in a fresh worker process) at the same
epsilon; SDV GaussianCopula is fitted on the real rows as a NON-DP reference. Fidelity is measured against the
real data on one fixed public discretisation, whatever bins a method fitted on: 16 equal-width bins over each
numeric column's public bounds, one cell per category (+ null). Figures: mean total variation distance over
all 1-way and all 2-way marginals; the SDMetrics quality score (on a 5,000-row subsample) with its two parts,
column shapes and column pair trends (SDMetrics 0.32 scores only pairs with a real association above 0.3 or a
correlation above 0.5: one pair in this data); and ``copies``, the share of synthetic rows equal to some real
row in every column. A second real sample of the same population (another seed) is the reference row "real,
2nd sample": what two honest samples of this size already share. Times are wall clock and CPU (the worker's
user+system time) side by side, in one run; the load average is printed.

    .venv/bin/python benchmarks/synthesis.py [--rows 30000] [--epsilon 1.0]
        [--methods independent,mst,aim,fixed] [--no-sdv]
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

COLUMNS = ["age", "sex", "bmi", "smoker", "diagnosis", "visits", "cost", "region"]
EVAL_BINS = 16  # the discretisation fidelity is measured on (fixed: fewer bins would flatter the TVD)


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def tvd_scores(plan, real: pd.DataFrame, syn: pd.DataFrame) -> tuple[float, float]:
    def cells(frame):
        return {c: plan.domains[c].encode(frame[c].astype(object).where(frame[c].notna(), None).tolist())
                for c in COLUMNS}

    r, s = cells(real), cells(syn)

    def tvd(cols):
        shape = tuple(plan.domains[c].cells for c in cols)
        def dist(x):
            flat = np.ravel_multi_index(tuple(x[c] for c in cols), shape)
            counts = np.bincount(flat, minlength=int(np.prod(shape))).astype(float)
            return counts / counts.sum()
        return 0.5 * np.abs(dist(r) - dist(s)).sum()

    one = np.mean([tvd((c,)) for c in COLUMNS])
    two = np.mean([tvd(p) for p in itertools.combinations(COLUMNS, 2)])
    return float(one), float(two)


def exact_copies(real: pd.DataFrame, syn: pd.DataFrame) -> float:
    """Share of the rows of ``syn`` that equal some row of ``real`` in every column."""
    seen = set(real[COLUMNS].astype(object).itertuples(index=False, name=None))
    rows = syn[COLUMNS].astype(object).itertuples(index=False, name=None)
    return float(np.mean([row in seen for row in rows]))


def quality(real: pd.DataFrame, syn: pd.DataFrame, meta: dict) -> dict[str, float]:
    """SDMetrics' quality score and its two parts (column shapes: KS / TV complement per column; column pair
    trends: correlation / contingency similarity per pair) on a 5,000-row subsample."""
    from sdmetrics.reports.single_table import QualityReport

    n = min(5000, len(real), len(syn))
    report = QualityReport()
    report.generate(real.sample(n, random_state=0), syn.sample(n, random_state=0), meta, verbose=False)
    parts = dict(zip(report.get_properties()["Property"], report.get_properties()["Score"]))
    return {"quality": float(report.get_score()), "shapes": float(parts["Column Shapes"]),
            "pair_trends": float(parts["Column Pair Trends"])}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--methods", default="independent,mst,aim,fixed")
    parser.add_argument("--no-sdv", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="wb-synth-bench-"))
    os.environ.setdefault("XDG_DATA_HOME", str(tmp / "xdg"))  # SDV's logs stay out of the home folder
    from workbench.demo.data import PATIENT_COLUMNS, patients
    from workbench.node.settings import DatasetConfig
    from workbench.channels.synth.domain import plan as make_plan
    from workbench.channels.synth.prepare import run_isolated
    from workbench.channels.synth.sdv_support import sdv_metadata_dict
    from workbench.channels.synth.wire import SynthSpec

    frame = patients(args.rows, seed=7).select(COLUMNS)
    path = tmp / "patients.parquet"
    frame.write_parquet(path)
    config = DatasetConfig(path=path, columns={c: PATIENT_COLUMNS[c] for c in COLUMNS}, max_rows=args.rows * 2)
    info = config.public_info("bench", "v1")
    real = frame.to_pandas()
    meta = sdv_metadata_dict(info, COLUMNS)["tables"]["data"]
    eval_plan = make_plan(info, SynthSpec(method="independent", rows=1, bins=EVAL_BINS))
    load_before = os.getloadavg()[0]
    results = []
    other = patients(args.rows, seed=8).select(COLUMNS).to_pandas()
    one, two = tvd_scores(eval_plan, real, other)
    results.append({"method": "real, 2nd sample (reference)", "dp": "-", "epsilon": float("nan"), "tvd_1way": one,
                    "tvd_2way": two, **quality(real, other, meta), "copies": exact_copies(real, other)})
    runs = [(m, m, f"jax-cache-{m}") for m in args.methods.split(",") if m]
    for label, method, cache in runs:
        spec = SynthSpec(method=method, rows=args.rows, rounds=8 if method == "aim" else None)
        payload = {"info": info.model_dump(mode="json"), "path": str(path), "format": "parquet",
                   "spec": spec.model_dump(mode="json"), "epsilon": args.epsilon, "progress_path": None,
                   "jax_cache": str(tmp / cache)}  # one cache per method: every first fit compiles cold
        cpu0, t0 = child_cpu(), time.perf_counter()
        try:
            out = run_isolated("synth.fit", payload, timeout_s=1800)
        except Exception as exc:  # noqa: BLE001 - a benchmark reports failures as rows
            results.append({"method": label, "dp": "yes", "epsilon": args.epsilon, "error": str(exc)[:80]})
            continue
        wall, cpu = time.perf_counter() - t0, child_cpu() - cpu0
        syn = pd.DataFrame(out["table"]["data"], columns=out["table"]["columns"])
        one, two = tvd_scores(eval_plan, real, syn)
        results.append({"method": label, "dp": "yes", "epsilon": args.epsilon, "fit_wall_s": wall, "fit_cpu_s": cpu,
                        "tvd_1way": one, "tvd_2way": two, **quality(real, syn, meta),
                        "copies": exact_copies(real, syn),
                        "report_tvd_2way_vs_noisy": out["report"].get("tvd_2way_mean")})
        print(f"  {results[-1]}", file=sys.stderr, flush=True)
    if not args.no_sdv:
        from workbench.channels.synth.sdv_support import fit_on_frame

        t0 = time.perf_counter()
        c0 = time.process_time()
        model = fit_on_frame(real, info, "GaussianCopula", dp=False)
        syn = model.sample(args.rows)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        one, two = tvd_scores(eval_plan, real, syn)
        results.append({"method": "SDV GaussianCopula on real", "dp": "NO", "epsilon": float("inf"),
                        "fit_wall_s": wall, "fit_cpu_s": cpu, "tvd_1way": one, "tvd_2way": two,
                        **quality(real, syn, meta), "copies": exact_copies(real, syn)})
        print(f"  {results[-1]}", file=sys.stderr, flush=True)
    table = pd.DataFrame(results)
    pd.set_option("display.width", 200)
    print(f"\nsynthesis benchmark: {args.rows} rows x {len(COLUMNS)} columns, epsilon={args.epsilon:g} (pure DP), "
          f"fit on the default bins ({SynthSpec(rows=1).bins} per numeric column), fidelity on {EVAL_BINS} bins, "
          f"{os.cpu_count()} CPUs, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after")
    print(markdown(table))


def markdown(table: pd.DataFrame) -> str:
    def cell(v):
        if isinstance(v, float):
            return "" if v != v else ("inf" if v == float("inf") else f"{v:.4g}")
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
