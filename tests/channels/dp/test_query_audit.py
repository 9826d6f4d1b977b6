"""A statistical audit of the query language: a filtered count, a mean of a derived column, and the legacy
quantile kind read off a noisy histogram (its interval path).

Same method as tests/channels/dp/test_dp_audit.py (the node's own engine, thousands of
releases on two files that differ in one row, Clopper-Pearson bounds on a
threshold event): the empirical epsilon must not exceed the claim. The extra
row is the worst case for each question: it passes the filter, and its
derived value sits at the clip bound.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.channels.dp.test_dp_audit import ALPHA, N, empirical_epsilon
from tests.intervals import fewest_hits
from workbench import col
from workbench.channels.dp import worker as engine
from workbench.protocol import DatasetInfo

INFO = DatasetInfo(name="audit", tier="private", max_rows=1000,
                   columns=[{"name": "x", "type": "int", "bounds": [0, 100]},
                            {"name": "w", "type": "int", "bounds": [1, 10]}])
FILTERED_COUNT = {"kind": "count", "where": ((col("x") >= 50) & (col("w") > 2)).tree}
DERIVED_MEAN = {"kind": "mean", "column": "ratio",
                "derive": [{"name": "ratio", "expr": (col("x") / col("w")).clip(0, 20).tree}],
                "where": (col("x") > 10).tree}
# The legacy kind an old client sends: under pure DP it is read off a noisy histogram (one bin per value of x).
LEGACY_QUANTILE = {"kind": "quantile", "column": "x", "quantile": 0.5, "where": (col("w") > 2).tree}


def releases(path, query: dict, epsilon: float, n: int) -> np.ndarray:
    task = {"info": INFO.model_dump(mode="json"), "query": query, "epsilon": epsilon, "delta": 0.0, "alpha": 0.05,
            "path": str(path), "format": "parquet", "mode": "release",
            "cache_key": f"query-audit|{path}|{query}|{epsilon}"}
    values = [engine.run(task)["table"]["data"][0][0] for _ in range(n)]
    return np.array([-1.0 if v is None else v for v in values], dtype=float)  # "no estimate" is an output too


@pytest.fixture(scope="module")
def neighbours(tmp_path_factory):
    """D (40 rows) and D' = D plus one row that passes both filters with the largest derived value."""
    rng = np.random.default_rng(11)
    x, w = rng.integers(0, 101, 40).tolist(), rng.integers(1, 11, 40).tolist()
    folder = tmp_path_factory.mktemp("query-audit")
    d, d_prime = folder / "d.parquet", folder / "d_prime.parquet"
    pl.DataFrame({"x": x, "w": w}).write_parquet(d)
    pl.DataFrame({"x": x + [100], "w": w + [5]}).write_parquet(d_prime)  # ratio 20: the clip bound
    return d, d_prime


@pytest.mark.slow
@pytest.mark.parametrize("name,query", [("filtered count", FILTERED_COUNT), ("derived mean", DERIVED_MEAN),
                                        ("legacy quantile", LEGACY_QUANTILE)])
def test_empirical_epsilon_within_claim(neighbours, name, query):
    d, d_prime = neighbours
    a, b = releases(d, query, 1.0, N), releases(d_prime, query, 1.0, N)
    point, lower = empirical_epsilon(a, b)
    print(f"{name}, claimed epsilon 1.0: empirical {point:.3f}, {1 - ALPHA:.1%} lower bound {lower:.3f}")
    assert lower <= 1.0, f"the {name} spends more than it claims: epsilon >= {lower:.3f}"
    if name == "filtered count":
        assert point > 0.5, f"the audit lacks power (estimate {point:.3f} for a Laplace count of epsilon 1)"


@pytest.mark.slow
def test_audit_catches_an_overspending_filtered_count(neighbours):
    """Negative control: the filtered count released at epsilon 3 while 'claiming' 1 is flagged."""
    d, d_prime = neighbours
    n = max(N // 2, 400)
    point, lower = empirical_epsilon(releases(d, FILTERED_COUNT, 3.0, n), releases(d_prime, FILTERED_COUNT, 3.0, n))
    assert lower > 1.0, f"the audit missed a 3x overspend (lower bound {lower:.3f}, estimate {point:.3f})"


@pytest.mark.slow
def test_legacy_quantile_interval_covers(neighbours):
    """The interval the legacy kind now states covers the lower median (the least v with #(x <= v) >= n/2)."""
    d, _ = neighbours
    frame = pl.read_parquet(d).filter(pl.col("w") > 2)
    ordered = sorted(frame["x"].to_list())
    true = ordered[int(np.ceil(0.5 * len(ordered))) - 1]
    task = {"info": INFO.model_dump(mode="json"), "query": LEGACY_QUANTILE, "epsilon": 1.0, "delta": 0.0,
            "alpha": 0.05, "path": str(d), "format": "parquet", "mode": "release", "cache_key": f"cover|{d}"}
    rows = [engine.run(task)["table"]["data"][0] for _ in range(200)]
    covered = sum(lo <= true <= hi for _est, lo, hi in rows)
    assert covered >= fewest_hits(len(rows)), f"the legacy quantile's 95% interval covered {covered} of {len(rows)}"
