"""Crafted requests get a clear 4xx with a stable code; no response carries a private value."""

from __future__ import annotations

import json

import polars as pl
import pytest

RELEASE = "/v1/datasets/patients/dp/release"
PREVIEW = "/v1/datasets/patients/dp/preview"


def body(query: dict, epsilon=0.1, **extra) -> dict:
    return {"query": query, "epsilon": epsilon, **extra}


CRAFTED = [
    ("extra field in query", body({"kind": "count", "expr": "pl.col('age')"}), "invalid_body"),
    ("extra top-level field", body({"kind": "count"}, plan="gASVAAAA"), "invalid_body"),
    ("nested expression as column", body({"kind": "sum", "column": {"op": "add", "args": ["age", 1]}}), "invalid_body"),
    ("path in column", body({"kind": "sum", "column": "../../etc/passwd"}), "invalid_body"),
    ("sql in column", body({"kind": "sum", "column": "age; DROP TABLE grants; --"}), "invalid_body"),
    ("quote in column", body({"kind": "mean", "column": "age\" OR 1=1"}), "invalid_body"),
    ("unknown column", body({"kind": "mean", "column": "salary"}), "unknown_column"),
    ("id column as group", body({"kind": "count", "by": ["patient_id"]}), "needs_delta"),
    ("mean of category", body({"kind": "mean", "column": "sex"}), "wrong_type"),
    ("huge epsilon", body({"kind": "count"}, epsilon=1e308), "invalid_body"),
    ("negative epsilon", body({"kind": "count"}, epsilon=-1), "invalid_body"),
    ("zero epsilon", body({"kind": "count"}, epsilon=0), "invalid_body"),
    ("huge delta", body({"kind": "count"}, delta=0.5), "invalid_body"),
    ("quantile out of range", body({"kind": "quantile", "column": "age", "quantile": 1.5}), "invalid_body"),
    ("too many bins", body({"kind": "histogram", "column": "age", "bins": 10**9}), "invalid_query"),
    ("unsorted bin edges", body({"kind": "histogram", "column": "age", "bins": [5, 1, 9]}), "bad_bounds"),
    ("wrong type for epsilon", body({"kind": "count"}, epsilon="lots"), "invalid_body"),
    ("unknown kind", body({"kind": "raw_rows"}), "invalid_body"),
    ("bad request id", body({"kind": "count"}, request_id="../x"), "invalid_body"),
    ("too many group columns", body({"kind": "count", "by": ["sex", "region", "diagnosis", "smoker", "readmitted"]}),
     "invalid_body"),
]


@pytest.mark.parametrize("name,payload,code", CRAFTED, ids=[c[0] for c in CRAFTED])
def test_crafted_specs_are_refused(app_client, name, payload, code):
    for path in (PREVIEW, RELEASE):
        r = app_client.post(path, json=payload, headers=app_client.analyst)
        assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
        assert r.json()["code"] == code, (name, r.json())
        assert r.json()["message"]


def test_nan_and_infinity_literals(app_client):
    for literal in ("NaN", "Infinity", "-Infinity", "1e400"):
        raw = '{"query": {"kind": "histogram", "column": "age", "bins": [0, %s]}, "epsilon": 0.1}' % literal
        r = app_client.post(RELEASE, content=raw, headers={**app_client.analyst, "content-type": "application/json"})
        assert r.status_code == 422 and r.json()["code"] == "invalid_body"
        raw = '{"query": {"kind": "count"}, "epsilon": %s}' % literal
        r = app_client.post(RELEASE, content=raw, headers={**app_client.analyst, "content-type": "application/json"})
        assert r.status_code == 422


def test_malformed_and_deep_json(app_client):
    r = app_client.post(RELEASE, content="{not json", headers={**app_client.analyst, "content-type": "application/json"})
    assert r.status_code == 422 and r.json()["code"] == "invalid_body"
    deep = "[" * 100_000 + "]" * 100_000
    r = app_client.post(RELEASE, content=deep, headers={**app_client.analyst, "content-type": "application/json"})
    assert 400 <= r.status_code < 500


def test_ten_megabyte_body_is_refused(app_client):
    big = json.dumps(body({"kind": "count"}, padding="x" * 10_000_000))
    r = app_client.post(RELEASE, content=big, headers={**app_client.analyst, "content-type": "application/json"})
    assert r.status_code == 413 and r.json()["code"] == "payload_too_large"


def test_unknown_dataset_and_traversal_names(app_client):
    for name in ("nope", "..%2F..%2Fetc%2Fpasswd", "patients%00", "iris;drop"):
        r = app_client.post(f"/v1/datasets/{name}/dp/release", json=body({"kind": "count"}), headers=app_client.analyst)
        assert r.status_code == 404, (name, r.text)
        assert r.json()["code"] in ("unknown_dataset", "not_found")


def test_refusals_cost_nothing(app_client):
    for _, payload, _ in CRAFTED:
        app_client.post(RELEASE, json=payload, headers=app_client.analyst)
    r = app_client.get("/v1/datasets/patients/budget", headers=app_client.analyst)
    assert r.json()["epsilon_spent"] == 0.0


def test_no_response_contains_a_private_value(app_client):
    """Sweep every endpoint an analyst can call: no patient id and no exact private row ever comes back."""
    service = app_client.service
    frame = pl.read_parquet(service.config.datasets["patients"].path)
    ids = set(frame["patient_id"].to_list())
    costs = {f"{c:.2f}" for c in frame["cost"].head(2000).to_list()}
    texts = []
    calls = [("GET", "/v1/catalog", None), ("GET", "/v1/datasets/patients", None),
             ("GET", "/v1/datasets/patients/rows", None), ("GET", "/v1/history", None),
             ("GET", "/v1/audit", None), ("GET", "/v1/grants", None)]
    for q in ({"kind": "count"}, {"kind": "mean", "column": "cost"}, {"kind": "histogram", "column": "cost"},
              {"kind": "count", "by": ["patient_id"]}, {"kind": "quantile", "column": "cost", "quantile": 0.5},
              {"kind": "sum", "column": "nope"}):
        calls.append(("POST", PREVIEW, body(q, epsilon=1.0)))
        calls.append(("POST", RELEASE, body(q, epsilon=1.0)))
        calls.append(("POST", RELEASE, body(q, epsilon=1.0, delta=1e-6)))
    for method, path, payload in calls:
        r = app_client.request(method, path, json=payload, headers=app_client.analyst)
        assert r.status_code < 500, (path, r.text)
        texts.append(r.text)
    blob = "\n".join(texts)
    leaked_ids = [i for i in ids if i in blob]
    assert not leaked_ids, leaked_ids[:5]
    # Exact two-decimal costs would only appear if raw values leaked (DP outputs are not rounded to cents).
    tokens = set(blob.replace(",", " ").replace("[", " ").replace("]", " ").split())
    assert not (tokens & costs)
