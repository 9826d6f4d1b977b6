"""The DP worker (workbench/channels/dp/worker.py:run): what runs in the worker process, called directly.

Plain data in (the task the node builds), plain data out: the noisy table with its intervals, or for a
preview the accuracy alone. The node's HTTP path around it is tested in test_query_node.py.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from tests.intervals import near
from workbench.channels.dp import worker
from workbench.errors import InvalidQuery
from workbench.protocol import DatasetInfo

INFO = DatasetInfo(name="w", tier="private", max_rows=20_000, columns=[
    {"name": "age", "type": "int", "bounds": [0, 100]},
    {"name": "cost", "type": "float", "bounds": [0.0, 1000.0]},
    {"name": "sex", "type": "category", "categories": ["F", "M"]},
])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.default_rng(3)
    n = 10_000
    frame = pl.DataFrame({"age": rng.integers(0, 101, n), "cost": rng.uniform(0, 1000, n),
                          "sex": rng.choice(["F", "M"], n)})
    path = tmp_path_factory.mktemp("worker") / "w.parquet"
    frame.write_parquet(path)
    return path, frame


def task(path, query: dict, epsilon: float = 1.0, mode: str = "release", delta: float = 0.0) -> dict:
    return {"info": INFO.model_dump(mode="json"), "query": query, "epsilon": epsilon, "delta": delta,
            "alpha": 0.05, "path": str(path), "format": "parquet", "mode": mode,
            "cache_key": f"worker-test|{query}|{epsilon}|{delta}"}


def rows(result: dict) -> list[dict]:
    table = result["table"]
    return [dict(zip(table["columns"], row)) for row in table["data"]]


def test_count_and_mean_land_near_the_truth_with_intervals(data):
    path, frame = data
    count = rows(worker.run(task(path, {"kind": "count"}, epsilon=2.0)))[0]
    assert count["lower"] <= count["estimate"] <= count["upper"] and near(count, len(frame))
    mean = rows(worker.run(task(path, {"kind": "mean", "column": "cost", "by": ["sex"]}, epsilon=2.0)))
    truth = dict(frame.group_by("sex").agg(pl.col("cost").mean()).iter_rows())
    assert {r["sex"] for r in mean} == {"F", "M"}
    for r in mean:
        assert r["lower"] <= r["estimate"] <= r["upper"]
        assert near(r, truth[r["sex"]]), (r, truth)


def test_a_filter_and_a_derived_column_in_one_agg(data):
    path, frame = data
    query = {"kind": "agg", "where": {"op": "ge", "left": {"op": "col", "name": "age"}, "right": {"op": "lit", "value": 65}},
             "aggs": [{"name": "n", "stat": "count"}, {"name": "avg", "stat": "mean", "column": "cost"}]}
    out = {r["statistic"]: r for r in rows(worker.run(task(path, query, epsilon=2.0)))}
    old = frame.filter(pl.col("age") >= 65)
    assert near(out["n"], len(old)), out
    assert out["avg"]["lower"] <= out["avg"]["estimate"] <= out["avg"]["upper"]
    assert near(out["avg"], old["cost"].mean()), out


def test_histogram_bins_come_in_numeric_order(data):
    path, _ = data
    table = rows(worker.run(task(path, {"kind": "histogram", "column": "cost", "bins": 12})))
    lowers = [r["bin_lower"] for r in table]
    assert lowers == sorted(lowers) and len(lowers) == 12


def test_a_preview_returns_accuracy_and_no_table(data):
    path, _ = data
    preview = worker.run(task(path, {"kind": "mean", "column": "cost"}, epsilon=0.5, mode="preview"))
    assert "table" not in preview and preview["accuracy"]
    wider = worker.run(task(path, {"kind": "mean", "column": "cost"}, epsilon=0.1, mode="preview"))
    assert [a["statistic"] for a in preview["accuracy"]] == ["sum", "count"]  # a mean is a noisy sum / count
    assert all(w["accuracy"] > p["accuracy"] for w, p in zip(wider["accuracy"], preview["accuracy"]))


def test_what_the_metadata_cannot_support_is_refused(data):
    path, _ = data
    for query, code in [({"kind": "mean", "column": "sex"}, "wrong_type"),
                        ({"kind": "mean", "column": "agee"}, "unknown_column"),
                        ({"kind": "count", "by": ["age"]}, "needs_delta")]:
        with pytest.raises(InvalidQuery) as info:
            worker.run(task(path, query))
        assert info.value.code == code, query
