"""The audit chain detects tampering; a crash after reservation keeps the charge; worker deaths are survived."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import workbench as wb
from workbench.node import audit
from workbench.node.service import NodeService
from workbench.node.settings import NodeConfig
from workbench.node.store import Charge, Grant
from tests.conftest import make_config, provision


def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workbench.cli", *args], capture_output=True, text=True, timeout=120)


def _db(config_path) -> str:
    return NodeConfig.load(config_path).database_url.split("///")[1]


def test_audit_verify_detects_tampering(running_node):
    node = wb.connect(running_node.url, token=running_node.analyst_token)
    node.dataset("patients").count().release(epsilon=0.5)
    node.dataset("patients").count().release(epsilon=0.5)
    running_node.stop()
    config = str(running_node.config_path)
    ok = _cli("node", "audit", "verify", "--config", config)
    assert ok.returncode == 0 and "OK" in ok.stdout, ok.stderr

    exported = _cli("node", "audit", "export", "--config", config).stdout.splitlines()
    actions = [__import__("json").loads(line)["action"] for line in exported]
    assert {"user_add", "grant_add", "login", "reserve", "release", "replay"} <= set(actions)

    con = sqlite3.connect(_db(running_node.config_path))
    # Rewrite history: make the release look cheaper.
    con.execute("UPDATE audit SET details = replace(details, '0.5', '0.05') WHERE action = 'release'")
    con.commit()
    bad = _cli("node", "audit", "verify", "--config", config)
    assert bad.returncode == 1 and "TAMPERED" in bad.stderr
    con.execute("UPDATE audit SET details = replace(details, '0.05', '0.5') WHERE action = 'release'")
    con.commit()
    assert _cli("node", "audit", "verify", "--config", config).returncode == 0
    # Delete a record in the middle, then the last one.
    con.execute("DELETE FROM audit WHERE seq = 3")
    con.commit()
    assert _cli("node", "audit", "verify", "--config", config).returncode == 1
    con.close()


def test_truncating_the_tail_is_detected(service):
    with service.store.transaction() as session:
        for i in range(5):
            audit.append(session, "x", "test", None, i=i)
    assert audit.verify(service.store).ok
    con = sqlite3.connect(service.config.database_url.split("///")[1])
    con.execute("DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)")
    con.commit()
    con.close()
    assert not audit.verify(service.store).ok


CRASHER = textwrap.dedent("""
    import os, sys
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig
    from workbench.node.auth import Principal
    from workbench.node.ledger import Cost
    svc = NodeService(NodeConfig.load(sys.argv[1]), start_workers=False)
    entry = svc.catalog.get("patients")
    def compute():
        os._exit(137)   # the node process dies after the reservation, mid-computation
    svc.gate.release(Principal("analyst", "analyst"), entry, "dp", "count", {"kind": "count"}, Cost(2.5, 0.0), compute)
""")


def test_crash_after_reservation_keeps_the_charge(tmp_path):
    config = make_config(tmp_path)
    provision(config)
    proc = subprocess.run([sys.executable, "-c", CRASHER, str(config)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 137, proc.stderr
    service = NodeService(NodeConfig.load(config), start_workers=False)  # restart: recovery runs
    try:
        with service.store.transaction() as session:
            grant = session.query(Grant).filter_by(user_name="analyst", dataset="patients").one()
            charges = session.query(Charge).all()
            assert grant.epsilon_spent == pytest.approx(2.5)
            assert [(c.epsilon, c.state) for c in charges] == [(2.5, "failed")]
        assert service.gate.dataset_left("patients")[0] == pytest.approx(47.5)
        records = list(audit.records(service.store))
        assert any(r["action"] == "reservation_kept" for r in records)
        assert audit.verify(service.store).ok
    finally:
        service.close()


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def test_worker_killed_mid_query_node_survives(running_node):
    node = wb.connect(running_node.url, token=running_node.analyst_token)
    ds = node.dataset("patients")
    ds.count().release(epsilon=0.1)  # workers are warm now
    server = psutil.Process(running_node.process.pid)
    outcome = []

    def slow_release():  # private keys with a delta: OpenDP searches scale and threshold (seconds)
        try:
            outcome.append(ds.group_by("patient_id").count().release(epsilon=0.3, delta=1e-6))
        except wb.WorkbenchError as exc:
            outcome.append(exc)

    workers = [p for p in server.children(recursive=True) if "workbench.node.worker" in " ".join(p.cmdline())]
    assert workers
    idle = {p.pid: _cpu(p) for p in workers}
    thread = threading.Thread(target=slow_release)
    thread.start()
    deadline = time.monotonic() + 120  # wait until a worker is computing (not a fixed sleep)
    while not any(_cpu(p) - idle[p.pid] > 0.3 for p in workers):
        assert not outcome and time.monotonic() < deadline, "the release never reached a worker"
        time.sleep(0.02)
    for p in workers:
        p.kill()
    thread.join(timeout=120)
    assert isinstance(outcome[0], wb.ComputationFailed) and outcome[0].code == "computation_failed"
    # The node keeps serving with fresh workers, and the failed release stays charged.
    assert node.info()["name"] == "hospital-a"
    assert ds.count().release(epsilon=0.2).attrs["epsilon_charged"] == pytest.approx(0.2)
    assert ds.budget()["epsilon_spent"] == pytest.approx(0.1 + 0.3 + 0.2)
