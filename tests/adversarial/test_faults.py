"""Faults: SIGKILL the node, or its OpenDP workers, at random moments during concurrent releases.

After every fault the books must balance: the ledger and the audit chain
verify, every answer a client received was charged, no reservation was lost
(each one is a charge, kept after a crash), retrying a request id never
charges twice. ``WORKBENCH_FAULT_ITERATIONS`` raises the number of rounds
(CI runs a few; ``WORKBENCH_FAULT_ITERATIONS=50`` for a soak).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import sqlite3
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.conftest import launch, start_node
from benchmarks import loadkit

ITERATIONS = int(os.environ.get("WORKBENCH_FAULT_ITERATIONS", "2"))
SHAPES = [{"kind": "count"}, {"kind": "mean", "column": "age"}, {"kind": "count", "by": ["region", "sex"]},
          {"kind": "histogram", "column": "bmi", "bins": 20}, {"kind": "quantile", "column": "cost", "quantile": 0.5}]
SLOW = {"kind": "count", "by": ["patient_id"]}  # private keys + delta: OpenDP works for a while

_counter = itertools.count()


def _question() -> dict:
    """A question never asked before in this test session (distinct epsilon -> distinct spec hash)."""
    k = next(_counter)
    if k % 8 == 7:
        return {"query": SLOW, "epsilon": round(0.01 + k * 1e-5, 6), "delta": 1e-8}
    return {"query": SHAPES[k % len(SHAPES)], "epsilon": round(0.01 + k * 1e-5, 6)}


class Analysts:
    """Threads that keep releasing fresh questions (each with a request id) until told to stop."""

    def __init__(self, url: str, token: str, threads: int = 4, prefix: str = "r"):
        self.url, self.token, self.prefix = url, token, prefix
        self.sent: list[tuple[str, dict]] = []
        self.results: list[tuple[str, int | None, dict | None]] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True) for i in range(threads)]

    def _loop(self, i: int) -> None:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"},
                          timeout=httpx.Timeout(60.0, connect=5.0)) as http:
            n = 0
            while not self.stop.is_set():
                body = dict(_question(), request_id=f"{self.prefix}-{i}-{n:05d}-{random.getrandbits(24):06x}")
                n += 1
                with self._lock:
                    self.sent.append((body["request_id"], body))
                try:
                    r = http.post("/v1/datasets/patients/dp/release", json=body)
                    out = (body["request_id"], r.status_code, r.json())
                except (httpx.HTTPError, ValueError):
                    out = (body["request_id"], None, None)
                with self._lock:
                    self.results.append(out)
                if out[1] is None:
                    time.sleep(0.2)  # the node is gone: don't spin

    def __enter__(self) -> "Analysts":
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=90)


def _db(config_path: Path) -> sqlite3.Connection:
    from workbench.node.settings import NodeConfig

    state = NodeConfig.load(config_path).node.state_dir
    return sqlite3.connect(f"file:{state / 'node.sqlite'}?mode=ro", uri=True)


def assert_books_balance(config_path: Path, answered: list[dict], allow_reserved: bool = False) -> dict:
    """The ledger, the stored answers, the audit chain and what clients received all agree."""
    load = loadkit
    report = load.ledger_report(config_path)
    assert report["overspent"] == [] and report["mismatch"] == [], report
    assert report["uncharged_releases"] == 0 and report["committed_without_answer"] == 0, report
    if not allow_reserved:
        assert report["reserved"] == 0, "a restarted node keeps (and closes) every open reservation"
    got = {("analyst", a["release_id"]) for a in answered if a.get("epsilon_charged", 0) > 0}
    assert got <= report["release_ids"], "an answer a client received is not in the ledger"
    db = _db(config_path)
    try:
        reserve_records = {json.loads(d)["charge_id"] for (d,) in db.execute(
            "SELECT details FROM audit WHERE action = 'reserve'")}
        charge_ids = {c for (c,) in db.execute("SELECT id FROM charges WHERE grant_id IS NOT NULL")}
    finally:
        db.close()
    assert reserve_records == charge_ids, "every reservation is a charge and every charge was reserved in the audit"
    ok, text = load.audit_verify(config_path)
    assert ok, text
    return report


def _charges_by_request(config_path: Path) -> dict[str, tuple[int, str]]:
    db = _db(config_path)
    try:
        return {r: (cid, st) for cid, r, st in db.execute(
            "SELECT id, request_id, state FROM charges WHERE request_id IS NOT NULL")}
    finally:
        db.close()


@pytest.mark.slow
def test_node_sigkilled_during_releases(tmp_path):
    node = launch(tmp_path)
    rng = random.Random(1234)
    answered: list[dict] = []
    try:
        for it in range(ITERATIONS):
            with httpx.Client(base_url=node.url, timeout=120,
                              headers={"Authorization": f"Bearer {node.analyst_token}"}) as http:
                warm = http.post("/v1/datasets/patients/dp/release",
                                 json={"query": SHAPES[0], "epsilon": round(0.001 + it * 1e-5, 6)})
                assert warm.status_code == 200, warm.text  # workers are warm: kills land mid-stream
                answered.append(warm.json())
            with Analysts(node.url, node.analyst_token, threads=4, prefix=f"k{it}") as crowd:
                deadline = time.monotonic() + 120  # generous: a loaded machine answers late, never never
                while not any(s == 200 for _r, s, _b in list(crowd.results)):
                    assert time.monotonic() < deadline, "no release was answered before the kill"
                    time.sleep(0.05)
                time.sleep(rng.uniform(0.0, 1.5))  # a seeded random moment in the stream (fault injection)
                os.killpg(node.process.pid, signal.SIGKILL)
                node.process.wait(timeout=10)
            answered += [body for _r, status, body in crowd.results if status == 200]
            node.process = start_node(node.config_path)  # recovery runs at start-up
            before = _charges_by_request(node.config_path)
            assert all(state != "reserved" for _c, state in before.values())
            assert_books_balance(node.config_path, answered)
            # Retrying every request id: a stored answer comes back free, a crashed one stays charged
            # (computation_failed); nothing is ever charged twice.
            with httpx.Client(base_url=node.url, timeout=120,
                              headers={"Authorization": f"Bearer {node.analyst_token}"}) as http:
                fresh = 0
                for rid, body in crowd.sent:
                    if rid not in before:
                        fresh += 1
                        if fresh > 3:  # a few suffice to show they are ordinary fresh releases
                            continue
                    r = http.post("/v1/datasets/patients/dp/release", json=body)
                    if rid in before:
                        cid, state = before[rid]
                        if state == "committed":
                            assert r.status_code == 200 and r.json()["replayed"], r.text
                            assert r.json()["epsilon_charged"] == 0
                        else:
                            assert r.status_code == 503 and r.json()["code"] == "computation_failed", r.text
                    else:  # never reached the ledger: a fresh release now
                        assert r.status_code == 200 and r.json()["epsilon_charged"] > 0, r.text
                        answered.append(r.json())
            after = _charges_by_request(node.config_path)
            assert {k: v[0] for k, v in after.items() if k in before} == {k: v[0] for k, v in before.items()}
            assert_books_balance(node.config_path, answered)
        db = _db(node.config_path)
        kept = db.execute("SELECT COUNT(*) FROM audit WHERE action = 'reservation_kept'").fetchone()[0]
        db.close()
        print(f"{ITERATIONS} kills, {len(answered)} answers, {kept} reservations kept across crashes")
        assert len(answered) > ITERATIONS, "the kills should land while answers are flowing"
    finally:
        node.stop()


def _workers(node_pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(node_pid).children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for p in children:
        try:
            if "workbench.node.worker" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            pass
    return out


@pytest.mark.slow
def test_workers_sigkilled_mid_query(tmp_path):
    node = launch(tmp_path, workers=2)
    rng = random.Random(99)
    kills = 0
    try:
        with Analysts(node.url, node.analyst_token, threads=3, prefix="w") as crowd:
            deadline = time.monotonic() + 120 + 10 * ITERATIONS  # generous: kills count, not seconds
            while kills < 2 * ITERATIONS and time.monotonic() < deadline:
                time.sleep(rng.uniform(0.5, 2.0))
                workers = _workers(node.process.pid)
                if workers:
                    rng.choice(workers).kill()
                    kills += 1
        statuses = [(s, (b or {}).get("code")) for _r, s, b in crowd.results]
        assert kills >= ITERATIONS
        assert all(s == 200 or (s == 503 and c == "computation_failed") for s, c in statuses), statuses
        assert node.process.poll() is None, "the node survived its workers"
        failed = sum(1 for s, _c in statuses if s == 503)
        with httpx.Client(base_url=node.url, timeout=120,
                          headers={"Authorization": f"Bearer {node.analyst_token}"}) as http:
            assert http.get("/v1/health").json()["worker_crashes"] >= 1
            r = http.post("/v1/datasets/patients/dp/release", json=_question())
            assert r.status_code == 200, r.text  # fresh workers answer
        report = assert_books_balance(node.config_path, [b for _r, s, b in crowd.results if s == 200])
        assert report["failed"] == failed, "every crashed computation stays charged"
    finally:
        node.stop()


@pytest.mark.slow
def test_node_dies_mid_federation(tmp_path):
    """Node C is SIGKILLed right after node A charged: the client says who charged; asking again after C
    restarts replays A and B for free and charges C once."""
    import workbench as wb

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(3) as pool:
        nodes = list(pool.map(lambda h: launch(tmp_path / h, h), ("hospital_a", "hospital_b", "hospital_c")))
    a, b, c = nodes
    handles = [wb.connect(n.url, token=n.analyst_token) for n in nodes]
    try:
        fds = wb.federation(handles).dataset("patients")
        killed = threading.Event()

        def kill_c(response: httpx.Response) -> None:
            if response.request.url.path.endswith("/dp/release") and not killed.is_set():
                killed.set()
                os.killpg(c.process.pid, signal.SIGKILL)
                c.process.wait(timeout=10)

        handles[0]._http.event_hooks["response"].append(kill_c)
        query = fds.mean("age")
        with pytest.raises(wb.ConnectionFailed) as err:
            query.release(epsilon=0.3)
        assert killed.is_set()
        assert err.value.details["charged"] == [a.url, b.url] or err.value.details["charged"] == [a.url]
        handles[0]._http.event_hooks["response"].clear()
        c.process = start_node(c.config_path)
        out = query.release(epsilon=0.3)
        charged = out.attrs["epsilon_charged"]
        assert charged[a.url] == 0 and charged[c.url] == pytest.approx(0.3)
        if err.value.details["charged"] == [a.url, b.url]:
            assert charged[b.url] == 0
        for n in nodes:
            spent = httpx.get(n.url + "/v1/datasets/patients/budget", timeout=30,
                              headers={"Authorization": f"Bearer {n.analyst_token}"}).json()["epsilon_spent"]
            assert spent == pytest.approx(0.3), f"{n.url} charged {spent} for one question"
            assert_books_balance(n.config_path, [])
    finally:
        for h in handles:
            h.close()
        for n in nodes:
            n.stop()
