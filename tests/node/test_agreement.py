"""Sharing agreements: each clause refused by name, at grant time and at the gate (in-process node service).

The real OpenID provider scenario (claims, directory, DCAT) is in tests/node/test_ecosystem.py.
"""

from __future__ import annotations

import tomllib
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone

import pytest
import tomli_w

from workbench.errors import NotAuthorized, WorkbenchError
from workbench.node import admin, audit, governance
from workbench.node.agreement import AgreementConfig, check_grant, record_claims
from workbench.node.auth import Principal
from workbench.node.ledger import Cost
from workbench.node.service import NodeService
from workbench.node.settings import NodeConfig
from workbench.protocol import AccessRequestBody, ApproveBody

from tests.conftest import make_config

TERMS = {"purposes": ["diabetes study"], "channels": ["dp"], "expires": "2099-12-31",
         "max_grant": {"epsilon": 2.0, "delta": 1e-6}, "grantee_claims": {"country": ["NL"]}}


@pytest.fixture
def svc(tmp_path):
    path = make_config(tmp_path)
    raw = tomllib.loads(path.read_text())
    raw["datasets"]["patients"]["agreement"] = TERMS
    path.write_text(tomli_w.dumps(raw))
    service = NodeService(NodeConfig.load(path), start_workers=False)
    admin.add_user(service.store, service.authority, "bob", "analyst")
    admin.add_user(service.store, service.authority, "olga", "owner")
    yield service
    service.close()


def grant(svc, user="bob", purpose="diabetes study", epsilon=1.0, **kw):
    return admin.add_grant(svc.store, user, "patients", purpose, epsilon, agreement=svc.config.datasets[
        "patients"].agreement, **kw)


def clause_of(excinfo) -> str:
    assert excinfo.value.code == "agreement_refused"
    assert f"'{excinfo.value.details['clause']}'" in excinfo.value.message, "the message names the clause"
    return excinfo.value.details["clause"]


def test_grants_are_checked_clause_by_clause(svc):
    with pytest.raises(NotAuthorized) as no_claims:
        grant(svc)
    assert clause_of(no_claims) == "grantee_claims" and "no identity-provider claims" in no_claims.value.message
    with svc.store.transaction() as session:
        record_claims(session, "bob", {"country": "DE"})
    with pytest.raises(NotAuthorized) as wrong_country:
        grant(svc)
    assert clause_of(wrong_country) == "grantee_claims"
    with svc.store.transaction() as session:
        record_claims(session, "bob", {"country": ["NL", "BE"]})
    with pytest.raises(NotAuthorized) as purpose:
        grant(svc, purpose="marketing")
    assert clause_of(purpose) == "purposes"
    with pytest.raises(NotAuthorized) as too_big:
        grant(svc, epsilon=3.0)
    assert clause_of(too_big) == "max_grant"
    ok = grant(svc, expires_days=None)
    assert ok.expires_at is not None and ok.expires_at.date() == date(2099, 12, 31), "capped at the agreement's end"
    assert grant(svc, user="olga", purpose="anything", epsilon=9.0).expires_at is None, "owners are not grantees"


def test_requests_and_approvals_are_checked(svc):
    bob = Principal("bob", "analyst", claims={"country": "NL"})
    entry = svc.catalog.get("patients")
    with pytest.raises(NotAuthorized) as asked:
        governance.submit_request(svc.store, bob, entry, AccessRequestBody(purpose="marketing", epsilon=1.0))
    assert clause_of(asked) == "purposes"
    request = governance.submit_request(svc.store, bob, entry, AccessRequestBody(purpose="diabetes study",
                                                                                 epsilon=1.0))
    olga = Principal("olga", "owner")
    with pytest.raises(NotAuthorized) as approve:  # bob never logged in through the provider: no recorded claims
        governance.approve_request(svc.store, olga, request.request_id, ApproveBody(),
                                   {"patients": svc.config.datasets["patients"].agreement})
    assert clause_of(approve) == "grantee_claims"


def test_the_gate_refuses_channels_outside_the_agreement_and_audits_the_clause(svc):
    bob = Principal("bob", "analyst", claims={"country": "NL"})
    entry = svc.catalog.get("patients")
    computed = []
    for channel in ("synth", "he", "fl", "code"):
        with pytest.raises(NotAuthorized) as refused:
            svc.gate.release(bob, entry, channel, "x", {"n": 1}, Cost(0.1, 0.0), compute=lambda: computed.append(1))
        assert clause_of(refused) == "channels"
    assert not computed, "nothing is computed for a refused channel"
    with pytest.raises(NotAuthorized) as elsewhere:
        svc.gate.release(replace(bob, claims={"country": "US"}), entry, "dp", "count", {}, Cost(0.1, 0.0),
                         compute=dict)
    assert clause_of(elsewhere) == "grantee_claims"
    refusals = [r for r in audit.records(svc.store) if r["action"] == "refusal"]
    assert {r["details"].get("clause") for r in refusals} == {"channels", "grantee_claims"}


def test_an_expired_agreement_stops_grants_and_releases():
    ended = AgreementConfig(expires=date(2020, 1, 1))
    with pytest.raises(WorkbenchError, match="'expires'"):
        check_grant(ended, purpose="p", epsilon=1.0, delta=0.0, claims=None, expires_at=None)
    from workbench.node.agreement import check_release

    with pytest.raises(WorkbenchError, match="'expires'"):
        check_release(ended, channel="dp", role="analyst", claims=None)
    check_release(ended, channel="dp", role="owner", claims=None)  # the owner's own use
    later = datetime(2019, 6, 1, tzinfo=timezone.utc)
    assert check_grant(ended, purpose="p", epsilon=1.0, delta=0.0, claims=None, expires_at=later + timedelta(days=900),
                       now=later) == ended.ends_at
