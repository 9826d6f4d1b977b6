"""The release gate (workbench/node/gate.py), on both SQL backends: the one path every answer takes.

What a data owner relies on: the charge is durable before anything is computed; a failure after that
keeps the charge; a question the budget cannot pay is refused before it is computed; the same user
asking the same question again gets the same answer for free; parallel releases never overspend.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from workbench.errors import BudgetExceeded, ComputationFailed, InvalidQuery, NotAuthorized
from workbench.node import admin
from workbench.node.auth import Principal
from workbench.node.ledger import Cost
from workbench.node.store import AuditRecord, Charge, Grant

PAT = Principal(name="pat", role="analyst")


@pytest.fixture
def gate_setup(backend_service):
    """A user ``pat`` with a grant of epsilon 1.0 on ``patients``."""
    service = backend_service
    admin.add_user(service.store, service.authority, "pat", "analyst", actor="test")
    grant = admin.add_grant(service.store, "pat", "patients", "gate tests", epsilon=1.0, delta=1e-6, actor="test")
    return service, service.catalog.get("patients"), grant.grant_id


def _spent(service, grant_id: int) -> float:
    with service.store.transaction("read") as session:
        return session.get(Grant, grant_id).epsilon_spent


def _actions(service, actor: str = "pat") -> list[str]:
    with service.store.transaction("read") as session:
        rows = session.execute(select(AuditRecord).where(AuditRecord.actor == actor)
                               .order_by(AuditRecord.seq)).scalars().all()
    return [r.action for r in rows]


def test_the_charge_is_durable_before_the_computation_runs(gate_setup):
    service, entry, grant_id = gate_setup
    seen = []

    def compute() -> dict:
        seen.append(_spent(service, grant_id))  # read from the database, in another transaction
        return {"answer": 42}

    outcome = service.gate.release(PAT, entry, "dp", "count", {"q": 1}, Cost(0.25), compute)
    assert seen == [pytest.approx(0.25)]
    assert outcome.result == {"answer": 42} and not outcome.replayed
    assert outcome.charged == Cost(0.25) and outcome.grant_id == grant_id
    assert outcome.budget_left.epsilon == pytest.approx(0.75)
    assert _actions(service)[-1] == "release"


def test_a_replay_is_free_identical_and_computes_nothing(gate_setup):
    service, entry, grant_id = gate_setup
    calls = []
    first = service.gate.release(PAT, entry, "dp", "count", {"q": 1}, Cost(0.3), lambda: calls.append(1) or {"x": 1})
    again = service.gate.release(PAT, entry, "dp", "count", {"q": 1}, Cost(0.3), lambda: calls.append(1) or {"x": 2})
    assert calls == [1]
    assert again.replayed and again.result == first.result and again.release_id == first.release_id
    assert again.charged == Cost(0.0, 0.0) and _spent(service, grant_id) == pytest.approx(0.3)
    # Another price is another question: a fresh answer and a fresh charge.
    third = service.gate.release(PAT, entry, "dp", "count", {"q": 1}, Cost(0.2), lambda: {"x": 3})
    assert not third.replayed and _spent(service, grant_id) == pytest.approx(0.5)
    assert _actions(service) == ["reserve", "release", "replay", "reserve", "release"]


def test_a_failure_after_the_reservation_keeps_the_charge(gate_setup):
    service, entry, grant_id = gate_setup

    def crash() -> dict:
        raise RuntimeError("boom")

    with pytest.raises(ComputationFailed) as info:
        service.gate.release(PAT, entry, "dp", "count", {"q": "crash"}, Cost(0.4), crash)
    assert info.value.code == "computation_failed"
    assert _spent(service, grant_id) == pytest.approx(0.4)
    with service.store.transaction("read") as session:
        states = [c.state for c in session.execute(select(Charge).where(Charge.user_name == "pat")).scalars()]
    assert states == ["failed"]
    assert _actions(service)[-1] == "release_failed"
    # The same question again is not a replay of a failure: it is computed (and charged) again.
    outcome = service.gate.release(PAT, entry, "dp", "count", {"q": "crash"}, Cost(0.4), lambda: {"ok": True})
    assert not outcome.replayed and _spent(service, grant_id) == pytest.approx(0.8)


def test_what_the_budget_cannot_pay_is_refused_before_computing(gate_setup):
    service, entry, grant_id = gate_setup
    calls = []
    with pytest.raises(BudgetExceeded) as info:
        service.gate.release(PAT, entry, "dp", "count", {"q": 2}, Cost(1.5), lambda: calls.append(1) or {})
    assert info.value.code == "budget_exceeded" and info.value.details["epsilon_left"] == pytest.approx(1.0)
    assert calls == [] and _spent(service, grant_id) == 0.0
    assert _actions(service)[-1] == "refusal"


def test_who_may_release(gate_setup):
    service, entry, _ = gate_setup
    with pytest.raises(NotAuthorized):
        service.gate.release(Principal(name="pat", role="viewer"), entry, "dp", "count", {}, Cost(0.1), dict)
    with pytest.raises(NotAuthorized) as info:  # a user without a grant
        service.gate.release(Principal(name="nobody", role="analyst"), entry, "dp", "count", {}, Cost(0.1), dict)
    assert info.value.code == "no_grant"


def test_a_request_id_names_one_question(gate_setup):
    service, entry, grant_id = gate_setup
    first = service.gate.release(PAT, entry, "dp", "count", {"q": 1}, Cost(0.1), lambda: {"x": 1}, request_id="r-1")
    retry = service.gate.release(PAT, entry, "dp", "count", {"q": 1}, Cost(0.1), lambda: {"x": 2}, request_id="r-1")
    assert retry.replayed and retry.result == first.result and _spent(service, grant_id) == pytest.approx(0.1)
    with pytest.raises(InvalidQuery):  # the same id for another question is a client bug, refused
        service.gate.release(PAT, entry, "dp", "count", {"q": 2}, Cost(0.1), lambda: {}, request_id="r-1")


def test_parallel_releases_never_overspend(gate_setup):
    """Eight threads (a user's whole share of heavy work) ask eight questions of 0.15 against a grant of 1.0:
    exactly six are paid."""
    service, entry, grant_id = gate_setup
    results: list = []
    lock = threading.Lock()
    start = threading.Barrier(8)

    def ask(i: int) -> None:
        start.wait()
        try:
            outcome = service.gate.release(PAT, entry, "dp", "count", {"q": i}, Cost(0.15), lambda: {"i": i})
            with lock:
                results.append(outcome)
        except BudgetExceeded as exc:
            with lock:
                results.append(exc)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    paid = [r for r in results if not isinstance(r, Exception)]
    assert len(results) == 8 and len(paid) == 6
    assert _spent(service, grant_id) == pytest.approx(0.9)
