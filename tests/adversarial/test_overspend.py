"""Concurrent releases never overspend a grant or a dataset's lifetime cap."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

import workbench as wb
from workbench.node import admin
from workbench.node.service import NodeService
from workbench.node.settings import NodeConfig
from workbench.node.store import Charge, DatasetBudget, Grant


def _ledger(config_path):
    service = NodeService(NodeConfig.load(config_path), start_workers=False)
    try:
        with service.store.transaction() as session:
            charges = session.query(Charge).all()
            grant = session.query(Grant).filter_by(user_name="analyst", dataset="patients").one()
            cap = session.get(DatasetBudget, "patients")
            return ([(c.epsilon, c.state) for c in charges], grant.epsilon, grant.epsilon_spent,
                    cap.epsilon_cap, cap.epsilon_spent)
    finally:
        service.close()


def test_32_concurrent_releases_against_a_budget_for_10(running_node):
    node = wb.connect(running_node.url, token=running_node.analyst_token)
    ds = node.dataset("patients")
    assert ds.budget()["epsilon"] == pytest.approx(10.0)

    def one(i: int):
        try:
            return ds.histogram("age", bins=i + 1).release(epsilon=1.0)
        except wb.BudgetExceeded as exc:
            return exc

    with ThreadPoolExecutor(32) as pool:
        outcomes = list(pool.map(one, range(32)))
    released = [o for o in outcomes if not isinstance(o, Exception)]
    refused = [o for o in outcomes if isinstance(o, wb.BudgetExceeded)]
    assert len(released) + len(refused) == 32
    assert len(released) == 10, "exactly the budget's worth of releases gets through"
    assert all(o.code == "budget_exceeded" for o in refused)
    assert ds.budget()["epsilon"] == pytest.approx(0.0, abs=1e-9)
    running_node.stop()

    charges, grant_eps, grant_spent, cap, cap_spent = _ledger(running_node.config_path)
    assert grant_spent <= grant_eps + 1e-9 and cap_spent <= cap + 1e-9
    assert sum(e for e, _ in charges) == pytest.approx(10.0)
    assert all(state == "committed" for _, state in charges)


def test_dataset_cap_binds_across_analysts(tmp_path):
    """Two analysts with generous grants cannot together exceed the dataset's lifetime cap (50 in the demo)."""
    from tests.conftest import launch

    node_proc = launch(tmp_path)
    try:
        service = NodeService(NodeConfig.load(node_proc.config_path), start_workers=False)
        try:
            tokens = {}
            for name in ("ann", "bob"):
                tokens[name] = admin.add_user(service.store, service.authority, name, "analyst")
                admin.add_grant(service.store, name, "patients", "study", epsilon=40.0)
        finally:
            service.close()
        handles = {n: wb.connect(node_proc.url, token=t).dataset("patients") for n, t in tokens.items()}

        def spend(args):
            name, i = args
            try:
                handles[name].histogram("visits", bins=i + 1).release(epsilon=5.0)
                return 5.0
            except wb.BudgetExceeded as exc:
                return exc.code

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(spend, [(n, i) for n in tokens for i in range(8)]))
        spent = sum(r for r in results if isinstance(r, float))
        assert spent == pytest.approx(50.0), "the dataset cap (50) is reached but never passed"
        assert "dataset_budget_exceeded" in results
    finally:
        node_proc.stop()
