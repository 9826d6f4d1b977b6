"""A catalogue of crafted attacks on a node, kept as tests.

Each attack says what an attacker tries and what must happen. Every response
in this module is scanned: no 5xx, and never a raw patient identifier.
(Complements ``test_core_input_checks.py`` and ``test_auth.py``.)
"""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import socket
import threading
import time
from pathlib import Path

import httpx
import jwt
import pytest

RELEASE = "/v1/datasets/patients/dp/release"
PREVIEW = "/v1/datasets/patients/dp/preview"
RAW_ID = re.compile(r"\b[A-C]\d{7}\b")
MARKER = Path(os.environ.get("TMPDIR", "/tmp")) / f"workbench-attack-marker-{os.getpid()}"


class Evil:
    """Unpickling this creates MARKER: proof that someone ran analyst-supplied code."""

    def __reduce__(self):
        return (Path.touch, (MARKER,))


PICKLE = base64.b64encode(pickle.dumps(Evil())).decode()
PICKLE_LATIN1 = pickle.dumps(Evil()).decode("latin-1")


class Checked:
    """The real app in-process; every response is checked for 5xx and raw identifiers."""

    def __init__(self, client, analyst: str, owner: str):
        self.client, self.seen = client, []
        self.analyst = {"Authorization": f"Bearer {analyst}"}
        self.owner = {"Authorization": f"Bearer {owner}"}

    def request(self, method: str, url: str, **kw) -> httpx.Response:
        r = self.client.request(method, url, **kw)
        assert r.status_code < 500, (method, url, r.status_code, r.text[:300])
        assert not RAW_ID.search(r.text), f"raw identifier in the response to {method} {url}"
        if r.status_code >= 400 and r.headers.get("content-type", "").startswith("application/json"):
            assert {"code", "message"} <= set(r.json()), r.text
        self.seen.append(r)
        return r

    def post(self, url, **kw):
        return self.request("POST", url, **kw)

    def get(self, url, **kw):
        return self.request("GET", url, **kw)


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    from starlette.testclient import TestClient

    from tests.conftest import make_config
    from workbench.demo.nodes import ensure_accounts
    from workbench.server import create_app
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    service = NodeService(NodeConfig.load(make_config(tmp_path_factory.mktemp("attacks"))), start_workers=False)
    accounts = ensure_accounts(service)
    with TestClient(create_app(service), raise_server_exceptions=False) as client:
        checked = Checked(client, accounts.analyst_token, accounts.owner_token)
        checked.service = service
        checked.post(PREVIEW, json={"query": {"kind": "count"}, "epsilon": 1.0}, headers=checked.analyst)  # warm
        yield checked
    service.close()
    assert not MARKER.exists(), "analyst-supplied pickle was executed"


def spent(node, headers=None) -> float:
    return node.get("/v1/datasets/patients/budget", headers=headers or node.analyst).json()["epsilon_spent"]


# ---------------------------------------------------------------- executable payloads


def _body_paths(template: dict, prefix=()):
    for key, value in template.items():
        yield prefix + (key,)
        if isinstance(value, dict):
            yield from _body_paths(value, prefix + (key,))


def _with(template: dict, path: tuple, value) -> dict:
    out = json.loads(json.dumps(template))
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


VALID = {"query": {"kind": "mean", "column": "age", "by": ["sex"]}, "epsilon": 0.1, "request_id": "abcdefgh1234"}


@pytest.mark.parametrize("payload", [PICKLE, PICKLE_LATIN1, {"__reduce__": PICKLE}, [PICKLE]],
                         ids=["pickle-b64", "pickle-latin1", "pickle-object", "pickle-list"])
def test_pickle_in_any_field_is_refused_and_never_run(node, payload):
    before = spent(node)
    for path in list(_body_paths(VALID)) + [("plan",), ("query", "expr")]:
        body = _with(VALID, path, payload)
        for url in (PREVIEW, RELEASE):
            r = node.post(url, json=body, headers=node.analyst)
            assert r.status_code == 422, (path, r.text)
    assert not MARKER.exists()
    assert spent(node) == before


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_serialized_polars_plan_is_refused(node):
    import polars as pl

    plan = pl.LazyFrame({"a": [1]}).select(pl.col("a") * 2).serialize(format="json")
    for body in ({"query": plan, "epsilon": 0.1}, {"query": {"kind": "count", "plan": plan}, "epsilon": 0.1},
                 {"query": {"kind": "count", "column": plan}, "epsilon": 0.1}, {"plan": plan, "epsilon": 0.1}):
        r = node.post(RELEASE, json=body, headers=node.analyst)
        assert r.status_code == 422 and r.json()["code"] == "invalid_body"
    raw = pl.LazyFrame({"a": [1]}).serialize()  # binary form, sent as the whole body
    r = node.post(RELEASE, content=raw, headers={**node.analyst, "content-type": "application/json"})
    assert 400 <= r.status_code < 500 and r.json()["code"] == "invalid_body", r.text


# ---------------------------------------------------------------- names that try to be paths or SQL

TRAVERSALS = ["..%2F..%2F..%2Fetc%2Fpasswd", "%2e%2e", "..%252f..%252fetc%252fpasswd", "patients%2F..%2Firis",
              "%2Fetc%2Fpasswd", "patients%00.parquet", "..\\..\\windows", "~root", "patients;rm%20-rf"]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_path_traversal_in_names(node, name):
    for method, url, body in [
        ("GET", f"/v1/datasets/{name}", None), ("GET", f"/v1/datasets/{name}/rows", None),
        ("GET", f"/v1/datasets/{name}/budget", None),
        ("POST", f"/v1/datasets/{name}/dp/release", {"query": {"kind": "count"}, "epsilon": 0.1}),
        ("GET", f"/v1/fl/jobs/{name}", None), ("GET", f"/v1/requests/{name}", None),
        ("PUT", f"/v1/he/aggregators/{name}", {"url": "http://127.0.0.1:1", "token": "t" * 20}),
    ]:
        r = node.request(method, url, json=body, headers=node.owner)
        assert 400 <= r.status_code < 500, (method, url, r.status_code, r.text[:200])
        assert "root:" not in r.text and "[boot loader]" not in r.text


def test_sql_in_names_touches_nothing(node):
    for name in ("x'; DROP TABLE users; --", "analyst' OR '1'='1", 'a" ; DELETE FROM grants'):
        r = node.post("/v1/users", json={"name": name, "role": "analyst"}, headers=node.owner)
        assert r.status_code == 422
        r = node.post("/v1/grants", json={"user": name, "dataset": "patients", "purpose": "x", "epsilon": 1},
                      headers=node.owner)
        assert r.status_code in (404, 422)
        r = node.get("/v1/grants", params={"user": name, "dataset": "patients' OR 1=1 --"}, headers=node.owner)
        assert r.status_code == 200 and r.json() == []
    assert node.get("/v1/datasets/patients/budget", headers=node.analyst).status_code == 200


# ---------------------------------------------------------------- numbers at the edges


@pytest.mark.parametrize("body", [
    {"query": {"kind": "count"}, "epsilon": 1e-300},
    {"query": {"kind": "mean", "column": "cost"}, "epsilon": 5e-324},
    {"query": {"kind": "quantile", "column": "age", "quantile": 1e-300}, "epsilon": 0.1},
    {"query": {"kind": "histogram", "column": "age", "bins": [-1e308, 0, 1e308]}, "epsilon": 0.1},
    {"query": {"kind": "histogram", "column": "bmi", "bins": [0.0, 5e-324, 1e-320]}, "epsilon": 0.1},
    {"query": {"kind": "histogram", "column": "age", "bins": list(range(5000))}, "epsilon": 0.1},
    {"query": {"kind": "count"}, "epsilon": 0.1, "delta": 5e-324},
    {"query": {"kind": "count"}, "epsilon": 0.1, "grant_id": 2**63},
    {"query": {"kind": "count"}, "epsilon": 0.1, "grant_id": 10**40},
], ids=["eps-1e-300", "eps-denormal", "quantile-tiny", "bins-1e308", "bins-denormal", "bins-5000", "delta-denormal",
        "grant-2^63", "grant-10^40"])
def test_gigantic_and_tiny_numbers(node, body):
    """Vanishing or huge numbers: a clear refusal or a finite answer; a refused loss burns no worker at all."""
    calls = []
    real_run = node.service.pool.run
    node.service.pool.run = lambda *a, **k: calls.append(a[0]) or real_run(*a, **k)
    try:
        r = node.post(PREVIEW, json=body, headers=node.analyst)
    finally:
        node.service.pool.run = real_run
    assert r.status_code in (200, 404, 403, 422), r.text
    if r.status_code == 200:
        assert all(a["accuracy"] is None or a["accuracy"] >= 0 for a in r.json()["accuracy"])
    elif r.json()["code"] == "bad_epsilon":
        assert calls == [], "a refused privacy loss reached a worker"


def test_nan_and_deep_nesting_on_every_body_endpoint(node):
    posts = [(m.upper(), p) for p, ops in node.client.app.openapi()["paths"].items() for m, op in ops.items()
             if "requestBody" in op]
    assert len(posts) >= 10
    deep = "[" * 20_000 + "]" * 20_000
    for method, path in posts:
        url = path.replace("{name}", "patients").replace("{job_id}", "x").replace("{request_id}", "1") \
            .replace("{review_id}", "1")
        for raw in ('{"epsilon": NaN, "query": {"kind": "count"}}', '{"spec": {"epsilon": Infinity}}', deep,
                    '{"a": ' * 5000 + "1" + "}" * 5000, "\xff\xfe garbage", ""):
            cpu = time.process_time()  # this process's CPU (app included), not the wall clock of a busy machine
            r = node.request(method, url, content=raw.encode("utf-8", "surrogatepass"),
                             headers={**node.owner, "content-type": "application/json"})
            assert 400 <= r.status_code < 500, (method, url, raw[:30], r.status_code, r.text[:200])
            assert time.process_time() - cpu < 10, (method, url, raw[:30])


# ---------------------------------------------------------------- identity


def test_token_signed_by_another_node_or_tampered(node, tmp_path):
    from workbench.node.auth import TokenAuthority
    from workbench.node.store import Store, User

    real = node.analyst["Authorization"].split()[1]
    claims = jwt.decode(real, options={"verify_signature": False})
    # Another node with the same name (same issuer/audience) but its own key.
    other = TokenAuthority(node.service.name, tmp_path, Store(f"sqlite:///{tmp_path / 'x.sqlite'}"))
    forged = other.issue(User(name="owner", role="owner", token_version=1))
    r = node.get("/v1/me", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    # The real token with its payload changed to role owner, signature kept.
    head, _payload, sig = real.split(".")
    tampered_claims = dict(claims, role="owner", sub="owner")
    payload = base64.urlsafe_b64encode(json.dumps(tampered_claims).encode()).rstrip(b"=").decode()
    r = node.get("/v1/audit/verify", headers={"Authorization": f"Bearer {head}.{payload}.{sig}"})
    assert r.status_code == 401
    # The analyst's genuine token cannot do an owner's work.
    r = node.post("/v1/grants", json={"user": "analyst", "dataset": "patients", "purpose": "more", "epsilon": 100},
                  headers=node.analyst)
    assert r.status_code == 403


def test_replaying_another_users_request_id_never_returns_their_answer(node):
    from workbench.node import admin

    token = admin.add_user(node.service.store, node.service.authority, "mallory", "analyst")
    admin.add_grant(node.service.store, "mallory", "patients", "attack test", 1.0)
    mallory = {"Authorization": f"Bearer {token}"}
    body = {"query": {"kind": "mean", "column": "cost", "by": ["diagnosis"]}, "epsilon": 0.3,
            "request_id": "victim-request-0001"}
    victim = node.post(RELEASE, json=body, headers=node.analyst).json()
    r = node.post(RELEASE, json=body, headers=mallory)
    assert r.status_code == 200
    theirs = r.json()
    assert theirs["release_id"] != victim["release_id"] and not theirs["replayed"]
    assert theirs["table"] != victim["table"]  # fresh noise, not the victim's stored answer
    assert theirs["epsilon_charged"] == pytest.approx(0.3)
    assert spent(node, mallory) == pytest.approx(0.3)
    # Nor through history, audit or budget endpoints.
    assert all(h["release_id"] != victim["release_id"] for h in node.get("/v1/history", headers=mallory).json())
    audit_lines = node.get("/v1/audit", headers=mallory).text.splitlines()
    assert all(json.loads(line)["actor"] == "mallory" for line in audit_lines)


def test_differencing_through_overlapping_questions_is_charged_each_time(node):
    """count, count by sex, count by sex and region, the same in another order, another price: each is a new
    question and is charged; only the identical question replays (its answer is already public to you)."""
    before = spent(node)
    questions = [
        ({"kind": "count"}, 0.05), ({"kind": "count", "by": ["sex"]}, 0.05),
        ({"kind": "count", "by": ["sex", "region"]}, 0.05), ({"kind": "count", "by": ["region", "sex"]}, 0.05),
        ({"kind": "count"}, 0.06), ({"kind": "histogram", "column": "age", "bins": 2}, 0.05),
        ({"kind": "histogram", "column": "age", "bins": [0, 50, 100]}, 0.05),
        ({"kind": "histogram", "column": "age", "bins": [0, 50.0000001, 100]}, 0.05),
        ({"kind": "mean", "column": "age", "by": ["smoker"]}, 0.05),
        ({"kind": "sum", "column": "age", "by": ["smoker"]}, 0.05),
    ]
    total = 0.0
    for query, eps in questions:
        out = node.post(RELEASE, json={"query": query, "epsilon": eps}, headers=node.analyst).json()
        assert not out["replayed"] and out["epsilon_charged"] == pytest.approx(eps), (query, eps)
        total += eps
    again = node.post(RELEASE, json={"query": {"kind": "count", "by": ["sex"]}, "epsilon": 0.05},
                      headers=node.analyst).json()
    assert again["replayed"] and again["epsilon_charged"] == 0
    assert spent(node) - before == pytest.approx(total)


# ---------------------------------------------------------------- slow and oversized clients (real process)


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    s = socket.create_connection((host, int(port)), timeout=10)
    return s


@pytest.mark.slow
def test_slowloris_does_not_starve_other_analysts(shared_node):
    url, token = shared_node.url, shared_node.analyst_token
    httpx.post(url + PREVIEW, json={"query": {"kind": "count"}, "epsilon": 0.1}, timeout=120,
               headers={"Authorization": f"Bearer {token}"})  # warm workers
    stop = threading.Event()
    sockets = []
    body = json.dumps({"query": {"kind": "count"}, "epsilon": 0.1}).encode()
    for i in range(60):
        s = _raw(url)
        head = (f"POST /v1/datasets/patients/dp/preview HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        s.sendall(head if i % 2 else head[:40])  # half stop mid-headers, half mid-body
        if i % 2:
            s.sendall(body[:5])
        sockets.append(s)

    def drip():
        while not stop.is_set():
            for s in sockets:
                try:
                    s.send(b" ")
                except OSError:
                    pass
            stop.wait(1.0)

    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        # Served while the 60 slow sockets are held open (starved, it would time out: a generous bound).
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as http:
            assert http.get("/v1/health").status_code == 200
            r = http.post(PREVIEW, json={"query": {"kind": "mean", "column": "age"}, "epsilon": 0.2})
            assert r.status_code == 200, "slow clients starved an honest one"
    finally:
        stop.set()
        for s in sockets:
            s.close()


@pytest.mark.slow
def test_oversized_streamed_body_without_length(shared_node):
    s = _raw(shared_node.url)
    try:
        s.sendall((f"POST {RELEASE} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {shared_node.analyst_token}\r\n"
                   "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        chunk = b"[" * 65536
        try:
            for _ in range(64):  # 4 MiB, over the 1 MB limit
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
        except OSError:
            pass  # the node may close the connection early: also fine
        s.settimeout(30)
        reply = s.recv(4096).decode("latin-1")
        assert reply.startswith("HTTP/1.1 413"), reply[:600]
    finally:
        s.close()
    assert httpx.get(shared_node.url + "/v1/health", timeout=10).status_code == 200
