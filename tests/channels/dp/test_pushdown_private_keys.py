"""Counts grouped by a key without a public category list, on a PostgreSQL table, through a real node process.

The same rows are served as a Parquet file and as a PostgreSQL table, with ``region`` declared without its
categories (a private key set). Both paths must release the same keys with counts that agree within their
intervals, at the same noise scale and threshold (OpenDP's), and a key held by one person must never come
out of the table, however many rows that person has and however often the analyst asks.
"""

from __future__ import annotations

import json
import uuid

import polars as pl
import pytest

from tests.conftest import free_port
from tests.pushdown_data import analyst_on_node, COLUMNS, PRIVATE_REGION, load_postgres, make_frame, write_config
from tests.channels.dp.test_pushdown_postgres import assert_agree, by_key, pg_dsn, release

pytestmark = pytest.mark.postgres

BIG = {"north", "south", "east", "west"}
DELTA = 1e-6


def rare_rows() -> pl.DataFrame:
    """A key held by one person with 30 rows (bounded to 2), and a key held by one person with one row."""
    return pl.DataFrame({"pid": ["lonely"] * 30 + ["single"], "region": ["mars"] * 30 + ["venus"],
                         "sex": ["F"] * 31, "age": list(range(31)), "cost": [10.0] * 31})


@pytest.fixture(scope="module")
def served(tmp_path_factory, pg_server):
    """A node serving the rows (with the rare keys) as a Parquet file and as a table, region a private key."""
    from tests import pg

    root = tmp_path_factory.mktemp("private-keys")
    frame = pl.concat([make_frame(people=4_000, seed=5), rare_rows()])
    # The file path refuses a file in which a person has more than max_contributions rows; the table bounds
    # them in SQL. So the file holds the lonely person's rows as bounding leaves them: two.
    frame.filter((pl.col("pid") != "lonely") | (pl.col("age") < 2)).write_parquet(root / "claims.parquet")
    db_url = pg.fresh_database(pg_server, f"wb_{uuid.uuid4().hex[:10]}")
    load_postgres(db_url, "claims", frame)
    datasets = {"file": {"path": str(root / "claims.parquet"), "columns": PRIVATE_REGION},
                "table": {"source": {"url": pg_dsn(db_url), "table": "claims"}, "columns": PRIVATE_REGION}}
    config = write_config(root, datasets, port=free_port())
    with analyst_on_node(config, datasets, "private keys") as client:
        yield {"client": client, "frame": frame, "db_url": db_url}


QUERIES = [
    {"kind": "count", "by": ["region"]},
    {"kind": "count", "by": ["region", "sex"]},
    {"kind": "count", "by": ["region"], "where": {"op": "gt", "left": {"op": "col", "name": "age"},
                                                  "right": {"op": "lit", "value": 40}}},
    {"kind": "histogram", "column": "age", "bins": 4, "by": ["region"]},
    {"kind": "histogram", "column": "sex", "by": ["region"]},
]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: f"{q['kind']}-{'-'.join(q['by'])}-{q.get('column', '')}")
def test_a_table_releases_the_same_keys_and_counts_as_the_file(served, query):
    client = served["client"]
    on_file, on_table = (release(client, name, query, epsilon=2.0, delta=DELTA) for name in ("file", "table"))
    assert on_file["delta_charged"] == on_table["delta_charged"] == DELTA
    assert on_table["table"]["columns"] == on_file["table"]["columns"]
    assert_agree(on_file, on_table)  # the same keys, estimates within their intervals
    regions = {key[0] for key in by_key(on_table["table"])}
    assert regions == BIG  # the big keys come out; mars (2 rows after bounding) and venus (1) do not


def test_both_paths_use_openDPs_scale_and_threshold(served):
    client = served["client"]
    body = {"query": {"kind": "count", "by": ["region"]}, "epsilon": 0.7, "delta": DELTA}
    previews = [client.post(f"/datasets/{name}/dp/preview", json=body).json() for name in ("file", "table")]
    (a,), (b,) = (p["accuracy"] for p in previews)
    assert a["accuracy"] == pytest.approx(b["accuracy"], rel=1e-4)  # OpenDP binary-searches its scale
    threshold = "Groups with a noisy count below {} are suppressed"
    from workbench.channels.dp.pushdown.noise import thresholded_counts

    expected = thresholded_counts(2, 0.7, DELTA, 0.05).threshold
    assert all(threshold.format(expected) in p["note"] for p in previews), [p["note"] for p in previews]


def test_a_key_held_by_one_person_never_comes_out(served):
    """Twenty new questions at the node's highest epsilon (little noise, a low threshold): the person with 30 rows of
    'mars' counts 2 rows after bounding and stays below the threshold every time, as does 'venus'."""
    from workbench.channels.dp.pushdown.noise import thresholded_counts

    client = served["client"]
    seen = set()
    for i in range(20):
        epsilon = 9.0 + i * 0.01
        answer = release(client, "table", {"kind": "count", "by": ["region"]}, epsilon=epsilon, delta=DELTA)
        seen |= {key[0] for key in by_key(answer["table"])}
        threshold = thresholded_counts(2, epsilon, DELTA, 0.05).threshold
        assert 2 < threshold <= 5  # low: 'mars' would need only a little noise to pass it
        assert all(stat["estimate"] >= threshold for stat in by_key(answer["table"]).values())
    assert seen == BIG


def test_without_bounding_the_same_mechanism_would_release_the_rare_key(served):
    """The check above can fail: with the privacy unit a row (no bounding), 'mars' counts 30 and the same
    thresholded mechanism releases it; bounded by person it counts 2 and is dropped."""
    from workbench.channels.dp.pushdown import postgres
    from workbench.channels.dp.pushdown.compile import compile_query, render
    from workbench.channels.dp.pushdown.private_keys import exact_counts, mechanism
    from workbench.protocol import DatasetInfo, DPQuery

    def counts(unit: dict) -> dict[str, int]:
        info = DatasetInfo(name="claims", tier="private", max_rows=1_000_000, privacy_unit=unit,
                           columns=[{"name": n, **c} for n, c in PRIVATE_REGION.items()])
        compiled = compile_query(info, DPQuery(kind="count", by=["region"]), "claims", "key", 3)
        rows = postgres.fetch("claims", pg_dsn(served["db_url"]), render(compiled, "postgres"))
        return exact_counts(info, compiled, rows), mechanism(info, 10.0, DELTA, 0.05)

    bounded, noise = counts({"id_column": "pid", "max_contributions": 2})
    assert bounded[json.dumps(["mars"])] == 2 and bounded[json.dumps(["venus"])] == 1
    assert json.dumps(["mars"]) not in noise(bounded)
    unbounded, noise = counts({"max_contributions": 2})
    assert unbounded[json.dumps(["mars"])] == 30
    assert json.dumps(["mars"]) in noise(unbounded)


def test_private_keys_still_need_delta_and_only_counts(served):
    client = served["client"]
    budget = client.get("/datasets/table/budget").json()
    pure = client.post("/datasets/table/dp/release", json={"query": {"kind": "count", "by": ["region"]},
                                                           "epsilon": 1.0})
    assert pure.status_code == 422 and pure.json()["code"] == "needs_delta"
    mean = client.post("/datasets/table/dp/release", json={"query": {"kind": "mean", "column": "cost",
                                                                     "by": ["region"]},
                                                           "epsilon": 1.0, "delta": DELTA})
    assert mean.status_code == 422 and mean.json()["code"] == "invalid_query"
    assert client.get("/datasets/table/budget").json() == budget


def test_public_keys_are_unchanged_by_a_private_declaration_elsewhere(served):
    """A count by a column with public categories on the same table is still pure DP over its full key list."""
    answer = release(served["client"], "table", {"kind": "count", "by": ["sex"]}, epsilon=1.0, delta=DELTA)
    assert answer["delta_charged"] == 0 and set(by_key(answer["table"])) == {("F",), ("M",)}
    assert COLUMNS["sex"]["categories"] == ["F", "M"]
