"""The DP query language without a node: the col() builder, typing against public metadata, the canonical
form (replay identity), compilation that OpenDP accepts, and the statistical behaviour of the engine
(interval coverage, an empirical-epsilon audit of a filtered count and a derived-column mean)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

import workbench as wb
from workbench import col
from tests.intervals import fewest_hits, near, near_interval
from workbench.channels.dp import worker as engine
from workbench.query.validate import validate
from workbench.query import language
from workbench.query.text import readable
from workbench.errors import InvalidQuery
from workbench.protocol import MAX_EXPR_DEPTH, DatasetInfo, DPQuery

INFO = DatasetInfo(name="people", tier="private", max_rows=10_000, columns=[
    {"name": "age", "type": "int", "bounds": [0, 100]},
    {"name": "cost", "type": "float", "bounds": [0.0, 1000.0]},
    {"name": "visits", "type": "int", "bounds": [0, 20]},
    {"name": "sex", "type": "category", "categories": ["F", "M"]},
])


def spec(**kw) -> DPQuery:
    return DPQuery.model_validate(kw)


def derive(**columns) -> list[dict]:
    return [{"name": k, "expr": v.tree} for k, v in columns.items()]


# ----------------------------------------------------------------- the builder


def test_builder_makes_json_trees_with_python_operators():
    expr = (col("age") >= 65) & (col("sex") == "F") | ~col("cost").is_null()
    assert expr.tree["op"] == "or"
    assert expr.tree["args"][0] == {"op": "and", "args": [
        {"op": "ge", "left": {"op": "col", "name": "age"}, "right": {"op": "lit", "value": 65}},
        {"op": "eq", "left": {"op": "col", "name": "sex"}, "right": {"op": "lit", "value": "F"}}]}
    assert (col("x") ** 2).tree == {"op": "mul", "left": {"op": "col", "name": "x"}, "right": {"op": "col", "name": "x"}}
    assert (10 - col("x")).tree["left"] == {"op": "lit", "value": 10}
    assert readable(spec(kind="count", where=((col("age") >= 65) & (col("sex") == "F")).tree, by=["sex"])) == \
        "count(*) where age >= 65 and sex = 'F' by sex".replace(" = ", " == ")


@pytest.mark.parametrize("bad", [
    lambda: (col("age") > 1) and (col("age") < 5),
    lambda: col("age") // 2,
    lambda: col("age") % 2,
    lambda: col("age") ** 0.5,
    lambda: col("age").cast("string"),
    lambda: col("age") + object(),
])
def test_builder_refuses_what_the_language_cannot_say(bad):
    with pytest.raises(InvalidQuery) as info:
        bad()
    assert info.value.code == "unsupported_operator"


def test_nan_literal_and_bad_quantile_are_refused_by_the_builder():
    with pytest.raises(InvalidQuery) as info:
        col("cost") > float("nan")
    assert info.value.code == "invalid_query"
    for p in (0, 1, 1.5, -0.1, "0.5", True):
        with pytest.raises(InvalidQuery) as info:
            wb.quantile("age", p)
        assert info.value.code == "bad_quantile"


# ----------------------------------------------------------------- typing against public metadata


def test_unknown_column_says_did_you_mean():
    with pytest.raises(InvalidQuery) as info:
        language.derived_schema(INFO, spec(kind="count", where=(col("agee") > 3).tree))
    assert info.value.code == "unknown_column"
    assert "Did you mean 'age'" in info.value.message


def test_derived_bounds_come_only_from_clip_or_declared_metadata():
    raw = spec(kind="mean", column="cpv", derive=derive(cpv=col("cost") / col("visits")))
    with pytest.raises(InvalidQuery) as info:
        validate(INFO, raw, 0.0)
    assert info.value.code == "bad_bounds" and "clip" in info.value.message
    clipped = spec(kind="mean", column="cpv", derive=derive(cpv=(col("cost") / col("visits")).clip(0, 500)))
    schema = validate(INFO, clipped, 0.0)
    assert schema.column("cpv").bounds == (0.0, 500.0) and schema.column("cpv").type == "float"
    cast = validate(INFO, spec(kind="sum", column="old", derive=derive(old=(col("age") >= 65).cast("int"))),
                           0.0)
    assert cast.column("old").bounds == (0, 1)
    kept = validate(INFO, spec(kind="sum", column="a", derive=derive(a=col("age").fill_null(30))), 0.0)
    assert kept.column("a").bounds == (0, 100)


def test_a_share_of_true_rows_is_a_mean_of_a_cast_and_the_error_says_so():
    info = DatasetInfo(name="people", tier="private", max_rows=10_000,
                       columns=[{"name": "smoker", "type": "bool", "categories": [False, True]}])
    as_type = validate(info, spec(kind="mean", column="s", derive=derive(s=col("smoker").cast(int))), 0.0)
    assert as_type.column("s").bounds == (0, 1)  # the Python type spells the same cast as "int"
    with pytest.raises(InvalidQuery) as refused:
        validate(info, spec(kind="mean", column="smoker"), 0.0)
    assert refused.value.code == "wrong_type" and "col('smoker').cast('int')" in refused.value.message


@pytest.mark.parametrize("expr,code", [
    (col("sex") > "F", "wrong_type"),
    (col("age") == "old", "wrong_type"),
    (col("sex") + 1, "wrong_type"),
    (col("age") & (col("age") > 3), "wrong_type"),
    (col("age").clip(10, 5) > 1, "bad_bounds"),
    (col("age").cut([40, 18]).is_null(), "bad_bounds"),
    (col("sex").fill_null("F") == "F", "unsupported_operator"),
])
def test_type_errors_have_codes(expr, code):
    with pytest.raises(InvalidQuery) as info:
        validate(INFO, spec(kind="count", where=expr.tree), 0.0)
    assert info.value.code == code


def test_tree_caps():
    deep = col("age")
    for _ in range(MAX_EXPR_DEPTH + 2):
        deep = deep + 1
    with pytest.raises(InvalidQuery) as info:
        validate(INFO, spec(kind="count", where=(deep > 3).tree), 0.0)
    assert info.value.code == "query_too_large"


def test_cut_labels_are_public_keys():
    schema = validate(INFO, spec(kind="count", by=["band"], derive=derive(band=col("age").cut([18, 65]))), 0.0)
    assert schema.column("band").categories == ["(-inf, 18]", "(18, 65]", "(65, inf]"]


# ----------------------------------------------------------------- canonical form


def test_equivalent_spellings_have_one_canonical_form():
    a = spec(kind="count", where=((col("age") >= 65) & (col("sex") == "F")).tree)
    b = spec(kind="count", where=((col("sex") == "F") & (65 <= col("age"))).tree)
    c = spec(kind="count", where=((col("sex") == "F") & (col("age") >= 65.0) & (col("sex") == "F")).tree)
    assert language.canonical(a) == language.canonical(b) == language.canonical(c)
    d = spec(kind="count", where=col("sex").is_in(["M", "F", "M"]).tree)
    e = spec(kind="count", where=col("sex").is_in(["F", "M"]).tree)
    assert language.canonical(d) == language.canonical(e)
    unused = spec(kind="count", derive=derive(z=col("age") * 2))
    assert language.canonical(unused) == language.canonical(spec(kind="count"))
    different = spec(kind="count", where=(col("age") > 65).tree)
    assert language.canonical(different) != language.canonical(a)


def test_statistic_order_and_even_weights_do_not_change_identity():
    one = spec(kind="agg", aggs=[{"name": "n", "stat": "count"}, {"name": "m", "stat": "mean", "column": "cost"}])
    two = spec(kind="agg", aggs=[{"name": "m", "stat": "mean", "column": "cost"}, {"name": "n", "stat": "count"}],
               weights=[2, 2])
    assert language.canonical(one) == language.canonical(two)
    weighted = spec(kind="agg", aggs=one.aggs, weights=[1, 3])
    assert language.canonical(weighted) != language.canonical(one)


# ----------------------------------------------------------------- engine on real data (OpenDP)


@pytest.fixture(scope="module")
def people(tmp_path_factory):
    rng = np.random.default_rng(7)
    n = 3_000
    frame = pl.DataFrame({"age": rng.integers(0, 101, n), "cost": rng.uniform(0, 1000, n).round(2),
                          "visits": rng.integers(0, 21, n), "sex": rng.choice(["F", "M"], n)})
    path = tmp_path_factory.mktemp("people") / "people.parquet"
    frame.write_parquet(path)
    return path, frame


def run(path, query: DPQuery, epsilon: float, mode: str = "release", key: str = "") -> dict:
    return engine.run({"info": INFO.model_dump(mode="json"), "query": query.model_dump(mode="json"),
                       "epsilon": epsilon, "delta": 0.0, "alpha": 0.05, "path": str(path), "format": "parquet",
                       "mode": mode, "cache_key": f"{path}|{query.model_dump_json()}|{epsilon}|{mode}|{key}"})


def test_operators_opendp_refuses_are_compiled_to_ones_it_accepts(people):
    path, frame = people
    where = (col("sex").is_in(["F", "X"]) & col("age").between(20, 60) & (col("cost") - 500).abs().__le__(400)
             & ~col("visits").is_null())
    out = run(path, spec(kind="count", where=where.tree), 50.0)
    truth = frame.filter(pl.col("sex").is_in(["F", "X"]) & pl.col("age").is_between(20, 60)
                         & ((pl.col("cost") - 500).abs() <= 400)).height
    estimate, lower, upper = out["table"]["data"][0]
    assert near_interval(lower, upper, truth) and abs(estimate - truth) < 5


def test_several_statistics_share_one_price_split_by_weights(people):
    path, frame = people
    query = spec(kind="agg", by=["sex"], aggs=[{"name": "n", "stat": "count"},
                                               {"name": "c", "stat": "mean", "column": "cost"},
                                               {"name": "v", "stat": "var", "column": "age"},
                                               {"name": "q", "stat": "quantile", "column": "age", "p": 0.5}],
                 weights=[1, 2, 1, 1])
    out = run(path, query, 20.0)
    shares = {a["statistic"].split(" ")[0]: a["share"] for a in out["accuracy"]}
    assert shares == {"n": 0.2, "c": 0.4, "v": 0.2, "q": 0.2}
    table = pl.DataFrame(out["table"]["data"], schema=out["table"]["columns"], orient="row")
    assert table.columns == ["sex", "statistic", "estimate", "lower", "upper"]
    for sex in ("F", "M"):
        part = frame.filter(pl.col("sex") == sex)
        got = {r["statistic"]: r for r in table.filter(pl.col("sex") == sex).iter_rows(named=True)}
        assert near(got["n"], part.height)  # (coverage itself is tested below, over many releases)
        assert near(got["c"], part["cost"].mean())
        assert near(got["v"], part["age"].var(ddof=0))
        assert abs(got["q"]["estimate"] - part["age"].median()) <= 5
        assert near(got["q"], part["age"].quantile(0.5, "lower"))


def test_count_weight_buys_a_narrower_interval(people):
    path, _ = people
    aggs = [{"name": "n", "stat": "count"}, {"name": "s", "stat": "sum", "column": "cost"}]
    even = run(path, spec(kind="agg", aggs=aggs), 1.0, mode="preview")
    heavy = run(path, spec(kind="agg", aggs=aggs, weights=[3, 1]), 1.0, mode="preview")
    width = {r["statistic"]: r["accuracy"] for r in even["accuracy"]}
    heavy_width = {r["statistic"]: r["accuracy"] for r in heavy["accuracy"]}
    assert heavy_width["n"] < width["n"] * 0.75 and heavy_width["s"] > width["s"] * 1.4


@pytest.mark.slow
def test_intervals_cover_the_truth_about_95_percent(people):
    path, frame = people
    d = derive(cpv=(col("cost") / (col("visits") + 1)).clip(0, 500))
    old = (col("age") >= 50) & (col("sex") == "F")
    cases = [
        (spec(kind="count", where=old.tree), frame.filter((pl.col("age") >= 50) & (pl.col("sex") == "F")).height),
        (spec(kind="agg", where=old.tree, aggs=[{"name": "s", "stat": "sum", "column": "cost"}]),
         frame.filter((pl.col("age") >= 50) & (pl.col("sex") == "F"))["cost"].sum()),
        (spec(kind="mean", column="cpv", derive=d),
         (frame["cost"] / (frame["visits"] + 1)).clip(0, 500).mean()),
        (spec(kind="agg", where=old.tree, aggs=[{"name": "q", "stat": "quantile", "column": "cost", "p": 0.3}]),
         float(np.quantile(frame.filter((pl.col("age") >= 50) & (pl.col("sex") == "F"))["cost"].to_numpy(), 0.3,
                           method="inverted_cdf"))),
        (spec(kind="agg", aggs=[{"name": "q", "stat": "quantile", "column": "age", "p": 0.9},
                                {"name": "n", "stat": "count"}]),
         float(np.quantile(frame["age"].to_numpy(), 0.9, method="inverted_cdf"))),
    ]
    releases = 300
    for query, truth in cases:
        covered = 0
        for _ in range(releases):
            table = run(path, query, 0.5)["table"]
            rows = [dict(zip(table["columns"], r)) for r in table["data"]]
            row = next((r for r in rows if r.get("statistic") in ("q", "s")), rows[0])
            lower, upper = row["lower"], row["upper"]
            covered += lower <= truth <= upper
        assert covered >= fewest_hits(releases), (readable(query), covered)
