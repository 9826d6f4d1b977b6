"""The node's one release policy: the same epsilon floor and cap on every channel, the ledger's tolerance."""

from __future__ import annotations

import pytest

from workbench.errors import BudgetExceeded, InvalidQuery

X = ["age", "bmi"]
TINY = [5e-324, 1e-300, 1e-9]


def _grant(service):
    from workbench.demo.nodes import DEMO_ANALYST
    from workbench.node.store import Grant

    with service.store.transaction() as session:
        grant = session.query(Grant).filter_by(user_name=DEMO_ANALYST, dataset="patients").one()
        return grant.id, grant.epsilon_spent


def _requests(epsilon: float) -> list[tuple[str, dict]]:
    """One request per channel that prices a release, all at ``epsilon``."""
    return [
        ("/v1/datasets/patients/dp/preview", {"query": {"kind": "count"}, "epsilon": epsilon}),
        ("/v1/datasets/patients/dp/release", {"query": {"kind": "count"}, "epsilon": epsilon}),
        ("/v1/datasets/patients/synth/preview", {"spec": {"method": "mst", "rows": 10}, "epsilon": epsilon}),
        ("/v1/datasets/patients/synth/jobs", {"spec": {"method": "mst", "rows": 10}, "epsilon": epsilon}),
        ("/v1/datasets/patients/he/preview", {"op": {"kind": "sum", "columns": ["age"]}, "epsilon": epsilon,
                                              "parties": 3}),
        ("/v1/datasets/patients/fl/jobs", {"spec": {"model": "logistic_regression", "y": "readmitted", "x": X,
                                                    "rounds": 2, "epsilon": epsilon, "delta": 1e-6}}),
    ]


@pytest.mark.parametrize("epsilon", TINY)
def test_every_channel_refuses_a_vanishing_epsilon_for_free(app_client, epsilon):
    """A loss below the floor is a clear 422 ``bad_epsilon`` on every channel: never a 500, never a charge."""
    _, before = _grant(app_client.service)
    for path, payload in _requests(epsilon):
        r = app_client.post(path, json=payload, headers=app_client.analyst)
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.json()["code"] == "bad_epsilon", (path, r.json())
    assert _grant(app_client.service)[1] == before


def test_every_channel_refuses_more_than_the_per_release_cap(app_client):
    """The owner's ``max_epsilon_per_release`` (10 in the demo config) holds on every channel."""
    limit = app_client.service.config.node.max_epsilon_per_release
    for path, payload in _requests(limit * 1.5):
        r = app_client.post(path, json=payload, headers=app_client.analyst)
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.json()["code"] == "bad_epsilon", (path, r.json())


def test_check_loss_bounds(service):
    from workbench.node import policy

    policy.check_loss(service, policy.MIN_EPSILON)
    policy.check_loss(service, 1.0, 0.0)
    policy.check_loss(service, 1.0, policy.MIN_DELTA)
    policy.check_loss(service, None)  # a release without a privacy loss (SDV review, mocks) is not priced here
    for epsilon, delta in [(policy.MIN_EPSILON / 2, 0.0), (float("nan"), 0.0), (float("inf"), 0.0),
                           (1.0, policy.MIN_DELTA / 2), (1.0, -1e-3), (1.0, float("nan"))]:
        with pytest.raises(InvalidQuery) as info:
            policy.check_loss(service, epsilon, delta)
        assert info.value.code == "bad_epsilon"


def test_precheck_uses_the_ledgers_tolerance_and_audits_refusals(service):
    """Ten releases of 0.1 fit a budget of 1.0 in the pre-check exactly as in the ledger; one more is refused
    before anything runs, and the refusal is in the audit log."""
    from sqlalchemy import select

    from workbench.demo.nodes import ensure_accounts
    from workbench.node import admin, policy
    from workbench.node.auth import Principal
    from workbench.node.ledger import Cost
    from workbench.node.store import AuditRecord

    ensure_accounts(service)
    admin.add_user(service.store, service.authority, "pat", "analyst", actor="test")
    grant = admin.add_grant(service.store, "pat", "patients", "tolerance", epsilon=1.0, actor="test")
    pat = Principal(name="pat", role="analyst")
    entry = service.catalog.get("patients")
    for i in range(10):
        assert policy.precheck_budget(service, pat, entry, None, 0.1, 0.0, channel="dp", kind="count") == grant.grant_id
        service.gate.release(pat, entry, "dp", "count", {"i": i}, Cost(0.1, 0.0), compute=lambda: {"ok": True})
    with pytest.raises(BudgetExceeded) as info:
        policy.precheck_budget(service, pat, entry, None, 0.1, 0.0, channel="dp", kind="count")
    assert info.value.code == "budget_exceeded"
    with service.store.transaction("read") as session:
        refusals = session.execute(select(AuditRecord).where(AuditRecord.actor == "pat",
                                                             AuditRecord.action == "refusal")).scalars().all()
    assert len(refusals) == 1
