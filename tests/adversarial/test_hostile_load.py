"""The attack catalogue, issue 16: hostile load and owner mistakes.

Each test is one attack a red team ran against a served node, and what must
happen now: no 5xx, no charge without an answer, a fair share of the node
per user (429 + Retry-After beyond it), no old token authenticating a new
identity, bounded growth of the audit log, private state files. No test
waits on a clock: threads meet on events and barriers, and waits poll state
with generous deadlines.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import polars as pl
import pytest
import tomli_w

from tests.conftest import make_config

PREVIEW = "/v1/datasets/patients/dp/preview"
RELEASE = "/v1/datasets/patients/dp/release"


def _grant(client, headers) -> dict:
    return client.get("/v1/datasets/patients/budget", headers=headers).json()


def _charges(service, user: str | None = None) -> int:
    from sqlalchemy import func, select

    from workbench.node.store import Charge

    query = select(func.count()).select_from(Charge)
    if user is not None:
        query = query.where(Charge.user_name == user)
    with service.store.transaction("read") as session:
        return session.execute(query).scalar_one()


def _second_analyst(service) -> dict:
    from workbench.node import admin

    token = admin.add_user(service.store, service.authority, "analyst2", "analyst")
    admin.add_grant(service.store, "analyst2", "patients", "test", 1.0, 1e-6)
    return {"Authorization": f"Bearer {token}"}


def _poll(condition, deadline_s: float = 60.0) -> None:
    """Wait for ``condition()`` by polling state (not a timing assumption): fail after a generous deadline."""
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, "condition not reached in time"
        time.sleep(0.01)


# ---------------------------------------------------------------- 1. fairness


class _StandInWorker:
    """Stands in for a worker process in the scheduling unit test (no process, no task)."""

    def __init__(self, nice: int = 0, streaming: bool = True):
        self.nice = nice

    def kill(self) -> None:
        pass


def test_a_users_queued_tasks_never_delay_another_users_task(monkeypatch):
    """Attack: one analyst keeps the pool busy with a loop of heavy calls. Another analyst's task still gets
    a worker at once: a user runs at most size-1 tasks, and free workers go to the user running fewest."""
    from workbench.node import worker

    monkeypatch.setattr(worker, "_Worker", _StandInWorker)
    pool = worker.WorkerPool(size=2)
    first = pool._checkout("hostile")
    queued = threading.Thread(target=lambda: pool._checkin(pool._checkout("hostile"), "hostile"))
    queued.start()
    _poll(lambda: any(user == "hostile" for _, user in pool._waiting))  # hostile's second task waits ...
    honest = pool._checkout("honest")  # ... while the honest task takes the idle worker without waiting
    assert any(user == "hostile" for _, user in pool._waiting)
    pool._checkin(first, "hostile")
    queued.join(timeout=60)
    assert not queued.is_alive() and not pool._waiting
    pool._checkin(honest, "honest")


def test_over_share_is_429_with_retry_after_and_costs_nothing(app_client):
    """Attack: many heavy calls in parallel from one user. Beyond their share the node answers 429 with
    Retry-After before queueing or charging anything; the client raises wb.RateLimited."""
    import asyncio

    import workbench as wb
    from workbench.errors import error_class_for
    from workbench.node.fairness import _Line

    service = app_client.service
    before, charges = _grant(app_client, app_client.analyst), _charges(service)
    body = {"query": {"kind": "count", "by": ["region"]}, "epsilon": 0.123, "delta": 0.0}
    holds = [service.fair.admit("analyst", "compute") for _ in range(service.fair.limits["compute"])]
    for hold in holds:  # the analyst's previews in flight fill their share ...
        hold.__enter__()
    queue_limit, service.fair.queue_limit = service.fair.queue_limit, 0
    service.fair._queues["analyst"] = _Line(asyncio.Semaphore(0))  # ... and so do their releases, none may wait
    try:
        for path in (PREVIEW, RELEASE):
            r = app_client.post(path, json=body, headers=app_client.analyst)
            assert r.status_code == 429 and r.json()["code"] == "rate_limited", r.text
            assert int(r.headers["Retry-After"]) >= 1
            assert issubclass(error_class_for(r.json()["code"]), wb.RateLimited)
        # Another analyst is not limited by this one's share.
        assert app_client.post(PREVIEW, json=body, headers=_second_analyst(service)).status_code == 200
    finally:
        for hold in holds:
            hold.__exit__(None, None, None)
        service.fair.queue_limit = queue_limit
        service.fair._queues.pop("analyst")
    assert _grant(app_client, app_client.analyst) == before and _charges(service) == charges
    assert app_client.post(RELEASE, json=body, headers=app_client.analyst).status_code == 200
    metrics = app_client.get("/v1/metrics", headers=app_client.owner).text  # the owner sees the refusals
    assert "workbench_rate_limited_total 2" in metrics


def test_a_users_releases_queue_without_threads_up_to_a_bound():
    """Parallel releases of one user wait their turn on the event loop (holding no thread); beyond the
    queue bound they are refused at once with RateLimited."""
    import asyncio

    from workbench.errors import RateLimited
    from workbench.node.fairness import UserLimiter

    async def scenario() -> None:
        limiter = UserLimiter(compute=1, queue=1)
        inside, leave = asyncio.Event(), asyncio.Event()

        async def hold() -> None:
            async with limiter.queued("u"):
                inside.set()
                await leave.wait()

        first = asyncio.create_task(hold())
        await inside.wait()
        inside.clear()
        second = asyncio.create_task(hold())  # waits in the queue
        while limiter._queues["u"].waiting == 0:
            await asyncio.sleep(0)
        with pytest.raises(RateLimited):
            async with limiter.queued("u"):
                pass
        async with limiter.queued("v"):  # another user is not in u's queue
            assert limiter.in_flight("v") == 1
        leave.set()
        await asyncio.gather(first, second)
        assert limiter.in_flight("u") == 0 and "u" not in limiter._queues

    asyncio.run(scenario())


def test_client_honours_retry_after(app_client, monkeypatch):
    """The Python client retries a 429 after the node's Retry-After (nothing was done), then succeeds."""
    from workbench import wire
    from workbench.client import connection

    service = app_client.service
    waits = []
    service.fair._in_flight[("analyst", "compute")] = service.fair.limits["compute"]  # the share is taken ...

    def fake_sleep(seconds):  # ... until the client backs off once
        waits.append(seconds)
        service.fair._in_flight.pop(("analyst", "compute"), None)

    monkeypatch.setattr(wire.time, "sleep", fake_sleep)
    node = connection.Node(app_client, "http://testserver")
    node._http = _Prefixless(app_client, app_client.analyst)
    out = node.request("POST", "/datasets/patients/dp/preview",
                       json={"query": {"kind": "count"}, "epsilon": 0.2, "delta": 0.0})
    assert waits == [1.0] and out["epsilon"] == 0.2


class _Prefixless:
    """The TestClient with the analyst's token, shaped like the httpx.Client the connection holds."""

    def __init__(self, client, headers):
        self.client, self.headers = client, headers

    def request(self, method, url, **kw):
        return self.client.request(method, url, headers=self.headers, **kw)


def test_smpc_contributions_beyond_the_session_share_are_refused_before_anything(app_client):
    """Attack: replaying a paid SMPC sum into dozens of sessions that never complete, each waiting on other
    parties. A user's waiting contributions are capped (429 before the aggregator is even asked), and the
    wait itself is asynchronous (it holds no thread of the node)."""
    import inspect

    from workbench.channels.secagg import smpc_routes as node_routes

    service = app_client.service
    holds = [service.fair.admit("analyst", "session") for _ in range(service.fair.limits["session"])]
    for hold in holds:
        hold.__enter__()
    try:
        for channel in ("smpc", "he"):
            r = app_client.post(f"/v1/datasets/patients/{channel}/contribute", headers=app_client.analyst,
                                json={"aggregator_url": "http://127.0.0.1:9", "session_id": "s" * 32})
            assert r.status_code == 429 and r.json()["code"] == "rate_limited", r.text
            assert "Retry-After" in r.headers
    finally:
        for hold in holds:
            hold.__exit__(None, None, None)
    r = app_client.post("/v1/datasets/patients/smpc/contribute", headers=app_client.analyst,
                        json={"aggregator_url": "http://127.0.0.1:9", "session_id": "s" * 32})
    assert r.status_code == 403 and r.json()["code"] == "untrusted_aggregator"
    assert inspect.iscoroutinefunction(node_routes.contribute) and inspect.iscoroutinefunction(node_routes._wait)


def test_free_previews_calibrate_in_their_own_low_priority_pool(app_client):
    """Attack: loops of uncached previews with delta > 0 (OpenDP's noise search, seconds each). They run in
    the preview pool, whose workers are niced, never in a paid release's worker; a repeat is cached."""
    import psutil

    service = app_client.service
    body = {"query": {"kind": "count", "by": ["patient_id"]}, "epsilon": 0.5, "delta": 1e-6}
    assert app_client.post(PREVIEW, json=body, headers=app_client.analyst).status_code == 200
    assert service.preview_pool._started == 1 and service.pool._started == 0
    workers = [psutil.Process(w.process.pid) for w in service.preview_pool._idle]  # this node's preview workers
    assert workers and all(w.nice() >= 10 for w in workers)
    assert app_client.post(PREVIEW, json=body, headers=app_client.analyst).status_code == 200  # from cache


def test_open_rows_are_read_off_the_node_process_within_the_users_share(app_client):
    """Attack: loop the download of a large open dataset (free; it took seconds of the node process's own CPU
    per call and raised everyone's latency). The rows are read and encoded in the niced pool for free work,
    the body's file is removed once sent, and beyond the user's share the download gets 429."""
    import psutil

    service = app_client.service
    entry = service.catalog.get("iris")
    from workbench.node.data import raw_scan

    expected = raw_scan(entry.path, entry.config.file_format).select(list(entry.config.columns)).collect()
    r = app_client.get("/v1/datasets/iris/rows", params={"limit": 7}, headers=app_client.analyst)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["table"]["columns"] == expected.columns and body["dataset_version"] == entry.version
    assert body["table"]["data"] == [list(row) for row in expected.head(7).iter_rows()]
    assert service.preview_pool._started == 1 and service.pool._started == 0
    assert all(psutil.Process(w.process.pid).nice() >= 10 for w in service.preview_pool._idle)
    assert not list((service.config.node.state_dir / "open_rows").iterdir())  # nothing left behind
    holds = [service.fair.admit("analyst", "compute") for _ in range(service.fair.limits["compute"])]
    for hold in holds:
        hold.__enter__()
    try:
        r = app_client.get("/v1/datasets/iris/rows", headers=app_client.analyst)
        assert r.status_code == 429 and r.json()["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
    finally:
        for hold in holds:
            hold.__exit__(None, None, None)


# ---------------------------------------------------------------- 2. no charge without an answer


@pytest.mark.parametrize("kind,extra", [("sum", {}), ("mean", {}), ("quantile", {"quantile": 0.5})])
def test_aggregates_by_private_keys_refused_before_charging(app_client, kind, extra):
    """Attack: sum/mean/quantile grouped by a column without public categories (OpenDP cannot: "max_groups
    must be known"). Refused in the preview and the release, nothing charged."""
    before, charges = _grant(app_client, app_client.analyst), _charges(app_client.service)
    body = {"query": {"kind": kind, "column": "visits", "by": ["patient_id"], **extra}, "epsilon": 0.5,
            "delta": 1e-6}
    for path in (PREVIEW, RELEASE):
        r = app_client.post(path, json=body, headers=app_client.analyst)
        assert r.status_code == 422 and r.json()["code"] == "invalid_query", r.text
    assert _grant(app_client, app_client.analyst) == before and _charges(app_client.service) == charges


def _bad_types_config(root: Path) -> Path:
    """An owner's mistake on a real public file (Fisher's iris, as CSV): sepal_length declared int, and
    species declared with integer categories; plus a private file with 17.5 in an int column."""
    from workbench.demo.data import iris

    data = root / "data"
    data.mkdir(parents=True)
    iris().write_csv(data / "iris.csv")
    rows = pl.DataFrame({"age": ["41", "17.5", "30"], "flag": ["0", "0.0", "1"], "pid": ["a", "b", "c"]})
    rows.write_csv(data / "private.csv")
    config = {
        "node": {"name": "mistakes", "state_dir": "state", "port": 8799, "workers": 1},
        "datasets": {
            "iris": {"path": "data/iris.csv", "tier": "open", "max_rows": 1000, "columns": {
                "sepal_length": {"type": "int", "bounds": [4, 8]},
                "species": {"type": "category", "categories": [0, 1, 2]}}},
            "clinic": {"path": "data/private.csv", "tier": "private", "max_rows": 100, "columns": {
                "age": {"type": "int", "bounds": [0, 100]},
                "flag": {"type": "category", "categories": [0, 1]}}},
            "fine": {"path": "data/iris.csv", "tier": "open", "max_rows": 1000, "columns": {
                "sepal_length": {"type": "float", "bounds": [5, 6]}}},  # outside bounds is fine: clipped
        }}
    path = root / "node.toml"
    path.write_text(tomli_w.dumps(config))
    return path


@pytest.mark.parametrize("columns", [["sex"], ["age"]])
def test_mst_on_one_column_is_refused_before_charging(app_client, columns):
    """Found by random synthesis jobs against a real node: MST over a single synthesizable column passed the
    checks, was charged, then failed inside OpenDP. Refused in the preview and at submission, nothing charged."""
    spent = _grant(app_client, app_client.analyst)["epsilon_spent"]
    for path in ("/v1/datasets/patients/synth/preview", "/v1/datasets/patients/synth/jobs"):
        r = app_client.post(path, json={"spec": {"method": "mst", "rows": 5, "columns": columns}, "epsilon": 0.5},
                            headers=app_client.analyst)
        assert r.status_code == 422 and r.json()["code"] == "invalid_query", r.text
        assert "independent" in r.json()["message"]
    assert _grant(app_client, app_client.analyst)["epsilon_spent"] == spent and _charges(app_client.service) == 0


def test_node_check_reads_every_value_against_its_declared_type(tmp_path):
    """Owner mistake: declared types the file does not hold. `node check` says which column and row (never a
    private value) and exits 1; the node refuses to serve those datasets (dataset_unavailable, no charge)."""
    config = _bad_types_config(tmp_path)
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "node", "check", "--config", str(config)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, out.stdout + out.stderr
    lines = {line.split()[1]: line for line in out.stdout.splitlines() if line.startswith(("ok", "PROBLEM"))}
    assert lines["fine"].startswith("ok")
    assert lines["iris"].startswith("PROBLEM") and "column 'sepal_length' row 1" in lines["iris"]
    assert "column 'species' row 1" in lines["iris"] and "'5.1'" in lines["iris"]  # open data: value shown
    clinic = lines["clinic"]
    assert "column 'age' row 2" in clinic and "column 'flag' row 2" in clinic
    assert "17.5" not in out.stdout and "0.0" not in clinic  # a private column's value is never printed

    from starlette.testclient import TestClient

    from workbench.node import admin
    from workbench.server import create_app
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    service = NodeService(NodeConfig.load(config), start_workers=False)
    try:
        token = admin.add_user(service.store, service.authority, "ana", "analyst")
        admin.add_grant(service.store, "ana", "clinic", "test", 1.0)
        client = TestClient(create_app(service), raise_server_exceptions=False)
        r = client.post("/v1/datasets/clinic/dp/release", headers={"Authorization": f"Bearer {token}"},
                        json={"query": {"kind": "mean", "column": "age"}, "epsilon": 0.5})
        assert r.status_code == 409 and r.json()["code"] == "dataset_unavailable"   # the owner's state: no 5xx
        assert "17.5" not in r.text and _charges(service) == 0
        assert "column 'age' row 2" in service.catalog.problems()["clinic"]
    finally:
        service.close()


# ---------------------------------------------------------------- 3(a). request id storms


def test_twelve_bodies_under_one_request_id(shared_node):
    """Attack: twelve concurrent releases with one request_id and different bodies. One answer (charged
    once), `request_id_conflict` for the rest, never a 500."""
    headers = {"Authorization": f"Bearer {shared_node.analyst_token}"}
    barrier = threading.Barrier(12)
    replies = []

    def fire(i: int) -> None:
        body = {"query": {"kind": "count", "by": ["region"]}, "epsilon": round(0.05 + 0.001 * i, 4),
                "request_id": "storm-one-id-000001"}
        barrier.wait(timeout=60)
        replies.append(httpx.post(shared_node.url + RELEASE, json=body, headers=headers, timeout=120))

    threads = [threading.Thread(target=fire, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=180)
    codes = sorted(r.status_code for r in replies)
    assert len(replies) == 12 and all(c < 500 for c in codes), [r.text[:200] for r in replies]
    assert codes.count(200) == 1, codes
    assert all(r.json()["code"] == "request_id_conflict" for r in replies if r.status_code != 200)


# ---------------------------------------------------------------- 4. replays and dataset versions


def test_replay_by_request_id_after_the_file_changed_keeps_its_own_version(app_client):
    """Attack: resend an old request id after the owner replaced the file. The old answer is never labelled
    as the new version: the replay says the version it was computed on; a new question is on the new one."""
    service = app_client.service
    body = {"query": {"kind": "count"}, "epsilon": 0.2, "request_id": "version-replay-0001"}
    first = app_client.post(RELEASE, json=body, headers=app_client.analyst).json()
    entry = service.catalog.get("patients")
    frame = pl.read_parquet(entry.path)
    frame.head(frame.height - 5).write_parquet(entry.path)
    service.catalog.refresh(force=True)
    new_version = service.catalog.get("patients").version
    assert new_version != first["dataset_version"]
    again = app_client.post(RELEASE, json=body, headers=app_client.analyst).json()
    assert again["replayed"] and again["epsilon_charged"] == 0
    assert again["dataset_version"] == first["dataset_version"] and again["table"] == first["table"]
    fresh = app_client.post(RELEASE, json={**body, "request_id": "version-replay-0002"},
                            headers=app_client.analyst).json()
    assert fresh["dataset_version"] == new_version and not fresh["replayed"] and fresh["epsilon_charged"] == 0.2


# ---------------------------------------------------------------- 5. user lifecycle


def test_no_old_token_authenticates_a_new_identity(app_client):
    """Attack: an analyst's token kept after the user was deleted and re-created as an owner (versions used
    to restart at 1), or after a role change. Old tokens stay dead; only new ones work."""
    owner = app_client.owner

    def who(token: str) -> int:
        return app_client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code

    first = app_client.post("/v1/users", json={"name": "mallory", "role": "analyst"}, headers=owner).json()["token"]
    assert who(first) == 200
    assert app_client.post("/v1/users/mallory/disable", headers=owner).status_code == 200
    assert who(first) == 401
    assert app_client.post("/v1/users/mallory/enable", headers=owner).status_code == 200
    assert who(first) == 200
    promoted = app_client.put("/v1/users/mallory/role", json={"role": "auditor"}, headers=owner).json()["token"]
    assert who(first) == 401 and who(promoted) == 200
    gone = app_client.delete("/v1/users/mallory", headers=owner)
    assert gone.status_code == 200
    assert who(first) == 401 and who(promoted) == 401
    reborn = app_client.post("/v1/users", json={"name": "mallory", "role": "owner"}, headers=owner).json()["token"]
    assert who(reborn) == 200
    assert who(first) == 401 and who(promoted) == 401  # neither old token is the new owner
    me = app_client.get("/v1/me", headers={"Authorization": f"Bearer {reborn}"}).json()
    assert me["role"] == "owner"
    # Analysts cannot administer users; the last enabled owner cannot be removed.
    assert app_client.post("/v1/users/owner/disable", headers=app_client.analyst).status_code == 403
    app_client.delete("/v1/users/mallory", headers=owner)
    r = app_client.delete("/v1/users/owner", headers=owner)
    assert r.status_code == 422 and "last enabled owner" in r.json()["message"]


def test_user_lifecycle_from_the_cli(tmp_path):
    """`workbench node user disable|enable|delete|role` on the node's state; versions keep rising."""
    from click.testing import CliRunner

    from workbench.cli import main
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    config = str(make_config(tmp_path))
    run = CliRunner().invoke
    assert run(main, ["node", "user", "add", "owner", "--role", "owner", "--config", config]).exit_code == 0
    old = run(main, ["node", "user", "add", "bob", "--role", "analyst", "--config", config]).output.strip()
    for args in (["disable", "bob"], ["enable", "bob"], ["role", "bob", "auditor"], ["delete", "bob"]):
        out = run(main, ["node", "user", *args, "--config", config])
        assert out.exit_code == 0, out.output
    new = run(main, ["node", "user", "add", "bob", "--role", "owner", "--config", config]).output.strip()
    service = NodeService(NodeConfig.load(config), start_workers=False)
    try:
        from workbench.errors import NotAuthenticated

        with pytest.raises(NotAuthenticated):
            service.authority.verify(old)
        assert service.authority.verify(new).role == "owner"
        actions = [r["action"] for r in __import__("workbench.node.audit", fromlist=["records"]).records(
            service.store)]
        assert {"user_disable", "user_enable", "user_role", "user_delete"} <= set(actions)
    finally:
        service.close()


# ---------------------------------------------------------------- 6. failed authentication floods


def test_garbage_token_flood_is_counted_not_written_row_by_row(app_client):
    """Attack: 200 requests with garbage tokens used to write 200 audit rows. Now one record per source
    and kind, and a count for the window: the evidence is kept, growth is bounded, the chain verifies."""
    from workbench.node import audit

    service = app_client.service
    start = sum(1 for _ in audit.records(service.store))
    for i in range(200):
        r = app_client.get("/v1/catalog", headers={"Authorization": f"Bearer garbage{i}"})
        assert r.status_code == 401
    written = [r for r in audit.records(service.store) if r["action"].startswith("auth_failed")]
    assert len(written) == 1 and sum(1 for _ in audit.records(service.store)) - start == 1
    assert service.auth_failures.flush(everything=True) == 1
    summary = [r for r in audit.records(service.store) if r["action"] == "auth_failed_summary"]
    assert len(summary) == 1 and summary[0]["details"]["failures"] == 200
    assert summary[0]["details"]["client"] == "testclient"
    assert audit.verify(service.store).ok


# ---------------------------------------------------------------- 7. state permissions


def test_state_folder_and_database_are_private_whatever_the_umask(tmp_path, caplog):
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    config = NodeConfig.load(make_config(tmp_path / "fresh"))
    old = os.umask(0o022)
    try:
        service = NodeService(config, start_workers=False)
        service.close()
    finally:
        os.umask(old)
    state = config.node.state_dir
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "node.sqlite").stat().st_mode) == 0o600
    assert not service.permission_warnings
    os.chmod(state, 0o755)
    os.chmod(state / "node.sqlite", 0o644)
    with caplog.at_level("WARNING"):
        service = NodeService(config, start_workers=False)
        service.close()
    assert len(service.permission_warnings) == 2
    assert "0755" in caplog.text and "0644" in caplog.text


# ---------------------------------------------------------------- 8. protocol field, unused delta


@pytest.mark.parametrize("path", [PREVIEW, RELEASE])
def test_unknown_protocol_in_the_body_is_refused_like_the_header(app_client, path):
    body = {"query": {"kind": "count"}, "epsilon": 0.3}
    r = app_client.post(path, json={**body, "protocol": "99"}, headers=app_client.analyst)
    assert r.status_code == 400 and r.json()["code"] == "protocol_unsupported"
    header = app_client.post(path, json=body, headers={**app_client.analyst, "X-Workbench-Protocol": "99"})
    assert header.status_code == 400 and header.json()["message"] == r.json()["message"]
    assert app_client.post(path, json={**body, "protocol": "1"}, headers=app_client.analyst).status_code == 200


def test_delta_is_charged_only_when_the_noise_uses_it(app_client):
    """A count by public categories adds pure Laplace noise: a delta sent with it is neither needed nor
    charged (the preview says so); private keys (thresholding) do spend their delta."""
    before = _grant(app_client, app_client.analyst)
    body = {"query": {"kind": "count", "by": ["sex"]}, "epsilon": 0.25, "delta": 1e-6}
    preview = app_client.post(PREVIEW, json=body, headers=app_client.analyst).json()
    assert preview["delta"] == 0.0 and "uses no delta" in preview["note"]
    release = app_client.post(RELEASE, json=body, headers=app_client.analyst).json()
    assert release["delta_charged"] == 0.0 and release["epsilon_charged"] == 0.25
    after = _grant(app_client, app_client.analyst)
    assert after["delta_spent"] == before["delta_spent"]
    private = {"query": {"kind": "count", "by": ["patient_id"]}, "epsilon": 0.25, "delta": 1e-6}
    assert app_client.post(RELEASE, json=private, headers=app_client.analyst).json()["delta_charged"] == 1e-6


@pytest.mark.parametrize("path,body", [
    ("/v1/datasets/patients/synth/preview", {"spec": {"method": "independent", "rows": 5}, "epsilon": 1.0}),
    ("/v1/datasets/patients/synth/jobs", {"spec": {"method": "independent", "rows": 5}, "epsilon": 1.0}),
    ("/v1/datasets/patients/synth/sdv", {"spec": {"synthesizer": "GaussianCopula", "rows": 5}}),
])
def test_unknown_protocol_in_synthesis_bodies_is_refused_the_same_way(app_client, path, body):
    r = app_client.post(path, json={**body, "protocol": "0.9"}, headers=app_client.analyst)
    assert r.status_code == 400 and r.json()["code"] == "protocol_unsupported", r.text


def test_a_backlog_of_nearly_free_synthesis_jobs_is_bounded_per_user(app_client):
    """Attack: queue synthesis jobs at the epsilon floor (1e-6 each: nearly free) so the node's synthesis slot
    is busy for everyone. Beyond their share (per_user_synth_jobs) the attacker gets 429 + Retry-After before
    anything is charged; another analyst's job is still accepted."""
    from workbench.channels.synth.jobs import jobs_of

    service, jobs = app_client.service, jobs_of(app_client.service)
    body = {"spec": {"method": "independent", "rows": 5, "columns": ["sex", "region"]}, "epsilon": 1e-6}
    spent = _grant(app_client, app_client.analyst)["epsilon_spent"]
    hold = threading.Event()
    held = [jobs.submit("analyst", "patients", "independent", None, lambda job: hold.wait(120))
            for _ in range(service.fair.limits["synthesis"])]  # the attacker's backlog fills their share
    try:
        r = app_client.post("/v1/datasets/patients/synth/jobs", json=body, headers=app_client.analyst)
        assert r.status_code == 429 and r.json()["code"] == "rate_limited", r.text
        assert int(r.headers["Retry-After"]) >= 1 and r.json()["details"]["kind"] == "synthesis"
        other = app_client.post("/v1/datasets/patients/synth/jobs", json=body, headers=_second_analyst(service))
        assert other.status_code == 202, other.text
    finally:
        hold.set()
    _poll(lambda: all(jobs.get(j.job_id, "analyst").status == "done" for j in held))
    _poll(lambda: jobs.get(other.json()["job_id"], "analyst2").status == "done", deadline_s=300)
    assert _grant(app_client, app_client.analyst)["epsilon_spent"] == spent and _charges(service, "analyst") == 0
    again = app_client.post("/v1/datasets/patients/synth/jobs", json=body, headers=app_client.analyst)
    assert again.status_code == 202, again.text  # the share is given back when the backlog is done
    app_client.delete(f"/v1/synth/jobs/{again.json()['job_id']}", headers=app_client.analyst)


def test_creating_free_training_jobs_never_pushes_out_another_users_job(app_client, monkeypatch):
    """Attack: create training jobs in a loop (free: only the rounds are charged) until the node's job table is
    full, so other analysts' jobs are forgotten mid-training. Only the creator's own oldest jobs are forgotten."""
    from workbench.channels.fl import jobs as fl_jobs

    monkeypatch.setattr(fl_jobs, "MAX_JOBS_PER_USER", 4)
    monkeypatch.setattr(fl_jobs, "MAX_JOBS", 6)
    spec = {"model": "logistic_regression", "y": "readmitted", "x": ["age", "bmi"], "rounds": 2, "epsilon": 1.0,
            "delta": 1e-6}

    def create(headers) -> str:
        r = app_client.post("/v1/datasets/patients/fl/jobs", json={"spec": spec}, headers=headers)
        assert r.status_code == 200, r.text
        return r.json()["job_id"]

    honest = create(app_client.analyst)
    hostile = _second_analyst(app_client.service)
    made = [create(hostile) for _ in range(8)]
    alive = lambda job_id, headers: app_client.get(f"/v1/fl/jobs/{job_id}", headers=headers).status_code == 200
    assert alive(honest, app_client.analyst)
    assert [alive(j, hostile) for j in made] == [False] * 4 + [True] * 4  # the creator's share: its newest 4
    monkeypatch.setattr(fl_jobs, "MAX_JOBS", 4)  # a full node forgets the heaviest holder's oldest job
    made.append(create(hostile))
    assert alive(honest, app_client.analyst)
    assert [alive(j, hostile) for j in made[4:]] == [False, False, True, True, True]


def test_replayed_smpc_sum_cannot_pile_up_waiting_sessions(tmp_path):
    """Attack (real node, real aggregator): pay for one SMPC sum, then replay it for free into many new
    sessions that never complete (the other party never joins). Only the user's session share waits (2),
    asynchronously; the rest get 429 at once; other users are served meanwhile; one charge in all."""
    import signal

    from tests.conftest import launch, start_aggregator
    from workbench.aggregator.app import add_node

    state = tmp_path / "aggregator"
    tokens = {name: add_node(state, name) for name in ("hospital-a", "hospital-b")}
    proc, agg_url = start_aggregator(state)
    node = launch(tmp_path / "a", "hospital_a")
    analyst = {"Authorization": f"Bearer {node.analyst_token}"}
    try:
        owner = {"Authorization": f"Bearer {node.owner_token}"}
        r = httpx.put(f"{node.url}/v1/he/aggregators/main", json={"url": agg_url, "token": tokens["hospital-a"]},
                      headers=owner)
        assert r.status_code == 200, r.text
        sessions = [httpx.post(agg_url + "/v1/sessions", timeout=30, json={
            "dataset": "patients", "op": {"kind": "sum", "columns": ["visits"]}, "epsilon": 0.05,
            "parties": ["hospital-a", "hospital-b"], "protocol": "smpc"}).json() for _ in range(5)]
        replies: dict[int, httpx.Response] = {}

        def contribute(i: int) -> None:
            replies[i] = httpx.post(f"{node.url}/v1/datasets/patients/smpc/contribute", headers=analyst,
                                    json={"aggregator_url": agg_url, "session_id": sessions[i]["session_id"]},
                                    timeout=120)

        def waiting(i: int) -> bool:  # node A posted its key and waits for hospital-b's
            keys = httpx.get(f"{agg_url}/v1/sessions/{sessions[i]['session_id']}/smpc/keys", timeout=30,
                             headers={"Authorization": f"Bearer {tokens['hospital-b']}",
                                      "X-Workbench-Protocol": "1"}).json()
            return keys["waiting_for"] == ["hospital-b"]

        threads = [threading.Thread(target=contribute, args=(i,)) for i in range(2)]
        for i, t in enumerate(threads):
            t.start()
            _poll(lambda i=i: waiting(i), deadline_s=120)  # the first pays; the second replays for free
        for i in range(2, 5):  # more free replays: refused at once, before the aggregator is asked
            contribute(i)
            assert replies[i].status_code == 429 and replies[i].json()["code"] == "rate_limited"
            assert int(replies[i].headers["Retry-After"]) >= 1 and not waiting(i)
        assert httpx.get(f"{node.url}/v1/catalog", headers=owner, timeout=30).status_code == 200
        for session in sessions[:2]:
            assert httpx.post(f"{agg_url}/v1/sessions/{session['session_id']}/abort", timeout=30,
                              headers={"X-Result-Token": session["result_token"]}).status_code == 200
        for t in threads:
            t.join(timeout=120)
        assert all(replies[i].json()["code"] == "session_closed" for i in range(2))
        spent = httpx.get(f"{node.url}/v1/datasets/patients/budget", headers=analyst).json()["epsilon_spent"]
        assert spent == pytest.approx(0.05)  # one charge: the replays and refusals were free
    finally:
        node.stop()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
