"""The ledger (workbench/node/ledger.py): which grant pays, whether a charge fits, the lifetime cap."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from workbench.errors import BudgetExceeded, InvalidQuery, NotAuthorized
from workbench.node import admin
from workbench.node.ledger import TOLERANCE, Cost, check_fits, choose_grant, fits, reserve


def test_fits_allows_float_dust_but_not_more():
    spent = sum([0.1] * 9)  # 0.8999999999999999: ten charges of 0.1 must fit a budget of 1.0
    assert fits(0.1, 0.0, 1.0 - spent, 0.0)
    assert not fits(0.1 + 10 * TOLERANCE, 0.0, 0.1, 0.0)
    assert fits(0.0, 1e-6, 0.0, 1e-6) and not fits(0.0, 1.1e-6, 0.0, 1e-6)


def test_check_fits_names_what_is_left():
    grant = SimpleNamespace(id=7, epsilon=1.0, epsilon_spent=0.9, delta=0.0, delta_spent=0.0)
    cap = SimpleNamespace(epsilon_cap=10.0, epsilon_spent=0.0, delta_cap=0.0, delta_spent=0.0)
    check_fits(grant, cap, "patients", 0.1, 0.0)
    with pytest.raises(BudgetExceeded) as info:
        check_fits(grant, cap, "patients", 0.2, 0.0)
    assert info.value.code == "budget_exceeded" and info.value.details["grant_id"] == 7
    assert info.value.details["epsilon_left"] == pytest.approx(0.1)
    with pytest.raises(BudgetExceeded) as info:  # the grant could pay, the dataset's lifetime cap cannot
        check_fits(grant, SimpleNamespace(epsilon_cap=5.0, epsilon_spent=4.95, delta_cap=0.0, delta_spent=0.0),
                   "patients", 0.1, 0.0)
    assert info.value.code == "dataset_budget_exceeded"
    with pytest.raises(BudgetExceeded):  # delta too
        check_fits(grant, cap, "patients", 0.05, 1e-9)


def test_choose_grant(backend_service):
    service = backend_service
    admin.add_user(service.store, service.authority, "pat", "analyst", actor="test")
    with service.store.transaction() as session, pytest.raises(NotAuthorized) as info:
        choose_grant(session, "pat", "patients", None)
    assert info.value.code == "no_grant"
    first = admin.add_grant(service.store, "pat", "patients", "one", epsilon=1.0, actor="test").grant_id
    with service.store.transaction() as session:
        assert choose_grant(session, "pat", "patients", None).id == first
    second = admin.add_grant(service.store, "pat", "patients", "two", epsilon=1.0, actor="test").grant_id
    with service.store.transaction() as session, pytest.raises(InvalidQuery) as info:
        choose_grant(session, "pat", "patients", None)
    assert info.value.code == "grant_ambiguous"
    admin.revoke_grant(service.store, first, actor="test")
    with service.store.transaction() as session:
        assert choose_grant(session, "pat", "patients", None).id == second
        with pytest.raises(NotAuthorized) as info:
            choose_grant(session, "pat", "patients", first)
        assert info.value.code == "grant_expired"
        with pytest.raises(NotAuthorized) as info:  # someone else's grant, named
            choose_grant(session, "someone", "patients", second)
        assert info.value.code == "no_grant"


def test_reserve_spends_the_grant_and_the_cap_together(backend_service):
    service = backend_service
    admin.add_user(service.store, service.authority, "pat", "analyst", actor="test")
    grant = admin.add_grant(service.store, "pat", "patients", "reserve", epsilon=1.0, actor="test").grant_id
    cap_before = service.gate.dataset_left("patients")[0]
    with service.store.transaction() as session:
        charge_id, paid_by = reserve(session, "pat", "patients", "v1", "dp", "h1", Cost(0.3), None, None)
    assert paid_by == grant and charge_id > 0
    assert service.gate.dataset_left("patients")[0] == pytest.approx(cap_before - 0.3)
    with pytest.raises(BudgetExceeded):  # a failed reservation changes nothing
        with service.store.transaction() as session:
            reserve(session, "pat", "patients", "v1", "dp", "h2", Cost(0.8), None, None)
    assert service.gate.dataset_left("patients")[0] == pytest.approx(cap_before - 0.3)
