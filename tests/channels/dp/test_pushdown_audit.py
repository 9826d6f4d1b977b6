"""A statistical audit of the pushed-down DP count and sum on real PostgreSQL tables.

The worker's entry point for table sources (``workbench.channels.dp.pushdown.run.run``:
SQL in PostgreSQL, OpenDP noise) releases many times on two tables that
differ by one privacy unit: a person with FIVE rows at the upper bound, in a
table whose declared ``max_contributions`` is 2. The sensitivity argument of
:mod:`workbench.channels.dp.pushdown.run` says bounding leaves that person 2 rows, so
the empirical epsilon must stay within the claim. The negative control runs
the same neighbours with contribution bounding switched off (a row-level
unit): the person then moves the answer by 5 rows while the noise is sized
for 1, and the audit must catch it. Estimator: tests/channels/dp/test_dp_audit.py.
"""

from __future__ import annotations

import os
import uuid

import numpy as np
import polars as pl
import pytest

from tests.channels.dp.test_dp_audit import ALPHA, empirical_epsilon
from workbench.channels.dp.pushdown.run import run
from workbench.protocol import DatasetInfo

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

N = int(os.environ.get("WORKBENCH_DP_AUDIT_RELEASES", "1000"))  # as tests/channels/dp/test_dp_audit.py (power)
COLUMNS = [{"name": "pid", "type": "id"}, {"name": "x", "type": "int", "bounds": [0, 100]}]


@pytest.fixture(scope="module")
def neighbours(pg_server):
    """D (40 people, 1-2 rows each) and D' = D plus one person with five rows at the upper bound."""
    from tests import pg

    url = pg.fresh_database(pg_server, f"wb_{uuid.uuid4().hex[:10]}").replace("postgresql+psycopg://",
                                                                              "postgresql://")
    rng = np.random.default_rng(9)
    pids = [f"p{i}" for i in range(40) for _ in range(1 + i % 2)]
    d = pl.DataFrame({"pid": pids, "x": rng.integers(0, 101, len(pids))})
    d_prime = pl.concat([d, pl.DataFrame({"pid": ["victim"] * 5, "x": [100] * 5})])
    for name, frame in (("d", d), ("d_prime", d_prime)):
        _load(url, name, frame)
    return url


def _load(url: str, table: str, frame: pl.DataFrame) -> None:
    import psycopg

    with psycopg.connect(url) as con:
        con.execute(f'DROP TABLE IF EXISTS "{table}"')
        con.execute(f'CREATE TABLE "{table}" (pid text, x bigint)')
        with con.cursor().copy(f'COPY "{table}" (pid, x) FROM STDIN') as copy:
            for row in frame.iter_rows():
                copy.write_row(row)


def releases(url: str, table: str, query: dict, epsilon: float, n: int, bounded: bool = True) -> np.ndarray:
    unit = {"id_column": "pid", "max_contributions": 2} if bounded else {"max_contributions": 1}
    info = DatasetInfo(name="audit", tier="private", max_rows=1000, privacy_unit=unit, columns=COLUMNS)
    task = {"info": info.model_dump(mode="json"), "query": query, "epsilon": epsilon, "delta": 0.0, "alpha": 0.05,
            "mode": "release", "source": {"dataset": "audit", "kind": "postgres", "url": url, "table": table,
                                          "parquet": None, "decimals": 3, "secret": "audit-key"}}
    return np.array([run(task)["table"]["data"][0][0] for _ in range(n)], dtype=float)


FILTERED_SUM = {"kind": "sum", "column": "x", "where": {"op": "gt", "left": {"op": "col", "name": "x"},
                                                      "right": {"op": "lit", "value": 50}}}


@pytest.mark.parametrize("query", [{"kind": "count"}, {"kind": "sum", "column": "x"}, FILTERED_SUM],
                         ids=["count", "sum", "filtered-sum"])
def test_pushed_down_release_spends_no_more_than_it_claims(neighbours, query):
    a, b = releases(neighbours, "d", query, 1.0, N), releases(neighbours, "d_prime", query, 1.0, N)
    point, lower = empirical_epsilon(a, b)
    print(f"{query['kind']}{' where' if query.get('where') else ''}, claimed epsilon 1.0: empirical {point:.3f}, {1 - ALPHA:.1%} lower bound {lower:.3f}")
    assert lower <= 1.0, f"the pushed-down {query['kind']} spends epsilon >= {lower:.3f} at {1 - ALPHA:.1%}"
    if query["kind"] == "count":
        assert point > 0.5, f"the audit lacks power (estimate {point:.3f} for a tight count of epsilon 1)"


def test_audit_catches_a_release_without_contribution_bounding(neighbours):
    """Negative control: with bounding off, the five-row person costs ~5x the claim, and the audit says so."""
    n = max(N // 2, 400)
    a = releases(neighbours, "d", {"kind": "count"}, 1.0, n, bounded=False)
    b = releases(neighbours, "d_prime", {"kind": "count"}, 1.0, n, bounded=False)
    point, lower = empirical_epsilon(a, b)
    assert lower > 1.0, f"the audit missed unbounded contributions (lower bound {lower:.3f}, estimate {point:.3f})"
