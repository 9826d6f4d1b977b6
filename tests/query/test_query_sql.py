"""Analyst SQL: parsed with sqlglot into the same plan as ds.agg, refusing every other construct by name."""

from __future__ import annotations

import pytest

from workbench import col
from workbench.query.language import canonical
from workbench.query.sql import compile_sql
from workbench.query.text import readable
from workbench.errors import InvalidQuery
from workbench.protocol import DPQuery


def q(sql: str) -> DPQuery:
    return canonical(compile_sql(sql, "patients"))


def test_sql_compiles_to_the_same_plan_as_agg():
    sql = q("SELECT sex, AVG(cost) AS cost, COUNT(*) AS n FROM patients WHERE age >= 65 GROUP BY sex")
    agg = canonical(DPQuery.model_validate({
        "kind": "agg", "by": ["sex"], "where": (col("age") >= 65).tree,
        "aggs": [{"name": "n", "stat": "count"}, {"name": "cost", "stat": "mean", "column": "cost"}]}))
    assert sql == agg
    assert readable(sql) == "mean(cost), count(*) where age >= 65 by sex"


def test_spellings_of_one_question_are_one_question():
    base = q("SELECT sex, AVG(cost) AS cost, COUNT(*) AS n FROM patients WHERE age >= 65 AND region = 'north' "
             "GROUP BY sex")
    for other in ["select count(*) as n, avg(cost) as cost, sex from patients where region='north' and 65<=age "
                  "group by sex",
                  "SELECT\n  sex,\n  avg(cost) cost,\n  COUNT(*) n\nFROM patients\nWHERE (age >= 65.0) AND "
                  "(region = 'north')\nGROUP BY sex;"]:
        assert q(other) == base


def test_expressions_map_one_to_one():
    sql = q("SELECT COUNT(*) AS n, SUM(LEAST(GREATEST(cost / visits, 0), 5000)) AS cpv, "
            "PERCENTILE_CONT(0.9) WITHIN GROUP (ORDER BY age) AS p90, MEDIAN(bmi) AS mb, STDDEV(cost) AS sd "
            "FROM patients WHERE diagnosis IN ('asthma', 'diabetes') AND age BETWEEN 18 AND 65 "
            "AND bmi IS NOT NULL AND NOT smoker AND COALESCE(visits, 0) > 2 AND ABS(age - 40) < 20 "
            "AND CAST(visits AS DOUBLE) * 2 >= 1")
    text = readable(sql)
    for part in ["cpv_value = clip(cost / visits, 0, 5000)", "quantile(age, 0.9)", "quantile(bmi, 0.5)",
                 "std(cost)", "diagnosis in ('asthma', 'diabetes')", "age between 18 and 65",
                 "bmi is not null", "not smoker", "fill_null(visits, 0) > 2", "abs(age - 40) < 20",
                 "float(visits) * 2 >= 1"]:
        assert part in text, (part, text)


@pytest.mark.parametrize("sql,construct", [
    ("SELECT * FROM patients", "SELECT *"),
    ("SELECT COUNT(*) FROM patients a JOIN patients b ON a.age = b.age", "JOIN"),
    ("SELECT COUNT(*) FROM patients WHERE age IN (SELECT age FROM patients)", "sub-queries"),
    ("SELECT COUNT(*) FROM (SELECT age FROM patients) t", "sub-queries"),
    ("SELECT AVG(cost) OVER (PARTITION BY sex) FROM patients", "window functions"),
    ("WITH t AS (SELECT age FROM patients) SELECT COUNT(*) FROM patients", "WITH (CTE)"),
    ("SELECT COUNT(*) FROM patients UNION SELECT COUNT(*) FROM patients", "UNION"),
    ("SELECT my_udf(cost) AS x FROM patients", "function MY_UDF()"),
    ("SELECT MAX(cost) AS m FROM patients", "MAX(cost)"),
    ("SELECT COUNT(*) FROM patients GROUP BY sex HAVING COUNT(*) > 3", "HAVING"),
    ("SELECT COUNT(*) FROM patients ORDER BY 1", "ORDER BY"),
    ("SELECT COUNT(*) FROM patients LIMIT 1", "LIMIT"),
    ("SELECT COUNT(DISTINCT patient_id) FROM patients", "DISTINCT"),
    ("SELECT COUNT(age) FROM patients", "COUNT(column)"),
    ("SELECT age, COUNT(*) FROM patients", "without GROUP BY"),
    ("SELECT COUNT(*) FROM patients; SELECT COUNT(*) FROM patients", "several statements"),
    ("SELECT COUNT(*) FROM patients WHERE CASE WHEN age > 3 THEN TRUE END", "CASE"),
])
def test_other_constructs_are_refused_by_name(sql, construct):
    with pytest.raises(InvalidQuery) as info:
        compile_sql(sql, "patients")
    assert info.value.code == "unsupported_sql"
    assert construct in info.value.message


@pytest.mark.parametrize("sql,code", [
    ("SELEC COUNT(*) FROM patients", "bad_sql"),
    ("SELECT COUNT(* FROM patients", "bad_sql"),
    ("SELECT COUNT(*) FROM other_table", "bad_sql"),
    ("SELECT COUNT(*) FROM public.patients", "bad_sql"),
    ("SELECT age FROM patients GROUP BY age", "bad_sql"),
    ("SELECT PERCENTILE_CONT(1.5) WITHIN GROUP (ORDER BY age) FROM patients", "bad_quantile"),
])
def test_malformed_sql_has_a_code(sql, code):
    with pytest.raises(InvalidQuery) as info:
        compile_sql(sql, "patients")
    assert info.value.code == code
