"""The load kit: a real node process, N concurrent analysts over loopback, and the checks of its books.

Shared by the benchmark script (``benchmarks/load.py``, which prints the table) and
``tests/adversarial/test_load.py`` (a small run); see ``benchmarks/load.py`` for the phases.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(__file__).resolve().parent / "data"
TOL = 1e-9
RAW_ID = re.compile(rb"\bP\d{7}\b")  # the demo generator's patient ids
TIGHT_EPSILON = 0.05  # the small dataset's lifetime cap in the race
RACE_EPSILON = 0.01


# ---------------------------------------------------------------- set-up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def patients_file(rows: int, seed: int = 7, folder: Path = DATA_DIR) -> Path:
    """A ``rows``-row patients parquet (cached by size and seed)."""
    from workbench.demo.data import patients

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"patients_{rows}_{seed}.parquet"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        patients(rows, seed).write_parquet(tmp)
        tmp.replace(path)
    return path


@dataclass
class Setup:
    root: Path
    config_path: Path
    port: int
    owner_token: str
    analysts: dict[str, str]  # name -> token
    rows: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def prepare(root: Path, rows: int, analysts: int, workers: int = 2, data: Path | None = None,
            grant_epsilon: float = 1000.0) -> Setup:
    """A node config over a ``rows``-row patients file, an owner and ``analysts`` analysts with grants."""
    import tomli_w

    from workbench.demo.data import PATIENT_COLUMNS
    from workbench.demo.nodes import patients_entry
    from workbench.node import admin
    from workbench.node.service import NodeService
    from workbench.node.settings import NodeConfig

    root.mkdir(parents=True, exist_ok=True)
    data = data or patients_file(rows)
    port = free_port()
    big = dict(patients_entry(data, "load"), max_rows=max(rows, 1), budget={"epsilon": 1e6, "delta": 0.5},
               columns=PATIENT_COLUMNS)
    tight = dict(big, budget={"epsilon": TIGHT_EPSILON, "delta": 0.0})
    config = {"node": {"name": "load", "state_dir": "state", "port": port, "workers": workers},
              "datasets": {"patients": big, "tight": tight}}
    config_path = root / "node.toml"
    config_path.write_text(tomli_w.dumps(config))
    service = NodeService(NodeConfig.load(config_path), start_workers=False)
    try:
        owner = admin.add_user(service.store, service.authority, "owner", "owner", actor="load-setup")
        tokens = {}
        for i in range(analysts):
            name = f"analyst{i:02d}"
            tokens[name] = admin.add_user(service.store, service.authority, name, "analyst", actor="load-setup")
            admin.add_grant(service.store, name, "patients", "load test", grant_epsilon, 1e-3, actor="load-setup")
            admin.add_grant(service.store, name, "tight", "budget race", 1.0, 0.0, actor="load-setup")
    finally:
        service.close()
    return Setup(root, config_path, port, owner, tokens, rows)


def start_node(setup: Setup, timeout_s: float = 90.0) -> subprocess.Popen:
    """``workbench node serve`` in its own session on loopback; waits for /v1/health."""
    log = open(setup.root / "node.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "workbench.cli", "node", "serve", "--config",
                             str(setup.config_path), "--host", "127.0.0.1", "--port", str(setup.port)],
                            start_new_session=True, stdout=log, stderr=log, cwd=str(ROOT))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"node exited: {(setup.root / 'node.log').read_text()[-2000:]}")
        try:
            if httpx.get(setup.url + "/v1/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_node(proc, signal.SIGKILL)
    raise RuntimeError("node did not start in time")


def stop_node(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


# ---------------------------------------------------------------- the questions


def question_pool() -> list[dict]:
    """Distinct DP questions (each a fresh release the first time a user asks it)."""
    shapes = [
        {"kind": "count"},
        {"kind": "mean", "column": "age"},
        {"kind": "mean", "column": "bmi"},
        {"kind": "sum", "column": "visits"},
        {"kind": "count", "by": ["sex"]},
        {"kind": "count", "by": ["region", "sex"]},
        {"kind": "mean", "column": "cost", "by": ["diagnosis"]},
        {"kind": "histogram", "column": "age", "bins": 10},
        {"kind": "histogram", "column": "diagnosis"},
    ]
    epsilons = [round(0.01 + 0.001 * i, 4) for i in range(12)]
    return [{"query": q, "epsilon": e} for e in epsilons for q in shapes]


def fresh_questions(rng: random.Random, n_epsilons: int = 150) -> list[dict]:
    """More distinct questions (the same shapes at other losses) for the honest analysts of the hostile
    phases, so every release they make there is a fresh, charged one."""
    shapes = [q["query"] for q in question_pool()[:9]]
    out = [{"query": q, "epsilon": round(0.2 + 0.0005 * i, 5)} for i in range(n_epsilons) for q in shapes]
    rng.shuffle(out)
    return out


# ---------------------------------------------------------------- the analysts


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    charged: dict[str, float] = field(default_factory=lambda: defaultdict(float))  # (user) -> epsilon seen
    releases_seen: set = field(default_factory=set)  # (user, release_id) charged
    statuses: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    leaked: int = 0
    wall: float = 0.0
    cpu: "np.ndarray" = field(default_factory=lambda: np.zeros(2))  # node CPU seconds: (server, workers)


class Reply:
    """The parts of an HTTP response the analysts look at."""

    def __init__(self, status_code: int, content: bytes):
        self.status_code = status_code
        self.content = content

    def json(self):
        return json.loads(self.content)


class LoopbackHTTP:
    """A minimal HTTP/1.1 keep-alive client for JSON POSTs over loopback.

    The load generator shares the node's two cores, so its own cost per request
    must stay small: httpx spends ~3 ms of CPU per request here, this ~0.2 ms.
    Up to ``max_connections`` connections are opened and reused.
    """

    def __init__(self, url: str, token: str, max_connections: int = 16, timeout_s: float = 120.0):
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.timeout = timeout_s
        self._head = (f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
                      "Content-Type: application/json\r\nConnection: keep-alive\r\n").encode()
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def post(self, path: str, json_body: dict | None, method: str = "POST") -> Reply:
        body = json.dumps(json_body).encode() if json_body is not None else b""
        request = (f"{method} {path} HTTP/1.1\r\n".encode() + self._head
                   + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        async with self._slots:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else await asyncio.open_connection(self.host, self.port)
            try:
                reply, keep = await asyncio.wait_for(self._exchange(conn, request), self.timeout)
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                conn[1].close()
                if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                    raise
                # The server closed an idle keep-alive connection as we reused it: one fresh attempt.
                conn = await asyncio.open_connection(self.host, self.port)
                try:
                    reply, keep = await asyncio.wait_for(self._exchange(conn, request), self.timeout)
                except BaseException:
                    conn[1].close()
                    raise
            except BaseException:
                conn[1].close()
                raise
            if keep:
                self._idle.append(conn)
            else:
                conn[1].close()
            return reply

    @staticmethod
    async def _exchange(conn, request: bytes) -> tuple[Reply, bool]:
        reader, writer = conn
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
        if "content-length" in headers:
            content = await reader.readexactly(int(headers["content-length"]))
        else:  # chunked (never sent by uvicorn for these JSON bodies, but be correct)
            content = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                content += chunk[:-2]
        return Reply(status, content), headers.get("connection", "").lower() != "close"

    async def aclose(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


class Analyst:
    def __init__(self, name: str, token: str, url: str, pool: list[dict], rng: random.Random):
        self.name = name
        self.http = LoopbackHTTP(url, token)
        self.todo = list(pool)
        rng.shuffle(self.todo)
        self.asked: list[dict] = []
        self.rng = rng

    async def call(self, kind: str, path: str, body: dict | None, stats: Stats, method: str = "POST") -> Reply | None:
        t0 = time.perf_counter()
        try:
            response = await self.http.post(path, body, method)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            stats.errors[f"{kind}:{type(exc).__name__}"] += 1
            return None
        stats.latencies[kind].append(time.perf_counter() - t0)
        stats.statuses[response.status_code] += 1
        if RAW_ID.search(response.content):  # raw patient ids never leave the node
            stats.leaked += 1
        if response.status_code != 200:
            stats.errors[f"{kind}:{response.json().get('code', response.status_code)}"] += 1
            return None
        if kind in ("release", "replay", "race"):
            out = response.json()
            if out["epsilon_charged"] > 0:
                stats.charged[self.name] += out["epsilon_charged"]
                stats.releases_seen.add((self.name, out["release_id"]))
        return response

    async def release_new(self, stats: Stats, dataset: str = "patients") -> bool:
        if not self.todo:
            return False
        q = self.todo.pop()
        body = dict(q, request_id=f"{self.name}-{len(self.asked):06d}-{self.rng.getrandbits(32):08x}")
        if await self.call("release", f"/v1/datasets/{dataset}/dp/release", body, stats) is not None:
            self.asked.append(q)
        return True

    async def replay(self, stats: Stats) -> None:
        q = self.rng.choice(self.asked)
        await self.call("replay", "/v1/datasets/patients/dp/release", dict(q), stats)

    async def preview(self, stats: Stats, pool: list[dict]) -> None:
        await self.call("preview", "/v1/datasets/patients/dp/preview", dict(self.rng.choice(pool)), stats)

    async def close(self) -> None:
        await self.http.aclose()


def node_cpu(pid: int | None) -> tuple[float, float]:
    """CPU seconds used so far by the node's process and by its workers: (server, workers)."""
    if pid is None:
        return np.zeros(2)
    import psutil

    try:
        main = psutil.Process(pid)
        own = main.cpu_times()
        server = own.user + own.system
        workers = 0.0
        for child in main.children(recursive=True):
            try:
                t = child.cpu_times()
                workers += t.user + t.system
            except psutil.Error:
                pass
        return np.array([server, workers + own.children_user + own.children_system])
    except psutil.Error:
        return np.zeros(2)


async def _phase(analysts: list[Analyst], mix: dict[str, float], seconds: float, max_requests: int,
                 pool: list[dict], node_pid: int | None = None) -> Stats:
    stats = Stats()
    deadline = time.monotonic() + seconds
    budget = {"left": max_requests}
    kinds, weights = zip(*mix.items())

    async def loop(a: Analyst) -> None:
        while time.monotonic() < deadline and budget["left"] > 0:
            budget["left"] -= 1
            kind = a.rng.choices(kinds, weights)[0]
            if kind == "replay" and a.asked:
                await a.replay(stats)
            elif kind == "preview" or (kind == "replay" and not a.asked):
                await a.preview(stats, pool)
            elif not await a.release_new(stats):
                await a.replay(stats)

    cpu0 = node_cpu(node_pid)
    t0 = time.perf_counter()
    await asyncio.gather(*(loop(a) for a in analysts))
    stats.wall = time.perf_counter() - t0
    stats.cpu = node_cpu(node_pid) - cpu0
    return stats


async def _race(analysts: list[Analyst], per_analyst: int) -> Stats:
    """Everyone at once against the tight dataset: its cap admits TIGHT_EPSILON / RACE_EPSILON releases."""
    stats = Stats()
    t0 = time.perf_counter()
    jobs = []
    shapes = [{"kind": "count", "by": [c]} for c in ("region", "sex", "diagnosis", "smoker", "readmitted")]
    shapes += [{"kind": "count"}, {"kind": "histogram", "column": "age", "bins": 5}]
    for a in analysts:
        for i in range(per_analyst):
            body = {"query": shapes[i % len(shapes)], "epsilon": RACE_EPSILON,
                    "request_id": f"race-{a.name}-{i:04d}"}
            jobs.append(a.call("race", "/v1/datasets/tight/dp/release", body, stats))
    await asyncio.gather(*jobs)
    stats.wall = time.perf_counter() - t0
    return stats


async def _warm(analysts: list[Analyst], stats: Stats, n: int) -> None:
    """Each analyst releases ``n`` questions first, so the replay phase has stored answers."""
    async def one(a: Analyst) -> None:
        for _ in range(n):
            await a.release_new(stats)
    await asyncio.gather(*(one(a) for a in analysts))


# ---------------------------------------------------------------- the hostile analyst (issue 16)

HOSTILE_LOOPS = 8  # concurrent loops of the one hostile analyst
HONEST = 4  # honest analysts measured alone and under the hostile one


def hostile_call(n: int) -> tuple[str, str, dict | None]:
    """The n-th free heavy call of the hostile analyst's loop; a new loss every time defeats every cache."""
    eps = round(0.5 + 1e-5 * n, 7)
    calls = [
        ("POST", "/v1/datasets/patients/dp/preview",  # private keys + delta: OpenDP's noise search
         {"query": {"kind": "count", "by": ["patient_id"]}, "epsilon": eps, "delta": 1e-6}),
        ("POST", "/v1/datasets/patients/dp/preview",
         {"query": {"kind": "count", "by": ["region", "sex"]}, "epsilon": eps, "delta": 1e-6}),
        ("POST", "/v1/datasets/patients/dp/preview",
         {"query": {"kind": "quantile", "column": "age", "quantile": 0.5}, "epsilon": eps}),
        ("POST", "/v1/datasets/patients/synth/preview", {"spec": {"method": "mst", "rows": 1000}, "epsilon": eps}),
        ("POST", "/v1/datasets/patients/he/preview",
         {"op": {"kind": "linreg", "y": "cost", "x": ["age", "bmi"]}, "epsilon": eps, "parties": 3}),
        ("GET", "/v1/catalog", None),
        ("GET", "/v1/synth/mocks", None),
        ("GET", "/v1/history", None),
    ]
    return calls[n % len(calls)]


async def _versus(honest: list[Analyst], hostile: Analyst, seconds: float, max_requests: int, pool: list[dict],
                  node_pid: int | None) -> tuple[Stats, Stats]:
    """The honest analysts' fresh releases while the hostile analyst loops over free heavy calls."""
    hostile_stats = Stats()
    deadline = time.monotonic() + seconds
    counter = itertools.count()

    async def loop() -> None:
        while time.monotonic() < deadline:
            n = next(counter)
            if hostile.asked and n % 9 == 8:
                await hostile.replay(hostile_stats)
                continue
            method, path, body = hostile_call(n)
            await hostile.call("hostile", path, body, hostile_stats, method)

    t0 = time.perf_counter()
    honest_stats, *_ = await asyncio.gather(_phase(honest, {"release": 1.0}, seconds, max_requests, pool, node_pid),
                                            *(loop() for _ in range(HOSTILE_LOOPS)))
    hostile_stats.wall = time.perf_counter() - t0
    return honest_stats, hostile_stats


async def drive(setup: Setup, seconds: float, max_requests: int, seed: int = 0,
                mix: dict[str, float] | None = None, race_per_analyst: int = 3,
                node_pid: int | None = None, hostile: bool = True, only_hostile: bool = False) -> dict[str, Stats]:
    pool = question_pool()
    rng = random.Random(seed)
    analysts = [Analyst(n, t, setup.url, pool, random.Random(rng.getrandbits(32))) for n, t in setup.analysts.items()]
    phases: dict[str, Stats] = {}
    try:
        phases["warm-up"] = Stats()
        await _warm(analysts, phases["warm-up"], 2)
        if not only_hostile:
            phases["replay"] = await _phase(analysts, {"replay": 1.0}, seconds, max_requests, pool, node_pid)
            phases["release"] = await _phase(analysts, {"release": 1.0}, seconds, max_requests, pool, node_pid)
            phases["mixed"] = await _phase(analysts, mix or {"preview": 0.6, "replay": 0.3, "release": 0.1},
                                           seconds, max_requests, pool, node_pid)
        if hostile and len(analysts) > 1:
            hostile_one, honest = analysts[0], analysts[1:1 + HONEST]
            for a in honest:
                a.todo = fresh_questions(a.rng)
            phases["honest"] = await _phase(honest, {"release": 1.0}, seconds, max_requests, pool, node_pid)
            phases["vs-hostile"], phases["hostile"] = await _versus(honest, hostile_one, seconds, max_requests, pool,
                                                                    node_pid)
        phases["race"] = await _race(analysts, race_per_analyst)
    finally:
        await asyncio.gather(*(a.close() for a in analysts))
    return phases


# ---------------------------------------------------------------- checks on the node's own state


def ledger_report(config_path: Path) -> dict:
    """Read the node's SQLite state directly: budgets, charges and releases must agree.

    Returns ``{"overspent": [...], "mismatch": [...], "uncharged_releases": n, "reserved": n,
    "spent_by_user": {...}, "charges": n, "releases": n}``.
    """
    from workbench.node.settings import NodeConfig

    config = NodeConfig.load(config_path)
    db = sqlite3.connect(f"file:{config.node.state_dir / 'node.sqlite'}?mode=ro", uri=True)
    try:
        overspent, mismatch = [], []
        charged = defaultdict(float)
        for gid, eps, delta in db.execute("SELECT grant_id, SUM(epsilon), SUM(delta) FROM charges "
                                          "WHERE grant_id IS NOT NULL GROUP BY grant_id"):
            charged[gid] = (eps, delta)
        for gid, user, ds, eps, delta, eps_spent, delta_spent in db.execute(
                "SELECT id, user_name, dataset, epsilon, delta, epsilon_spent, delta_spent FROM grants"):
            if eps_spent > eps + TOL or delta_spent > delta + TOL * 1e-6:
                overspent.append(f"grant {gid} ({user}/{ds}) spent {eps_spent} of {eps}")
            c_eps, c_delta = charged.get(gid, (0.0, 0.0))
            if abs(c_eps - eps_spent) > 1e-6 or abs(c_delta - delta_spent) > 1e-12:
                mismatch.append(f"grant {gid}: charges sum {c_eps} but grant says {eps_spent}")
        for ds, cap, spent in db.execute("SELECT dataset, epsilon_cap, epsilon_spent FROM dataset_budgets"):
            total = db.execute("SELECT COALESCE(SUM(epsilon), 0) FROM charges WHERE dataset = ?", (ds,)).fetchone()[0]
            if spent > cap + TOL:
                overspent.append(f"dataset {ds} spent {spent} of {cap}")
            if abs(total - spent) > 1e-6:
                mismatch.append(f"dataset {ds}: charges sum {total} but cap row says {spent}")
        uncharged = db.execute(
            "SELECT COUNT(*) FROM releases r LEFT JOIN charges c ON c.id = r.charge_id "
            "WHERE c.id IS NULL OR c.state != 'committed' OR (c.epsilon <= 0 AND c.grant_id IS NOT NULL)").fetchone()[0]
        committed_without_answer = db.execute(
            "SELECT COUNT(*) FROM charges c LEFT JOIN releases r ON r.charge_id = c.id "
            "WHERE c.state = 'committed' AND r.id IS NULL").fetchone()[0]
        reserved = db.execute("SELECT COUNT(*) FROM charges WHERE state = 'reserved'").fetchone()[0]
        spent_by_user = dict(db.execute("SELECT user_name, SUM(epsilon) FROM charges GROUP BY user_name").fetchall())
        charges = db.execute("SELECT COUNT(*) FROM charges").fetchone()[0]
        releases = db.execute("SELECT COUNT(*) FROM releases").fetchone()[0]
        release_ids = {tuple(r) for r in db.execute("SELECT user_name, id FROM releases")}
        failed = db.execute("SELECT COUNT(*) FROM charges WHERE state = 'failed'").fetchone()[0]
    finally:
        db.close()
    return {"overspent": overspent, "mismatch": mismatch, "uncharged_releases": uncharged,
            "committed_without_answer": committed_without_answer, "reserved": reserved, "failed": failed,
            "spent_by_user": spent_by_user, "charges": charges, "releases": releases, "release_ids": release_ids}


def audit_verify(config_path: Path) -> tuple[bool, str]:
    """``workbench node audit verify`` as an owner would run it."""
    out = subprocess.run([sys.executable, "-m", "workbench.cli", "node", "audit", "verify", "--config",
                          str(config_path)], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
    return out.returncode == 0, (out.stdout + out.stderr).strip()


# ---------------------------------------------------------------- report


def summarize(phases: dict[str, Stats]) -> list[dict]:
    rows = []
    for phase, stats in phases.items():
        for kind, lat in sorted(stats.latencies.items()):
            arr = np.asarray(lat) * 1000
            total = sum(len(v) for v in stats.latencies.values())
            rows.append({"phase": phase, "kind": kind, "n": len(lat),
                         "per_s": len(lat) / stats.wall if stats.wall else float("nan"),
                         "server_cpu_ms": 1000 * stats.cpu[0] / total if total else float("nan"),
                         "worker_cpu_ms": 1000 * stats.cpu[1] / total if total else float("nan"),
                         "p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)),
                         "errors": sum(v for k, v in stats.errors.items() if k.startswith(kind + ":"))})
    return rows


def hostile_ratio(phases: dict[str, Stats]) -> tuple[float, float, float] | None:
    """(honest p99 alone, honest p99 under the hostile analyst, ratio) of fresh releases, in ms."""
    alone, under = phases.get("honest"), phases.get("vs-hostile")
    if alone is None or under is None or not alone.latencies.get("release") or not under.latencies.get("release"):
        return None
    a = float(np.percentile(np.asarray(alone.latencies["release"]) * 1000, 99))
    b = float(np.percentile(np.asarray(under.latencies["release"]) * 1000, 99))
    return a, b, b / a


def print_table(rows: list[dict], file=sys.stdout) -> None:
    print(f"{'phase':8s} {'kind':8s} {'n':>7s} {'req/s':>9s} {'p50 ms':>9s} {'p99 ms':>9s} {'refused':>8s} "
          f"{'node CPU ms/req':>16s} {'worker CPU ms/req':>18s}", file=file)
    for r in rows:
        print(f"{r['phase']:8s} {r['kind']:8s} {r['n']:7d} {r['per_s']:9.1f} {r['p50_ms']:9.1f} {r['p99_ms']:9.1f} "
              f"{r['errors']:8d} {r['server_cpu_ms']:16.2f} {r['worker_cpu_ms']:18.2f}", file=file)


@dataclass
class Outcome:
    rows: list[dict]
    phases: dict[str, Stats]
    ledger: dict
    audit_ok: bool
    audit_text: str
    problems: list[str]


def check(setup: Setup, phases: dict[str, Stats], ledger: dict, audit_ok: bool, audit_text: str) -> list[str]:
    """Everything that must hold after a run; an empty list means it held."""
    problems = list(ledger["overspent"]) + list(ledger["mismatch"])
    if ledger["uncharged_releases"]:
        problems.append(f"{ledger['uncharged_releases']} released answers have no committed charge")
    if ledger["committed_without_answer"]:
        problems.append(f"{ledger['committed_without_answer']} committed charges have no stored answer")
    if ledger["reserved"]:
        problems.append(f"{ledger['reserved']} reservations left open after a clean stop")
    if not audit_ok:
        problems.append("audit chain: " + audit_text)
    seen_by_user: dict[str, float] = defaultdict(float)
    seen_ids = set()
    for stats in phases.values():
        for user, eps in stats.charged.items():
            seen_by_user[user] += eps
        seen_ids |= stats.releases_seen
        if stats.leaked:
            problems.append(f"{stats.leaked} responses carried a raw patient id")
        if any(code >= 500 for code in stats.statuses):
            problems.append(f"5xx responses: {dict(stats.statuses)}")
    for user, eps in seen_by_user.items():
        if abs(ledger["spent_by_user"].get(user, 0.0) - eps) > 1e-6:
            problems.append(f"{user}: clients were charged {eps}, ledger says {ledger['spent_by_user'].get(user)}")
    if not seen_ids <= ledger["release_ids"]:
        problems.append(f"{len(seen_ids - ledger['release_ids'])} answers the clients got are not in the ledger")
    race = phases.get("race")
    if race is not None:
        won = len(race.latencies.get("race", [])) - race.errors.get("race:dataset_budget_exceeded", 0) \
            - race.errors.get("race:budget_exceeded", 0)
        allowed = int(round(TIGHT_EPSILON / RACE_EPSILON))
        if won > allowed:
            problems.append(f"race: {won} releases succeeded on a cap that admits {allowed}")
    return problems


def run(root: Path, rows: int, analysts: int, seconds: float, max_requests: int, workers: int = 2,
        seed: int = 0, data: Path | None = None, hostile: bool = True, only_hostile: bool = False) -> Outcome:
    setup = prepare(root, rows, analysts, workers=workers, data=data)
    proc = start_node(setup)
    try:
        phases = asyncio.run(drive(setup, seconds, max_requests, seed=seed, node_pid=proc.pid, hostile=hostile,
                                   only_hostile=only_hostile))
    finally:
        stop_node(proc)
    ledger = ledger_report(setup.config_path)
    ok, text = audit_verify(setup.config_path)
    return Outcome(summarize(phases), phases, ledger, ok, text, check(setup, phases, ledger, ok, text))
