"""The query language against a real node over loopback, as an analyst uses it: the issue's contract,
replays of re-spelled questions, refusals that charge nothing, a filter isolating one person, the readable
text in previews and history, and plots of results."""

from __future__ import annotations

import httpx
import numpy as np
import polars as pl
import pytest

import workbench as wb
from tests.intervals import near, near_interval
from workbench import col
from workbench.errors import InvalidQuery


@pytest.fixture(scope="module")
def ds(shared_node):
    return wb.connect(shared_node.url, token=shared_node.analyst_token).dataset("patients")


@pytest.fixture(scope="module")
def truth(shared_node) -> pl.DataFrame:
    """The node's rows, read by the test only to check answers against the truth."""
    return pl.read_parquet(shared_node.config_path.parent / "data" / "patients_hospital_a.parquet")


def spent(ds) -> float:
    return ds.budget()["epsilon_spent"]


def test_filters_derived_columns_and_several_statistics(ds, truth):
    old = ds.filter((col("age") >= 65) & (col("sex") == "F"))
    n = old.count().release(epsilon=0.2)
    true_n = truth.filter((pl.col("age") >= 65) & (pl.col("sex") == "F")).height
    assert near_interval(n["lower"][0], n["upper"][0], true_n)
    assert ds[col("age") >= 65].filter(col("sex") == "F").count().text == "count(*) where age >= 65 and sex == 'F'"

    d = ds.with_columns(cost_per_visit=(col("cost") / col("visits")).clip(0, 5_000),
                        band=col("age").cut([18, 40, 65]),
                        frail=(col("age") >= 80) | (col("visits") > 10))
    by_band = d.group_by("band").mean("cost_per_visit").release(epsilon=0.3)
    assert list(by_band["band"]) == ["(-inf, 18]", "(18, 40]", "(40, 65]", "(65, inf]"]
    table = ds.group_by("sex").agg(n=wb.count(), cost=wb.mean("cost"), sd=wb.std("cost"),
                                   p90=wb.quantile("age", 0.9)).release(epsilon=0.6)
    assert set(table.columns) == {"sex", "statistic", "estimate", "lower", "upper"}
    assert table.attrs["epsilon_charged"] == pytest.approx(0.6)
    for sex in ("F", "M"):
        rows = table[table["sex"] == sex].set_index("statistic")
        part = truth.filter(pl.col("sex") == sex)
        assert near(rows.loc["n"], part.height)
        assert near(rows.loc["cost"], part["cost"].mean())
        assert abs(rows.loc["p90", "estimate"] - part["age"].quantile(0.9)) <= 8


def test_preview_shows_each_statistics_share_and_error(ds):
    before = spent(ds)
    preview = ds.agg(n=wb.count(), var=wb.var("bmi"), weights={"n": 1, "var": 3}).preview(epsilon=0.5)
    shares = dict(zip(preview.accuracy["statistic"], preview.accuracy["share"]))
    assert shares["n"] == pytest.approx(0.25) and shares["var (sum)"] == pytest.approx(0.75)
    assert preview.text == "count(*), var=var(bmi)"
    assert "share of ε" in preview._repr_html_()
    assert spent(ds) == before


def test_correlation_regression_crosstab_describe(ds, truth):
    corr = ds.corr(["age", "bmi", "cost"]).release(epsilon=1.0)
    frame = truth.to_pandas()
    true = frame[["age", "bmi", "cost"]].corr()
    pair = corr[(corr["row"] == "age") & (corr["column"] == "cost")].iloc[0]
    assert near(pair, true.loc["age", "cost"]) and pair["lower"] < pair["upper"], pair
    assert corr.wb.matrix().shape == (3, 3)
    fit = ds.linear_regression(y="cost", x=["age", "bmi"]).release(epsilon=1.0)
    design = np.c_[np.ones(len(frame)), frame["age"], frame["bmi"]]
    beta = np.linalg.lstsq(design, frame["cost"], rcond=None)[0]
    age = fit.set_index("term").loc["age"]
    assert abs(age["estimate"] - beta[1]) < 5 * age["se"] and age["se"] >= age["se_sampling"]
    tab = ds.crosstab("sex", "diagnosis").release(epsilon=0.2)
    assert list(tab.index) == ["F", "M"] and set(tab.columns.get_level_values(0)) == {"estimate", "lower", "upper"}
    summary = ds.describe(epsilon=1.0)
    assert {"n", "age_mean", "cost_std", "bmi_median"} <= set(summary["statistic"])
    assert summary.attrs["epsilon_charged"] == pytest.approx(1.0)


def test_accuracy_first_finds_the_least_epsilon(ds):
    query = ds.filter(col("age") >= 65).count()
    preview = query.preview(accuracy=50)
    assert preview.accuracy["accuracy"].max() <= 50
    lower = query.preview(epsilon=preview.epsilon * 0.98)
    assert lower.accuracy["accuracy"].max() > 50
    before = spent(ds)
    answer = query.release(accuracy=50)
    assert answer.attrs["epsilon"] == pytest.approx(preview.epsilon)
    assert spent(ds) == pytest.approx(before + preview.epsilon)


def test_re_spelled_questions_replay_free_and_identical(ds):
    first = ds.filter((col("age") >= 65) & col("diagnosis").is_in(["asthma", "diabetes"])) \
        .agg(n=wb.count(), cost=wb.mean("cost")).release(epsilon=0.3)
    before = spent(ds)
    again = ds.filter(col("diagnosis").is_in(["diabetes", "asthma", "asthma"])).filter(65 <= col("age")) \
        .with_columns(unused=col("bmi") * 2).agg(cost=wb.mean("cost"), n=wb.count()).release(epsilon=0.3)
    assert again.attrs["replayed"] and again.attrs["epsilon_charged"] == 0
    assert again.equals(first)
    sql = ds.sql("SELECT COUNT(*) AS n, AVG(cost) AS cost FROM patients "
                 "WHERE age >= 65 AND diagnosis IN ('asthma', 'diabetes')").release(epsilon=0.3)
    respelled = ds.sql("select avg(cost) as cost,\n   count(*) as n\nfrom patients\n"
                       "where diagnosis in ('diabetes','asthma') and 65 <= age").release(epsilon=0.3)
    assert respelled.attrs["replayed"] and respelled.equals(sql) and sql.equals(first)
    assert spent(ds) == pytest.approx(before)


BAD = [
    (lambda ds: ds.filter(col("agee") > 3), "unknown_column"),
    (lambda ds: ds.with_columns(r=col("cost") / col("visits")).mean("r").release(epsilon=0.1), "bad_bounds"),
    (lambda ds: ds.filter(col("sex") > 3), "wrong_type"),
    (lambda ds: ds.filter((col("age") > 1) and (col("age") < 5)), "unsupported_operator"),
    (lambda ds: ds.sql("SELECT COUNT(*) FROM patients a JOIN patients b ON a.age = b.age"), "unsupported_sql"),
    (lambda ds: ds.sql("SELEC COUNT(*) FRM patients"), "bad_sql"),
    (lambda ds: ds.quantile("age", 1.5), "bad_quantile"),
    (lambda ds: ds.agg(p=wb.quantile("age", 0)), "bad_quantile"),
    (lambda ds: ds.count().release(epsilon=float("nan")), "bad_epsilon"),
    (lambda ds: ds.count().release(epsilon="0.1"), "bad_epsilon"),
]


@pytest.mark.parametrize("mistake,code", BAD, ids=[c for _, c in BAD])
def test_client_mistakes_raise_coded_errors_before_any_request(ds, mistake, code):
    before = spent(ds)
    with pytest.raises(InvalidQuery) as info:
        mistake(ds)
    assert info.value.code == code, info.value
    assert spent(ds) == before


NODE_BAD = [
    ({"kind": "count", "where": {"op": "gt", "left": {"op": "col", "name": "agee"},
                                 "right": {"op": "lit", "value": 3}}}, "unknown_column"),
    ({"kind": "mean", "column": "r", "derive": [{"name": "r", "expr": {
        "op": "div", "left": {"op": "col", "name": "cost"}, "right": {"op": "col", "name": "visits"}}}]}, "bad_bounds"),
    ({"kind": "count", "where": {"op": "pow", "left": {"op": "col", "name": "age"},
                                 "right": {"op": "lit", "value": 2}}}, "invalid_body"),
    ({"kind": "sql", "sql": "SELECT * FROM patients"}, "unsupported_sql"),
    ({"kind": "sql", "sql": "SELECT COUNT(*) FROM patients WHERE age IN (SELECT 1)"}, "unsupported_sql"),
    ({"kind": "sql", "sql": "SELECT SUM(cost) OVER () FROM patients"}, "unsupported_sql"),
    ({"kind": "sql", "sql": "WITH t AS (SELECT 1) SELECT COUNT(*) FROM patients"}, "unsupported_sql"),
    ({"kind": "sql", "sql": "SELECT COUNT(*) FROM patients UNION SELECT COUNT(*) FROM patients"}, "unsupported_sql"),
    ({"kind": "sql", "sql": "SELECT myudf(cost) FROM patients"}, "unsupported_sql"),
    ({"kind": "sql", "sql": "SELECT COUNT(* FROM"}, "bad_sql"),
    ({"kind": "agg", "aggs": [{"name": "q", "stat": "quantile", "column": "age"}]}, "bad_quantile"),
    ({"kind": "agg", "aggs": [{"name": "q", "stat": "quantile", "column": "age", "p": 1.0}]}, "invalid_body"),
]


@pytest.mark.parametrize("query,code", NODE_BAD, ids=[f"{i}-{c}" for i, (_, c) in enumerate(NODE_BAD)])
def test_node_refuses_the_same_before_charging(shared_node, ds, query, code):
    before = spent(ds)
    headers = {"Authorization": f"Bearer {shared_node.analyst_token}"}
    for path in ("preview", "release"):
        r = httpx.post(f"{shared_node.url}/v1/datasets/patients/dp/{path}", headers=headers, timeout=60,
                       json={"query": query, "epsilon": 0.1})
        assert 400 <= r.status_code < 500 and r.json()["code"] == code, r.text
        assert "Traceback" not in r.text and "polars" not in r.text.lower()
    assert spent(ds) == before


def test_deeply_nested_json_is_refused_without_a_crash(shared_node):
    depth = 5_000
    tree = '{"op": "not", "arg": ' * depth + '{"op": "col", "name": "age"}' + "}" * depth
    raw = '{"query": {"kind": "count", "where": %s}, "epsilon": 0.1}' % tree
    r = httpx.post(f"{shared_node.url}/v1/datasets/patients/dp/release", timeout=60, content=raw,
                   headers={"Authorization": f"Bearer {shared_node.analyst_token}",
                            "content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text[:300]
    assert httpx.get(f"{shared_node.url}/v1/health").status_code == 200


def test_a_filter_isolating_one_person_returns_only_a_dp_answer(ds, truth):
    person = truth.row(123, named=True)
    alone = ds.filter(col("patient_id") == person["patient_id"])
    answers = [alone.mean("cost").release(epsilon=0.05 + i / 100) for i in range(3)]
    for answer in answers:
        assert list(answer.columns) == ["estimate", "lower", "upper", "noisy_count"]
        assert answer.attrs["epsilon_charged"] > 0
        # the interval is as wide as the noise: it cannot pin down this person's cost
        assert answer["upper"][0] - answer["lower"][0] > 10_000
    counts = [alone.count().release(epsilon=0.1 + i / 100)["estimate"][0] for i in range(4)]
    assert len(set(counts)) > 1  # noisy, not the exact 1


def test_history_and_widget_show_the_question_in_readable_form(ds):
    ds.filter(col("age") >= 30).group_by("sex").mean("cost").release(epsilon=0.1)
    history = ds.node.history()
    assert "mean(cost) where age >= 30 by sex" in list(history["text"])
    widget = ds.filter(col("age") >= 30).group_by("sex").mean("cost").widget()
    assert "mean(cost) where age &gt;= 30 by sex" in widget.children[2].value


def test_results_plot_estimates_with_interval_bars(ds):
    import matplotlib

    matplotlib.use("Agg")
    table = ds.group_by("region").agg(n=wb.count(), cost=wb.mean("cost")).release(epsilon=0.2)
    figure = table.wb.plot()
    assert len(figure.axes) == 2
    for ax in figure.axes:
        assert ax.containers and any(type(c).__name__ == "ErrorbarContainer" for c in ax.containers)


def test_logistic_regression_runs_through_the_learning_channel(ds):
    before = spent(ds)
    fit = ds.logistic_regression(y="readmitted", x=["age", "bmi"]).release(epsilon=1.0, delta=1e-6, rounds=2)
    assert list(fit["term"]) == ["age", "bmi", "intercept"]
    assert fit.set_index("term").loc["age", "estimate"] > 0  # readmission rises with age in the demo data
    assert spent(ds) == pytest.approx(before + 1.0)  # charged by the FL channel's gate, once for the job
    with pytest.raises(wb.NotSupported):
        ds.filter(col("age") > 3).logistic_regression(y="readmitted", x=["age"])


def test_legacy_quantile_kind_has_an_interval_and_replays_identically(shared_node, ds, truth):
    """An old client's ``kind="quantile"`` (pure DP, public keys) now gets lower/upper; same wire table shape."""
    headers = {"Authorization": f"Bearer {shared_node.analyst_token}"}
    body = {"query": {"kind": "quantile", "column": "age", "quantile": 0.9, "by": ["sex"]}, "epsilon": 0.5}
    url = f"{shared_node.url}/v1/datasets/patients/dp/release"
    first = httpx.post(url, headers=headers, json=body, timeout=120)
    assert first.status_code == 200, first.text
    table = first.json()["table"]
    assert table["columns"] == ["sex", "estimate", "lower", "upper"]
    for sex, estimate, lower, upper in table["data"]:
        ages = sorted(truth.filter(pl.col("sex") == sex)["age"].to_list())
        true = ages[int(np.ceil(0.9 * len(ages))) - 1]  # the least v with #(age <= v) >= 0.9 n
        assert near_interval(lower, upper, true) and lower <= estimate <= upper, (sex, estimate, lower, upper, true)
    before = spent(ds)
    again = httpx.post(url, headers=headers, json=body, timeout=120).json()
    assert again["replayed"] and again["table"] == table and spent(ds) == before
    # With public keys the node uses no delta (it charges delta 0), so a delta changes nothing here either.
    approximate = httpx.post(url, headers=headers, timeout=120, json={**body, "epsilon": 0.4, "delta": 1e-6}).json()
    assert approximate["delta_charged"] == 0 and approximate["table"]["data"][0][2] is not None, approximate
