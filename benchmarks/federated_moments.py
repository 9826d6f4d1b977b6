"""Federated regression and agg, measured side by side on the three demo hospitals (loopback, one run).

For ``cost ~ age + bmi`` at one epsilon per node: the pooled moments from each node's own DP release
(``protocol=None``) and from one secure-aggregation session (``"he"``, ``"smpc"``, distributed noise):
wall time and the part of each coefficient's standard error due to the DP noise (``se_noise``). Then a
federated ``agg`` with and without a std and a quantile (one more release per node for the histogram).

    python benchmarks/federated_moments.py --epsilon 0.5 --repeat 1

Each row spends a fresh epsilon on every demo node (the demo grant holds 10 per node). A warm-up count
comes first: a node's first DP release builds its columnar copy (tens of seconds), whatever the question.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

import workbench as wb


def regression_rows(ds, epsilon: float) -> list[dict]:
    rows = []
    for protocol in (None, "he", "smpc"):
        start = time.perf_counter()
        fit = ds.linear_regression(y="cost", x=["age", "bmi"]).release(epsilon=epsilon, protocol=protocol)
        seconds = time.perf_counter() - start
        row = {"question": f"regression, {protocol or 'per-node DP'}", "seconds": round(seconds, 2)}
        row.update({f"se_noise({t})": round(float(s), 3) for t, s in zip(fit["term"], fit["se_noise"])})
        rows.append(row)
    return rows


def agg_rows(ds, epsilon: float) -> list[dict]:
    questions = {"agg n, mean": dict(n=wb.count(), cost=wb.mean("cost")),
                 "agg n, mean, std, p90": dict(n=wb.count(), cost=wb.mean("cost"), sd=wb.std("cost"),
                                               p90=wb.quantile("age", 0.9))}
    rows = []
    for name, statistics in questions.items():
        start = time.perf_counter()
        table = ds.group_by("sex").agg(**statistics).release(epsilon=epsilon)
        half = ((table["upper"] - table["lower"]) / 2).groupby(table["statistic"]).mean()
        rows.append({"question": name, "seconds": round(time.perf_counter() - start, 2),
                     **{f"half({k})": round(float(v), 2) for k, v in half.items()}})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=0.5)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    ds = wb.demo_federation().dataset("patients")
    ds.count().release(epsilon=0.01)  # warm-up: each node's first DP release builds its columnar copy
    rows = []
    for i in range(args.repeat):
        epsilon = args.epsilon * (1 + i / 1000)  # a fresh question each repeat (no replay)
        rows += regression_rows(ds, epsilon) + agg_rows(ds, epsilon)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
