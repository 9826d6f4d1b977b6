"""Prometheus metrics: what an owner's Prometheus would scrape, and who may scrape it."""

from __future__ import annotations

import re

import httpx
import pytest

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_]\w*="(?:[^"\\]|\\.)*",?)*\})? (-?[0-9.e+-]+|NaN|\+Inf|-Inf)$')


def parse(text: str) -> dict[str, list[tuple[dict, float]]]:
    """A strict little parser of the Prometheus text format (every line must be valid)."""
    out: dict[str, list[tuple[dict, float]]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert not line.startswith("# ") or line.split()[1] in ("HELP", "TYPE", "collector"), line
            continue
        m = SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        out.setdefault(m.group(1), []).append((labels, float(m.group(3))))
    return out


def value(samples, name: str, **labels) -> float:
    return sum(v for lab, v in samples.get(name, []) if all(lab.get(k) == w for k, w in labels.items()))


def test_metrics_count_requests_refusals_latency_and_budget(app_client, monkeypatch):
    from workbench.channels.dp import fast_replay

    answered_fast = []
    original = fast_replay.ReplayFastPath._replay

    async def spy(self, *args):
        answer = await original(self, *args)
        answered_fast.append(answer is not None)
        return answer

    monkeypatch.setattr(fast_replay.ReplayFastPath, "_replay", spy)
    c = app_client
    body = {"query": {"kind": "count"}, "epsilon": 0.25}
    assert c.post("/v1/datasets/patients/dp/release", json=body, headers=c.analyst).status_code == 200
    # Replays until one is answered by the ASGI fast path (a token verified moments ago, the answer in memory):
    # whichever path answers, a replay is counted under the release route.
    for _ in range(50):
        assert c.post("/v1/datasets/patients/dp/release", json=body, headers=c.analyst).json()["replayed"]
        if answered_fast[-1]:
            break
    assert answered_fast[-1], "no replay took the fast path"
    releases = len(answered_fast)  # the first release and every replay (each passed the fast path's check)
    assert c.post("/v1/datasets/patients/dp/release", json={**body, "epsilon": 50}, headers=c.analyst).status_code == 422
    assert c.get("/v1/datasets/patients/rows", headers=c.analyst).status_code == 403
    assert c.get("/v1/no/such/../path/%2e%2e", headers=c.analyst).status_code == 404
    assert c.get("/v1/me", headers={"Authorization": "Bearer forged"}).status_code == 401

    r = c.get("/metrics", headers=c.owner)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    s = parse(r.text)
    release = "/v1/datasets/{name}/dp/release"
    assert value(s, "workbench_requests_total", route=release, status="200") == releases
    assert value(s, "workbench_requests_total", route="unmatched", status="200") == 0
    assert value(s, "workbench_refusals_total", route=release, code="bad_epsilon") == 1
    assert value(s, "workbench_refusals_total", code="privacy_violation") == 1
    assert value(s, "workbench_refusals_total", code="not_authenticated") == 1
    # Raw paths never become labels (an attacker cannot create series).
    assert value(s, "workbench_requests_total", route="unmatched", status="404") == 1
    assert not any("no/such" in str(lab) for samples in s.values() for lab, _ in samples)
    assert value(s, "workbench_request_duration_seconds_count", route=release) == releases + 1
    buckets = [v for lab, v in s["workbench_request_duration_seconds_bucket"] if lab["route"] == release]
    assert buckets == sorted(buckets) and buckets[-1] == releases + 1  # cumulative, +Inf = count
    assert value(s, "workbench_dataset_epsilon_spent", dataset="patients") == pytest.approx(0.25)
    assert value(s, "workbench_dataset_epsilon_cap", dataset="patients") == pytest.approx(50.0)
    assert value(s, "workbench_charges", dataset="patients", state="committed") == 1
    assert value(s, "workbench_audit_records") > 5
    assert value(s, "workbench_up") == 1 and value(s, "workbench_datasets", state="serving") == 2
    assert "workbench_fl_supernode_configured" in s and value(s, "workbench_fl_supernode_processes") == 0
    assert all(v == 1 for _, v in s["workbench_collector_up"]), "a channel's collector failed"
    # The same text under the versioned prefix; and it is in the API catalogue.
    assert parse(c.get("/v1/metrics", headers=c.owner).text)["workbench_up"]
    assert "/v1/metrics" in c.get("/v1/openapi.json").json()["paths"]


def test_a_failing_channel_collector_is_reported_not_fatal(app_client, monkeypatch):
    from workbench.node import metrics

    def broken(_service):
        raise RuntimeError("boom")

    monkeypatch.setattr(metrics, "_collectors", [*metrics._collectors, broken])
    s = parse(app_client.get("/metrics", headers=app_client.owner).text)
    assert value(s, "workbench_up") == 1
    assert value(s, "workbench_collector_up", collector=broken.__qualname__) == 0


def test_metrics_need_owner_or_auditor(app_client):
    c = app_client
    assert c.get("/metrics").status_code == 401
    r = c.get("/metrics", headers=c.analyst)
    assert r.status_code == 403 and r.json()["code"] == "not_authorized"
    from workbench.node import admin

    token = admin.add_user(c.service.store, c.service.authority, "prometheus", "auditor")
    assert c.get("/v1/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200


def test_metrics_carry_no_row_values(app_client):
    """Nothing in the exposition comes from the rows: no patient ids, no per-row values."""
    c = app_client
    c.post("/v1/datasets/patients/dp/release", json={"query": {"kind": "mean", "column": "age"}, "epsilon": 0.5},
           headers=c.analyst)
    text = c.get("/metrics", headers=c.owner).text
    assert not re.search(r"\b[A-C]\d{7}\b", text)


def test_metrics_over_a_real_node(shared_node):
    """A real uvicorn process, scraped as Prometheus would (bearer token)."""
    h = {"Authorization": f"Bearer {shared_node.owner_token}"}
    httpx.get(shared_node.url + "/v1/health")
    r = httpx.get(shared_node.url + "/metrics", headers=h, timeout=30)
    s = parse(r.text)
    assert value(s, "workbench_requests_total", route="/v1/health") >= 1
    released = httpx.post(shared_node.url + "/v1/datasets/patients/dp/release", headers=h, timeout=120,
                          json={"query": {"kind": "mean", "column": "age"}, "epsilon": 0.01})
    assert released.status_code in (200, 403), released.text  # owners may not hold a grant; the scrape is what counts
    s = parse(httpx.get(shared_node.url + "/metrics", headers=h, timeout=30).text)
    assert value(s, "workbench_requests_total", route="/v1/datasets/{name}/dp/release") >= 1
    assert value(s, "workbench_worker_crashes_total") == 0
