"""Requests, approvals, reviews, audit and the permission explainer, on SQLite and on PostgreSQL."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest
from starlette.testclient import TestClient

from workbench.node import admin, audit, governance
from workbench.server import create_app
from workbench.node.auth import Principal
from workbench.node.ledger import Cost
from workbench.node.store import Charge, DatasetBudget


@pytest.fixture
def api(backend_service):
    svc = backend_service
    tokens = {"analyst": svc.accounts.analyst_token, "owner": svc.accounts.owner_token}
    for name, role in (("carol", "analyst"), ("olga", "owner"), ("audrey", "auditor")):
        tokens[name] = admin.add_user(svc.store, svc.authority, name, role)
    client = TestClient(create_app(svc), raise_server_exceptions=False)

    def call(user, method, path, **kw):
        return client.request(method, path, headers={"Authorization": f"Bearer {tokens[user]}"}, **kw)

    call.service = svc
    yield call
    client.close()


COUNT = {"query": {"kind": "count"}, "epsilon": 0.5}


def test_request_approve_release_audit_chain(api):
    r = api("carol", "POST", "/v1/datasets/patients/dp/release", json=COUNT)
    assert r.status_code == 403 and r.json()["code"] == "no_grant"
    r = api("carol", "POST", "/v1/datasets/patients/requests",
            json={"purpose": "readmission study", "epsilon": 2.0, "note": "thesis chapter 3"})
    assert r.status_code == 200, r.text
    req = r.json()
    assert req["status"] == "pending"
    # The analyst sees only their own requests; the owner sees all.
    assert [x["request_id"] for x in api("carol", "GET", "/v1/requests").json()] == [req["request_id"]]
    assert api("analyst", "GET", "/v1/requests").json() == []
    assert len(api("owner", "GET", "/v1/requests?status=pending").json()) == 1
    r = api("owner", "POST", f"/v1/requests/{req['request_id']}/approve",
            json={"epsilon": 1.0, "expires_days": 30, "reason": "smaller budget to start"})
    assert r.status_code == 200, r.text
    approved = r.json()
    assert approved["status"] == "approved" and approved["grant_id"]
    status = api("carol", "GET", f"/v1/requests/{req['request_id']}").json()
    assert status["status"] == "approved" and status["reason"] == "smaller budget to start"
    r = api("carol", "POST", "/v1/datasets/patients/dp/release", json=COUNT)
    assert r.status_code == 200, r.text
    assert r.json()["grant_id"] == approved["grant_id"], "every release names the grant it spends"
    assert api("carol", "GET", "/v1/datasets/patients/budget").json()["epsilon_left"] == pytest.approx(0.5)
    # The audit log tells the whole story, in order, and its chain holds.
    records = [json.loads(line) for line in api("audrey", "GET", "/v1/audit").text.splitlines()]
    story = [(r["action"], r["actor"]) for r in records if r["actor"] in ("carol", "owner")
             and r["action"] in ("request_submit", "request_approve", "grant_add", "reserve", "release")]
    assert story == [("request_submit", "carol"), ("request_approve", "owner"), ("grant_add", "owner"),
                     ("reserve", "carol"), ("release", "carol")]
    release = next(r for r in records if r["action"] == "release" and r["actor"] == "carol")
    assert release["details"]["grant_id"] == approved["grant_id"]
    assert api("audrey", "GET", "/v1/audit/verify").json()["ok"]
    assert audit.verify(api.service.store).ok
    # Analysts read only their own records.
    mine = [json.loads(line) for line in api("carol", "GET", "/v1/audit").text.splitlines()]
    assert mine and all(r["actor"] == "carol" for r in mine)


def test_nobody_approves_their_own_request(api):
    req = api("owner", "POST", "/v1/datasets/patients/requests", json={"purpose": "quality audit", "epsilon": 1}).json()
    r = api("owner", "POST", f"/v1/requests/{req['request_id']}/approve", json={})
    assert r.status_code == 403 and r.json()["code"] == "self_approval"
    r = api("analyst", "POST", f"/v1/requests/{req['request_id']}/approve", json={})
    assert r.status_code == 403 and r.json()["code"] == "not_authorized"
    r = api("olga", "POST", f"/v1/requests/{req['request_id']}/approve", json={})
    assert r.status_code == 200 and r.json()["decided_by"] == "olga"
    r = api("olga", "POST", f"/v1/requests/{req['request_id']}/approve", json={})
    assert r.status_code == 422 and r.json()["code"] == "not_pending"


def test_denied_request_cannot_release(api):
    req = api("carol", "POST", "/v1/datasets/patients/requests", json={"purpose": "marketing", "epsilon": 5}).json()
    r = api("owner", "POST", f"/v1/requests/{req['request_id']}/deny", json={"reason": "not a permitted purpose"})
    assert r.status_code == 200 and r.json()["status"] == "denied"
    assert api("carol", "GET", f"/v1/requests/{req['request_id']}").json()["reason"] == "not a permitted purpose"
    r = api("carol", "POST", "/v1/datasets/patients/dp/release", json=COUNT)
    assert r.status_code == 403 and r.json()["code"] == "no_grant"
    r = api("owner", "POST", f"/v1/requests/{req['request_id']}/approve", json={})
    assert r.status_code == 422, "a denied request stays denied"


def test_approval_cannot_exceed_the_request_and_open_data_needs_none(api):
    req = api("carol", "POST", "/v1/datasets/patients/requests", json={"purpose": "study", "epsilon": 1}).json()
    r = api("owner", "POST", f"/v1/requests/{req['request_id']}/approve", json={"epsilon": 3})
    assert r.status_code == 422
    r = api("carol", "POST", "/v1/datasets/iris/requests", json={"purpose": "study", "epsilon": 1})
    assert r.status_code == 422
    r = api("carol", "POST", "/v1/datasets/patients/requests", json={"purpose": "x", "epsilon": -1})
    assert r.status_code == 422 and r.json()["code"] == "invalid_body"


def test_review_queue(api):
    svc = api.service
    entry = svc.catalog.get("patients")
    carol = Principal("carol", "analyst")
    admin.add_grant(svc.store, "carol", "patients", "synthetic data for teaching", epsilon=1.0)
    held = governance.submit_review(svc.store, carol, entry, "synth", "sdv_real_rows", {"rows": 2},
                                    summary={"rows": 2, "columns": ["age"], "privacy": {"dcr_min": 0.4}},
                                    result={"table": {"columns": ["age"], "data": [[41], [57]]}})
    rid = held.review_id
    # The analyst sees the status, not the held output; collecting before approval is refused.
    mine = api("carol", "GET", "/v1/reviews").json()
    assert mine[0]["status"] == "pending" and mine[0]["summary"] is None
    r = api("carol", "POST", f"/v1/reviews/{rid}/collect")
    assert r.status_code == 403 and r.json()["code"] == "not_approved"
    # The owner sees what would leave and its privacy metrics; the requester cannot approve it.
    owner_view = api("owner", "GET", f"/v1/reviews/{rid}").json()
    assert owner_view["summary"]["privacy"]["dcr_min"] == 0.4
    r = api("owner", "POST", f"/v1/reviews/{rid}/approve", json={"reason": "metrics fine"})
    assert r.status_code == 200 and r.json()["status"] == "approved"
    r = api("carol", "POST", f"/v1/reviews/{rid}/collect")
    assert r.status_code == 200 and r.json()["result"]["table"]["data"] == [[41], [57]]
    assert api("analyst", "POST", f"/v1/reviews/{rid}/collect").status_code == 404, "only the requester collects"
    actions = [r["action"] for r in audit.records(svc.store, actor=None)]
    assert {"review_submit", "review_approve", "release"} <= set(actions)
    # A rejected review never leaves.
    other = governance.submit_review(svc.store, carol, entry, "synth", "sdv_real_rows", {"rows": 3}, {"rows": 3},
                                     {"table": {"columns": [], "data": []}})
    api("olga", "POST", f"/v1/reviews/{other.review_id}/reject", json={"reason": "too close to real rows"})
    assert api("carol", "POST", f"/v1/reviews/{other.review_id}/collect").status_code == 403


def test_explain_why(api):
    ok = api("analyst", "GET", "/v1/permissions/explain?dataset=patients&epsilon=1").json()
    assert ok["allowed"] and ok["code"] is None
    too_much = api("analyst", "GET", "/v1/permissions/explain?dataset=patients&epsilon=50").json()
    assert not too_much["allowed"] and too_much["code"] == "budget_exceeded"
    none = api("carol", "GET", "/v1/permissions/explain?dataset=patients&epsilon=1").json()
    assert none["code"] == "no_grant"
    assert api("carol", "GET", "/v1/permissions/explain?dataset=patients&user=analyst").status_code == 403
    about = api("owner", "GET", "/v1/permissions/explain?dataset=patients&user=audrey").json()
    assert about["code"] == "not_authorized"


def test_64_concurrent_releases_from_8_analysts_never_pass_the_cap(backend_service):
    """The ledger itself, on each backend: 8 analysts x 8 releases of epsilon 1 against a dataset cap of 50."""
    svc = backend_service
    entry = svc.catalog.get("patients")
    names = [f"a{i}" for i in range(8)]
    for name in names:
        admin.add_user(svc.store, svc.authority, name, "analyst")
        admin.add_grant(svc.store, name, "patients", "load", epsilon=10.0)

    def one(args):
        name, i = args
        try:
            svc.gate.release(Principal(name, "analyst"), entry, "dp", "count", {"kind": "count", "i": i},
                             Cost(1.0), compute=lambda: {"ok": True})
            return "released"
        except Exception as exc:  # noqa: BLE001
            return getattr(exc, "code", repr(exc))

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, [(n, i) for n in names for i in range(8)]))
    assert results.count("released") == 50
    assert set(results) == {"released", "dataset_budget_exceeded"}
    with svc.store.transaction() as session:
        cap = session.get(DatasetBudget, "patients")
        assert cap.epsilon_spent == pytest.approx(50.0) and cap.epsilon_spent <= cap.epsilon_cap + 1e-9
        assert sum(c.epsilon for c in session.query(Charge).all()) == pytest.approx(50.0)
    assert audit.verify(svc.store).ok


def test_real_node_on_postgres_64_concurrent_http_releases(tmp_path, pg_server):
    """A real node process on PostgreSQL: 8 analysts x 8 concurrent HTTP releases against a cap of 50."""
    import uuid

    import workbench as wb
    from tests import pg
    from tests.conftest import launch

    url = pg.fresh_database(pg_server, f"wb_{uuid.uuid4().hex[:12]}")
    node = launch(tmp_path, database_url=url, workers=2)
    try:
        owner = wb.connect(node.url, token=node.owner_token)
        tokens = []
        for i in range(8):
            made = owner.request("POST", "/users", json={"name": f"p{i}", "role": "analyst"})
            owner.request("POST", "/grants", json={"user": f"p{i}", "dataset": "patients", "purpose": "load",
                                                   "epsilon": 10})
            tokens.append(made["token"])
        handles = [wb.connect(node.url, token=t).dataset("patients") for t in tokens]

        def one(args):
            who, i = args
            try:
                handles[who].histogram("age", bins=i + 2).release(epsilon=1.0)
                return "released"
            except wb.BudgetExceeded as exc:
                return exc.code

        with ThreadPoolExecutor(64) as pool:
            results = list(pool.map(one, [(w, i) for w in range(8) for i in range(8)]))
        assert results.count("released") == 50 and set(results) == {"released", "dataset_budget_exceeded"}
        verify = owner.request("GET", "/audit/verify")
        assert verify["ok"]
    finally:
        node.stop()
