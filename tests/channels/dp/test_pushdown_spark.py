"""The same contract on every backend: one dataset as a Parquet file, a hive-partitioned Parquet folder, a
PostgreSQL table and a Parquet lakehouse read by Spark (``local[2]``), behind one real node process.

The same DP queries must give estimates that agree within their intervals on
all four; replays and charges behave the same. Spark starts a JVM in the
node's worker (~5 s), so the node (and its Spark sessions) is shared by the
whole module.
"""

from __future__ import annotations

import shutil
import uuid

import polars as pl
import pytest

from tests.conftest import free_port
from tests.pushdown_data import analyst_on_node, PRIVATE_REGION, load_postgres, make_frame, write_config
from tests.channels.dp.test_pushdown_postgres import (LANGUAGE, QUERIES, assert_agree, by_key, pg_dsn, query_id,
                                                      release)

pytestmark = [pytest.mark.slow, pytest.mark.postgres,
              pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java (scripts/setup --test)")]

BACKENDS = ["claims_folder", "claims_pg", "claims_spark"]
PRIVATE_KEYS = [{"kind": "count", "by": ["region", "sex"]}, {"kind": "histogram", "column": "age", "bins": 4,
                                                             "by": ["region"]}]


@pytest.fixture(scope="module")
def served(tmp_path_factory, pg_server):
    pytest.importorskip("pyspark")
    from tests import pg

    root = tmp_path_factory.mktemp("backends")
    frame = make_frame(people=6_000, seed=11)
    frame.write_parquet(root / "claims.parquet")
    frame.write_parquet(root / "lake", partition_by="region")  # region=north/00000000.parquet, ...
    db_url = pg.fresh_database(pg_server, f"wb_{uuid.uuid4().hex[:10]}")
    load_postgres(db_url, "claims", frame)
    datasets = {"claims_file": {"path": str(root / "claims.parquet")},
                "claims_folder": {"path": str(root / "lake")},
                "claims_pg": {"source": {"url": pg_dsn(db_url), "table": "claims"}},
                "claims_spark": {"source": {"url": "local[2]", "parquet": str(root / "lake")}},
                "claims_spark_opt_out": {"source": {"url": "local[2]", "parquet": str(root / "lake")},
                                         "consent": {"opt_out_file": str(root / "opt-out.txt")}},
                "claims_file_private": {"path": str(root / "claims.parquet"), "columns": PRIVATE_REGION},
                "claims_spark_private": {"source": {"url": "local[2]", "parquet": str(root / "lake")},
                                         "columns": PRIVATE_REGION}}
    opted_out = frame["pid"].unique().sort().head(2_000).to_list()
    (root / "opt-out.txt").write_text("\n".join(opted_out) + "\n")
    config = write_config(root, datasets, port=free_port(), workers=1)
    with analyst_on_node(config, datasets, "testing backends", timeout_s=600) as client:
        yield {"client": client, "frame": frame, "opted_out": opted_out}


@pytest.mark.parametrize("query", QUERIES + LANGUAGE, ids=query_id)
def test_every_backend_agrees_with_the_parquet_file_within_the_intervals(served, query):
    client = served["client"]
    reference = release(client, "claims_file", query)
    for backend in BACKENDS:
        assert_agree(reference, release(client, backend, query))


def test_medians_agree_across_backends(served):
    client, frame = served["client"], served["frame"]
    truth = frame["cost"].drop_nulls().median()
    for backend in ["claims_file", *BACKENDS]:
        answer = release(client, backend, {"kind": "quantile", "column": "cost", "quantile": 0.5}, epsilon=5.0)
        estimate = by_key(answer["table"])[()]["estimate"]
        assert abs(estimate - truth) <= 20, (backend, estimate, truth)  # 1 000 candidates over [0, 1000]


def test_spark_replays_are_free_and_charges_match_the_file_path(served):
    client = served["client"]
    query = {"kind": "mean", "column": "cost", "by": ["sex"]}
    first = release(client, "claims_spark", query, epsilon=0.9)
    again = release(client, "claims_spark", query, epsilon=0.9)
    on_file = release(client, "claims_file", query, epsilon=0.9)
    assert first["epsilon_charged"] == on_file["epsilon_charged"] == 0.9
    assert again["replayed"] and again["epsilon_charged"] == 0 and again["table"] == first["table"]


def test_node_check_reads_a_spark_sources_columns_at_start_up(tmp_path):
    """A missing column and a wrong type are the owner's problems at start-up, not an analyst's first release."""
    from workbench.node.catalog import Catalog
    from workbench.node.settings import NodeConfig

    frame = make_frame(people=50, seed=2).drop("sex").with_columns(age=pl.col("age").cast(pl.String))
    frame.write_parquet(tmp_path / "lake", partition_by="region")
    config = write_config(tmp_path, {"bad": {"source": {"url": "local[1]", "parquet": str(tmp_path / "lake")}}},
                          port=free_port())
    catalog = Catalog(NodeConfig.load(config))
    problems = catalog.problems()
    assert "column 'sex' is in the config but not in the table" in problems["bad"]
    assert "column 'age' is string, not int" in problems["bad"]
    assert not catalog.entries()


def test_spark_reads_only_the_rows_of_people_who_did_not_opt_out(served):
    from tests.intervals import near

    frame = served["frame"]
    kept = frame.filter(~pl.col("pid").is_in(served["opted_out"])).height
    stat = by_key(release(served["client"], "claims_spark_opt_out", {"kind": "count"}, epsilon=2.0)["table"])[()]
    assert near(stat, kept), (stat, kept)
    assert not near(stat, frame.height), "opted-out people were counted"


@pytest.mark.parametrize("query", PRIVATE_KEYS, ids=lambda q: f"{q['kind']}-{'-'.join(q['by'])}")
def test_counts_by_a_private_key_on_spark_agree_with_the_file(served, query):
    """region declared without its categories: Spark's bounded counts, OpenDP's threshold, the file's keys."""
    client = served["client"]
    on_file = release(client, "claims_file_private", query, epsilon=2.0, delta=1e-6)
    on_spark = release(client, "claims_spark_private", query, epsilon=2.0, delta=1e-6)
    assert on_spark["table"]["columns"] == on_file["table"]["columns"]
    assert_agree(on_file, on_spark)
    assert {key[0] for key in by_key(on_spark["table"])} == {"north", "south", "east", "west"}
