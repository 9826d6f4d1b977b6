"""The query language across a federation: two real node processes, the same filter, derived columns and
several statistics on each, combined in the notebook (post-processing of each node's DP release)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import polars as pl
import pytest

import workbench as wb
from tests.conftest import launch
from workbench import col
from workbench.errors import NotSupported

HOSPITALS = ("hospital_a", "hospital_b")


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    root = tmp_path_factory.mktemp("query-federation")
    with ThreadPoolExecutor(2) as pool:
        nodes = list(pool.map(lambda h: launch(root / h, h), HOSPITALS))
    handles = [wb.connect(n.url, token=n.analyst_token) for n in nodes]
    pooled = pl.concat([pl.read_parquet(n.config_path.parent / "data" / f"patients_{h}.parquet")
                        for n, h in zip(nodes, HOSPITALS)])
    yield wb.federation(handles), handles, pooled
    for n in nodes:
        n.stop()


def near(row, true: float) -> bool:
    half = (row["upper"] - row["lower"]) / 2
    return row["lower"] - half <= true <= row["upper"] + half


def test_filtered_agg_over_nodes(federation):
    fed, handles, pooled = federation
    old = fed.dataset("patients").filter(col("age") >= 65)
    before = [h.dataset("patients").budget()["epsilon_spent"] for h in handles]
    table = old.group_by("sex").agg(n=wb.count(), cost=wb.mean("cost")).release(epsilon=2.0)
    after = [h.dataset("patients").budget()["epsilon_spent"] for h in handles]
    assert [a - b for a, b in zip(after, before)] == pytest.approx([2.0, 2.0]), "each node charged once"
    truth = pooled.filter(pl.col("age") >= 65)
    for sex in ("F", "M"):
        rows = table[table["sex"] == sex].set_index("statistic")
        part = truth.filter(pl.col("sex") == sex)
        assert near(rows.loc["n"], part.height)
        assert near(rows.loc["cost"], part["cost"].mean())
    again = old.group_by("sex").agg(cost=wb.mean("cost"), n=wb.count()).release(epsilon=2.0)
    assert again.attrs["replayed"]


def test_derived_column_mean_over_nodes(federation):
    fed, _handles, pooled = federation
    d = fed.dataset("patients").with_columns(cpv=(col("cost") / (col("visits") + 1)).clip(0, 5_000))
    out = d.mean("cpv").release(epsilon=1.0)
    true = (pooled["cost"] / (pooled["visits"] + 1)).clip(0, 5_000).mean()
    assert near(out.iloc[0], true)


def test_whole_dataset_channels_refuse_a_filtered_federation(federation):
    fed, _handles, _pooled = federation
    with pytest.raises(NotSupported):
        fed.dataset("patients").filter(col("age") >= 65).secure_sum("cost", epsilon=0.5)
    with pytest.raises(NotSupported):
        fed.dataset("patients").agg(q=wb.quantile("age", 0.5))
