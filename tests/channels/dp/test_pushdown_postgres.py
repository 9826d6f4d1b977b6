"""DP queries on a table that lives in PostgreSQL, through a real node process.

The same data is served as a Parquet file and as a PostgreSQL table; the
same queries must agree within their intervals; the SQL the node pushes
down must bound contributions by a keyed hash (not by the analyst) and sum
in fixed point; replays and charges work as for files; credentials come
from the environment and never sit in the config.
"""

from __future__ import annotations

import uuid

import httpx
import polars as pl
import pytest

from tests.conftest import free_port
from tests.intervals import near
from tests.pushdown_data import analyst_on_node, load_postgres, make_frame, write_config

pytestmark = pytest.mark.postgres

QUERIES = [
    {"kind": "count"},
    {"kind": "count", "by": ["region", "sex"]},
    {"kind": "sum", "column": "cost", "by": ["region"]},
    {"kind": "mean", "column": "cost", "by": ["region"]},
    {"kind": "mean", "column": "age"},
    {"kind": "histogram", "column": "age", "bins": 5},
    {"kind": "histogram", "column": "region"},
]


def col(name: str) -> dict:
    return {"op": "col", "name": name}


def lit(value) -> dict:
    return {"op": "lit", "value": value}


#: Filters, derived columns and several statistics (the query language): the same contract as QUERIES.
LANGUAGE = [
    {"kind": "count", "by": ["region"], "where": {"op": "gt", "left": col("age"), "right": lit(40)}},
    {"kind": "mean", "column": "cost2", "where": {"op": "eq", "left": col("sex"), "right": lit("F")},
     "derive": [{"name": "cost2", "expr": {"op": "clip", "arg": {"op": "mul", "left": col("cost"), "right": lit(2)},
                                           "low": 0, "high": 1500}}]},
    {"kind": "sum", "column": "old", "by": ["sex"],
     "derive": [{"name": "old", "expr": {"op": "cast", "to": "int",
                                         "arg": {"op": "ge", "left": col("age"), "right": lit(65)}}}]},
    {"kind": "count", "by": ["band"],
     "where": {"op": "or", "args": [{"op": "is_null", "arg": col("cost")},
                                    {"op": "lt", "left": {"op": "div", "left": col("cost"), "right": col("age")},
                                     "right": lit(10.0)}]},
     "derive": [{"name": "band", "expr": {"op": "cut", "arg": col("age"), "edges": [17, 64]}}]},
    {"kind": "agg", "by": ["sex"], "where": {"op": "is_in", "arg": col("region"), "values": ["north", "east"]},
     "aggs": [{"name": "n", "stat": "count"}, {"name": "avg", "stat": "mean", "column": "cost"},
              {"name": "sd", "stat": "std", "column": "age"}, {"name": "total", "stat": "sum", "column": "age"},
              {"name": "med", "stat": "quantile", "column": "age", "p": 0.5}]},
    {"kind": "agg", "aggs": [{"name": "v", "stat": "var", "column": "cost"}, {"name": "n", "stat": "count"}],
     "weights": [3, 1], "where": {"op": "between", "arg": col("age"), "low": 18, "high": 90}},
    # Values that would make PostgreSQL raise (division by zero, overflow, underflow) must answer as Polars does,
    # never as an error: an error that depends on the rows would leak them outside any mechanism.
    {"kind": "count", "by": ["sex"], "where": {"op": "and", "args": [
        {"op": "gt", "left": {"op": "mul", "left": {"op": "mul", "left": col("age"), "right": lit(1e200)},
                              "right": lit(1e200)}, "right": lit(1.0)},
        {"op": "gt", "left": {"op": "div", "left": col("cost"), "right": col("age")}, "right": lit(5.0)},
        {"op": "ge", "left": {"op": "mul", "left": {"op": "mul", "left": col("age"), "right": lit(1e-200)},
                              "right": lit(1e-200)}, "right": lit(0.0)}]}},
]


def query_id(q: dict) -> str:
    return "-".join([q["kind"], *q.get("by", []), q.get("column") or "", "where" if q.get("where") else "",
                     "derive" if q.get("derive") else ""]).strip("-")


def pg_dsn(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


@pytest.fixture(scope="module")
def served(tmp_path_factory, pg_server):
    """A real node serving one dataset as a Parquet file and as a PostgreSQL table; an analyst with budget."""
    from tests import pg

    root = tmp_path_factory.mktemp("pushdown")
    frame = make_frame()
    frame.write_parquet(root / "claims.parquet")
    db_url = pg.fresh_database(pg_server, f"wb_{uuid.uuid4().hex[:10]}")
    load_postgres(db_url, "claims", frame)
    config = write_config(root, {"claims_file": {"path": str(root / "claims.parquet")},
                                 "claims_pg": {"source": {"url": pg_dsn(db_url), "table": "claims"}}},
                          port=free_port())
    with analyst_on_node(config, ("claims_file", "claims_pg"), "testing pushdown") as client:
        yield {"client": client, "frame": frame, "db_url": db_url, "root": root, "config": config}


def release(client: httpx.Client, dataset: str, query: dict, epsilon: float = 2.0, delta: float = 0.0) -> dict:
    response = client.post(f"/datasets/{dataset}/dp/release", json={"query": query, "epsilon": epsilon,
                                                                    "delta": delta})
    assert response.status_code == 200, response.text
    return response.json()


def by_key(table: dict) -> dict[tuple, list]:
    columns, keys = table["columns"], table["columns"].index("estimate")
    return {tuple(row[:keys]): dict(zip(columns[keys:], row[keys:])) for row in table["data"]}


def assert_agree(a: dict, b: dict) -> None:
    """Both answers cover the same public keys and every pair of estimates is within twice the sum of their 95%
    half-widths (for two Laplace answers of the same truth, a miss has probability ~4e-5 per pair; at one
    sum of half-widths it would be ~1e-2, too flaky over the ~100 pairs the suite compares)."""
    ta, tb = by_key(a["table"]), by_key(b["table"])
    assert ta.keys() == tb.keys()
    for key in ta:
        x, y = ta[key], tb[key]
        slack = (x["upper"] - x["lower"]) + (y["upper"] - y["lower"])
        assert abs(x["estimate"] - y["estimate"]) <= slack, (key, x, y)


@pytest.mark.parametrize("query", QUERIES + LANGUAGE, ids=query_id)
def test_parquet_and_postgres_answers_agree_within_their_intervals(served, query):
    client = served["client"]
    assert_agree(release(client, "claims_file", query), release(client, "claims_pg", query))


def test_median_from_postgres_is_near_the_true_median(served):
    client, frame = served["client"], served["frame"]
    answer = release(client, "claims_pg", {"kind": "quantile", "column": "age", "quantile": 0.5}, epsilon=5.0)
    true_median = frame["age"].median()
    stat = by_key(answer["table"])[()]
    assert abs(stat["estimate"] - true_median) <= 5
    # Read off a noisy histogram of the public grid, as on the file path: with an interval that holds the truth.
    assert stat["lower"] <= stat["estimate"] <= stat["upper"] and near(stat, true_median)
    grouped = by_key(release(client, "claims_pg", {"kind": "quantile", "column": "cost", "quantile": 0.9,
                                                   "by": ["sex"]}, epsilon=5.0)["table"])
    truth = dict(frame.with_columns(pl.col("cost").fill_null(500.0)).group_by("sex")
                 .agg(pl.col("cost").quantile(0.9)).iter_rows())
    for (sex,), stat in grouped.items():
        assert near(stat, truth[sex]), (sex, stat, truth[sex])


def test_counts_from_postgres_are_near_the_truth_and_report_their_interval(served):
    client, frame = served["client"], served["frame"]
    answer = release(client, "claims_pg", {"kind": "count", "by": ["region"]}, epsilon=2.0)
    truth = dict(frame.group_by("region").len().iter_rows())
    for key, stat in by_key(answer["table"]).items():
        assert stat["lower"] <= stat["estimate"] <= stat["upper"]
        assert stat["upper"] - stat["lower"] < 20  # discrete Laplace at scale k/eps = 1: about +-3
        assert abs(stat["estimate"] - truth[key[0]]) <= (stat["upper"] - stat["lower"]) * 2


def test_preview_reads_no_data_and_a_replay_is_free(served):
    client = served["client"]
    body = {"query": {"kind": "sum", "column": "cost"}, "epsilon": 0.7}
    preview = client.post("/datasets/claims_pg/dp/preview", json=body).json()
    assert preview["accuracy"][0]["statistic"] == "sum" and preview["accuracy"][0]["accuracy"] > 0
    first = release(client, "claims_pg", body["query"], epsilon=0.7)
    again = release(client, "claims_pg", body["query"], epsilon=0.7)
    assert first["epsilon_charged"] == 0.7 and not first["replayed"]
    assert again["replayed"] and again["epsilon_charged"] == 0 and again["table"] == first["table"]
    assert again["budget_left"]["epsilon"] == first["budget_left"]["epsilon"]


def test_unsupported_queries_are_refused_before_any_charge(served):
    client = served["client"]
    before = client.post("/datasets/claims_pg/dp/preview",
                         json={"query": {"kind": "count"}, "epsilon": 0.5}).json()["budget_left_before"]
    # pid has no public category list: a private key set, on which a table answers counts and histograms only.
    response = client.post("/datasets/claims_pg/dp/release",
                           json={"query": {"kind": "agg", "by": ["pid"], "aggs": [{"name": "n", "stat": "count"}]},
                                 "epsilon": 0.5, "delta": 1e-6})
    assert response.status_code == 422 and response.json()["code"] == "invalid_query"
    after = client.post("/datasets/claims_pg/dp/preview",
                        json={"query": {"kind": "count"}, "epsilon": 0.5}).json()["budget_left_before"]
    assert after == before


def test_other_channels_refuse_a_table_source_before_pricing(served):
    client = served["client"]
    budget = client.get("/datasets/claims_pg/budget").json()
    for path in ("/datasets/claims_pg/synth/preview", "/datasets/claims_pg/synth/jobs"):
        response = client.post(path, json={"spec": {"rows": 10}, "epsilon": 1.0})
        assert response.json()["code"] == "not_supported", (path, response.text)
        assert "postgres" in response.json()["message"]
    job = {"code": "print(1)\n", "code_name": "job.py", "kind": "py", "outputs": ["out.csv"]}
    response = client.post("/datasets/claims_pg/jobs", json=job)  # a code job needs a file to mount in its sandbox
    assert response.json()["code"] == "not_supported" and "postgres" in response.json()["message"], response.text
    assert client.get("/jobs").json() == []
    assert client.get("/datasets/claims_pg/budget").json() == budget


# ---------------------------------------------------------------- the pushed-down SQL itself (no noise)


def exact(db_url: str, query: dict, secret: str = "s3cret", max_contributions: int = 2, table: str = "claims"):
    """The exact per-group vectors the node's SQL returns for ``query`` (what noise is then added to)."""
    from tests.pushdown_data import COLUMNS
    from workbench.channels.dp.pushdown import postgres
    from workbench.channels.dp.pushdown.compile import compile_query, render
    from workbench.channels.dp.pushdown.run import _vectors
    from workbench.protocol import DatasetInfo, DPQuery

    info = DatasetInfo(name="claims", tier="private", max_rows=1_000_000,
                       privacy_unit={"id_column": "pid", "max_contributions": max_contributions},
                       columns=[{"name": n, **c} for n, c in COLUMNS.items()])
    compiled = compile_query(info, DPQuery(**query), table, secret, 3)
    return compiled, _vectors(info, compiled, postgres.fetch("claims", pg_dsn(db_url), render(compiled, "postgres")))


def test_contribution_bounding_keeps_at_most_k_rows_per_person_chosen_by_the_keyed_hash(served):
    db_url = served["db_url"]
    heavy = pl.DataFrame({"pid": ["heavy"] * 50, "region": ["north"] * 50, "sex": ["F"] * 50,
                          "age": list(range(50)), "cost": [1000.0] * 50})
    load_postgres(db_url, "claims_heavy", pl.concat([served["frame"], heavy]))
    frame = served["frame"]
    _, plain = exact(db_url, {"kind": "count"}, table="claims")
    _, with_heavy = exact(db_url, {"kind": "count"}, table="claims_heavy")
    assert plain["count"] == [frame.height]
    assert with_heavy["count"] == [frame.height + 2]  # 50 rows of one person count as 2
    _, one = exact(db_url, {"kind": "count"}, table="claims_heavy", max_contributions=1)
    assert one["count"] == [frame["pid"].n_unique() + 1]
    # Which two of the 50 rows count is decided by the node's key, not by anything the analyst sends.
    picks = {tuple(exact(db_url, {"kind": "sum", "column": "age"}, secret=f"key{i}", table="claims_heavy")[1]["sum"])
             for i in range(6)}
    assert len(picks) > 1
    again = exact(db_url, {"kind": "sum", "column": "age"}, secret="key0", table="claims_heavy")[1]["sum"]
    assert again == exact(db_url, {"kind": "sum", "column": "age"}, secret="key0", table="claims_heavy")[1]["sum"]


def test_sums_are_exact_fixed_point_integers_of_clipped_values(served):
    frame = served["frame"]
    compiled, vectors = exact(served["db_url"], {"kind": "sum", "column": "cost", "by": ["region"]})
    assert compiled.scale == 1000 and compiled.sum_bound == 1_000_000
    expected = (frame.with_columns(pl.col("cost").fill_null(500.0).clip(0, 1000).mul(1000).round().cast(pl.Int64))
                .group_by("region").agg(pl.col("cost").sum()))
    truth = dict(expected.iter_rows())
    assert dict(zip([k[0] for k in compiled.key_product()], vectors["sum"])) == truth


def test_keys_outside_the_public_list_are_dropped_and_missing_keys_are_zero(served):
    db_url = served["db_url"]
    odd = pl.DataFrame({"pid": ["x1", "x2"], "region": ["mars", "mars"], "sex": ["F", "F"], "age": [1, 2],
                        "cost": [1.0, 2.0]})
    only_north = served["frame"].filter(pl.col("region") == "north")
    load_postgres(db_url, "claims_odd", pl.concat([only_north, odd]))
    compiled, vectors = exact(db_url, {"kind": "count", "by": ["region"]}, table="claims_odd")
    counts = dict(zip([k[0] for k in compiled.key_product()], vectors["count"]))
    assert counts == {"north": only_north.height, "south": 0, "east": 0, "west": 0}


# ---------------------------------------------------------------- configuration and credentials


def test_a_password_in_the_source_url_is_refused(tmp_path):
    from workbench.errors import InvalidQuery
    from workbench.node.settings import NodeConfig

    config = write_config(tmp_path, {"t": {"source": {"url": "postgresql://bob:hunter2@db/x", "table": "t"}}},
                          port=free_port())
    with pytest.raises(InvalidQuery) as caught:
        NodeConfig.load(config)
    assert caught.value.code == "invalid_config" and "WORKBENCH_SOURCE_" in caught.value.message


def test_credentials_come_from_the_environment_and_stay_out_of_the_catalogue(monkeypatch, tmp_path):
    from workbench.node.sources import env_prefix, public_url, source_version, with_credentials
    from workbench.node.settings import TableSource

    assert env_prefix("claims-2024") == "WORKBENCH_SOURCE_CLAIMS_2024"
    monkeypatch.setenv("WORKBENCH_SOURCE_CLAIMS_2024_USER", "reader")
    monkeypatch.setenv("WORKBENCH_SOURCE_CLAIMS_2024_PASSWORD", "p@ss word")
    url = with_credentials("claims-2024", "postgresql://db.example:5432/warehouse")
    assert url == "postgresql://reader:p%40ss%20word@db.example:5432/warehouse"
    assert public_url(url) == "postgresql://db.example:5432/warehouse"
    source = TableSource(url="postgresql://db.example:5432/warehouse", table="claims")
    assert "p@ss" not in source_version(source) and source_version(source).startswith("table:")
    bumped = TableSource(url="postgresql://db.example:5432/warehouse", table="claims", version="2")
    assert source_version(bumped) != source_version(source)


def test_moments_agree_with_the_parquet_file_within_their_noise(served):
    query = {"kind": "moments", "columns": ["age", "cost"], "where": {"op": "eq", "left": col("sex"), "right": lit("M")}}
    a, b = (by_moment(release(served["client"], name, query, epsilon=5.0)) for name in ("claims_file", "claims_pg"))
    assert a.keys() == b.keys() == {"n", "s__age", "s__cost", "p__age__age", "p__age__cost", "p__cost__cost",
                                    "c__age", "c__cost"}
    for moment in a:
        (x, sx), (y, sy) = a[moment], b[moment]
        assert abs(x - y) <= 15 * (sx + sy), (moment, a[moment], b[moment])  # Laplace tails: P(miss) < 1e-6


def by_moment(answer: dict) -> dict[str, tuple[float, float]]:
    columns = answer["table"]["columns"]
    return {row[0]: (row[columns.index("estimate")], row[columns.index("scale")]) for row in answer["table"]["data"]}


def test_a_wrong_type_in_a_table_is_a_start_up_problem(served, tmp_path):
    import psycopg

    from workbench.node.catalog import Catalog
    from workbench.node.settings import NodeConfig

    with psycopg.connect(pg_dsn(served["db_url"])) as con:
        con.execute('DROP TABLE IF EXISTS "claims_text_age"')
        con.execute('CREATE TABLE "claims_text_age" (pid text, region text, sex text, age text, cost double precision)')
    broken = write_config(tmp_path, {"bad": {"source": {"url": pg_dsn(served["db_url"]), "table": "claims_text_age"}}},
                          port=free_port())
    problems = Catalog(NodeConfig.load(broken)).problems()
    assert "'age' is text, not int" in problems["bad"]


def test_catalogue_shows_no_source_and_node_check_catches_a_missing_column(served, tmp_path):
    listing = served["client"].get("/catalog").json()
    entry = next(d for d in listing if d["name"] == "claims_pg")
    assert "source" not in entry and served["db_url"].rsplit("/", 1)[-1] not in str(entry)
    from workbench.node.catalog import Catalog
    from workbench.node.settings import NodeConfig

    broken = write_config(tmp_path, {"bad": {"source": {"url": pg_dsn(served["db_url"]), "table": "no_such_table"}}},
                          port=free_port())
    catalog = Catalog(NodeConfig.load(broken))
    assert "bad" in catalog.problems() and not catalog.entries()
