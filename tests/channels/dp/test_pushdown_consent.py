"""The data subject's say on a table in PostgreSQL: rows without consent never reach the pushed-down SQL.

Two tables differ only in the rows of people who did not consent (by a consent column, or by an opt-out
list keyed by the privacy unit): the exact aggregates the node's SQL returns (what noise is added to) are
identical, so every release has the same distribution on both. A real node releases counts of consenting
people only, a new opt-out is a new dataset version, and a consent column that is not boolean is refused.
"""

from __future__ import annotations

import time
import uuid

import numpy as np
import polars as pl
import pytest

from tests.channels.dp.test_pushdown_postgres import LANGUAGE, QUERIES, exact, pg_dsn, query_id
from tests.conftest import free_port
from tests.intervals import near
from tests.pushdown_data import analyst_on_node, make_frame, write_config
from workbench.channels.dp.pushdown.consent import consenting_relation

pytestmark = pytest.mark.postgres


def with_consent(frame: pl.DataFrame, seed: int = 11) -> pl.DataFrame:
    """One consent answer per person: yes, no, or never asked (null)."""
    people = frame["pid"].unique().sort()
    answers = np.random.default_rng(seed).choice([True, False, None], people.len(), p=[0.6, 0.3, 0.1])
    return frame.join(pl.DataFrame({"pid": people, "consent": pl.Series(answers.tolist(), dtype=pl.Boolean)}),
                      on="pid")


def twin(frame: pl.DataFrame) -> pl.DataFrame:
    """The same table, with every row of a person without consent rewritten (and a few more such rows)."""
    out = ~pl.col("consent").fill_null(False)
    changed = frame.with_columns(age=pl.when(out).then(100).otherwise(pl.col("age")),
                                 cost=pl.when(out).then(1000.0).otherwise(pl.col("cost")),
                                 region=pl.when(out).then(pl.lit("west")).otherwise(pl.col("region")))
    return pl.concat([changed, changed.filter(out).head(500)])


def load(url: str, table: str, frame: pl.DataFrame) -> None:
    import psycopg

    with psycopg.connect(pg_dsn(url)) as con:
        con.execute(f'DROP TABLE IF EXISTS "{table}"')
        con.execute(f'CREATE TABLE "{table}" (pid text, region text, sex text, age bigint, cost double precision, '
                    "consent boolean)")
        with con.cursor().copy(f'COPY "{table}" (pid, region, sex, age, cost, consent) FROM STDIN') as copy:
            for row in frame.select("pid", "region", "sex", "age", "cost", "consent").iter_rows():
                copy.write_row(row)


@pytest.fixture(scope="module")
def tables(tmp_path_factory, pg_server):
    from tests import pg

    root = tmp_path_factory.mktemp("pushdown-consent")
    frame = with_consent(make_frame(people=4_000))
    db_url = pg.fresh_database(pg_server, f"wb_{uuid.uuid4().hex[:10]}")
    load(db_url, "people", frame)
    load(db_url, "people_twin", twin(frame))
    refused = frame.filter(~pl.col("consent").fill_null(False))["pid"].unique().sort().to_list()
    (root / "opt-out.txt").write_text("# said no or were never asked\n" + "\n".join(refused) + "\n")
    return {"root": root, "frame": frame, "db_url": db_url, "opt_out": root / "opt-out.txt"}


def rules(tables) -> dict[str, dict]:
    return {"column": {"column": "consent", "opt_out_file": None, "id_column": None},
            "opt-out list": {"column": None, "opt_out_file": str(tables["opt_out"]), "id_column": "pid"}}


@pytest.mark.parametrize("rule", ["column", "opt-out list"])
@pytest.mark.parametrize("query", QUERIES + LANGUAGE[:3], ids=query_id)
def test_rows_without_consent_change_nothing_the_sql_returns(tables, rule, query):
    spec, url = rules(tables)[rule], tables["db_url"]
    _, mine = exact(url, query, table=consenting_relation("people", spec))
    _, theirs = exact(url, query, table=consenting_relation("people_twin", spec))
    _, everyone = exact(url, query, table="people_twin")
    assert mine == theirs, "a change to rows without consent reached the aggregates"
    assert mine != everyone, "the comparison could not fail: the changed rows matter without the rule"


def test_counts_are_of_consenting_rows_only(tables):
    consenting = tables["frame"].filter(pl.col("consent").fill_null(False))
    for spec in rules(tables).values():
        _, counts = exact(tables["db_url"], {"kind": "count", "by": ["region"]},
                          table=consenting_relation("people", spec))
        truth = dict(consenting.group_by("region").len().iter_rows())
        assert counts["count"] == [truth.get(r, 0) for r in ["north", "south", "east", "west"]]


@pytest.fixture(scope="module")
def node(tables):

    root, dsn = tables["root"], pg_dsn(tables["db_url"])
    opt_out = root / "node-opt-out.txt"  # the node's own copy: the last test adds to it
    opt_out.write_text(tables["opt_out"].read_text())
    config = write_config(root, {"by_column": {"source": {"url": dsn, "table": "people"},
                                               "consent": {"column": "consent"}},
                                 "by_list": {"source": {"url": dsn, "table": "people"},
                                             "consent": {"opt_out_file": str(opt_out)}},
                                 "text_consent": {"source": {"url": dsn, "table": "people"},
                                                  "consent": {"column": "sex"}}},
                          port=free_port())
    with analyst_on_node(config, ("by_column", "by_list"), "testing consent", epsilon=100.0) as client:
        yield {"client": client, "config": config, "opt_out": opt_out}


def test_a_real_node_releases_counts_of_consenting_people(tables, node):
    consenting = tables["frame"].filter(pl.col("consent").fill_null(False)).height
    for name in ("by_column", "by_list"):
        response = node["client"].post(f"/datasets/{name}/dp/release",
                                       json={"query": {"kind": "count"}, "epsilon": 2.0})
        assert response.status_code == 200, response.text
        columns, row = response.json()["table"]["columns"], response.json()["table"]["data"][0]
        stat = dict(zip(columns, row))
        assert near(stat, consenting), (name, stat, consenting)
        assert not near(stat, tables["frame"].height), "people without consent were counted"


def test_a_consent_column_must_be_boolean(node):
    from workbench.node.catalog import Catalog
    from workbench.node.settings import NodeConfig

    listing = [d["name"] for d in node["client"].get("/catalog").json()]
    assert "by_column" in listing and "text_consent" not in listing
    problems = Catalog(NodeConfig.load(node["config"])).problems()  # what `workbench node check` shows the owner
    assert "consent column 'sex' is text, not boolean" in problems["text_consent"]


def test_a_new_opt_out_is_a_new_version(tables, node):
    def version() -> str:
        return next(d for d in node["client"].get("/catalog").json() if d["name"] == "by_list")["version"]

    before = version()
    with node["opt_out"].open("a") as fh:
        fh.write(tables["frame"].filter(pl.col("consent").fill_null(False))["pid"][0] + "\n")
    deadline = time.monotonic() + 60
    while version() == before:
        assert time.monotonic() < deadline, "the catalogue did not notice the new opt-out"
        time.sleep(0.2)
