"""Prometheus metrics for a node: requests, refusals, latency, budget spent, workers.

Served at ``/metrics`` and ``/v1/metrics`` in the Prometheus text format
(version 0.0.4) to owners and auditors (``Authorization: Bearer <token>``;
give Prometheus an auditor's token through ``credentials_file``). Counting is
done by a pure ASGI middleware: one lock and a few dict updates per request.
Route labels are route *templates* (``/v1/datasets/{name}/dp/release``), never
raw paths, so a client cannot blow up the number of series; unmatched paths
share the label ``unmatched``.

Nothing here is computed from the rows of a dataset: budget figures come from
the ledger, everything else from the requests themselves. Channels may add
their own series (e.g. federated-learning SuperNode state) with
:func:`register_collector`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import defaultdict
from typing import Callable, Iterable

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from sqlalchemy import func, select

__all__ = ["Metrics", "MetricsMiddleware", "collect", "install", "register_collector", "router"]

#: Latency histogram buckets, in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_MAX_ERROR_BODY = 4096
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Extra series producers: ``f(service) -> iterable of exposition lines`` (each with its HELP/TYPE lines).
_collectors: list[Callable[[object], Iterable[str]]] = []


def register_collector(collector: Callable[[object], Iterable[str]]) -> None:
    """Add a producer of extra exposition lines (e.g. a channel's own state)."""
    if collector not in _collectors:
        _collectors.append(collector)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**labels: object) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _num(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(value)


class Metrics:
    """In-process counters (reset when the node restarts, as Prometheus expects)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.time()
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)  # (method, route, status)
        self.refusals: dict[tuple[str, str], int] = defaultdict(int)  # (route, code)
        self.hist: dict[str, list[int]] = {}  # route -> bucket counts (+Inf last)
        self.hist_sum: dict[str, float] = defaultdict(float)
        self.in_flight = 0

    def started_request(self) -> None:
        with self._lock:
            self.in_flight += 1

    def observe(self, method: str, route: str, status: int, seconds: float, code: str | None) -> None:
        with self._lock:
            self.in_flight -= 1
            self.requests[(method, route, str(status))] += 1
            if code is not None:
                self.refusals[(route, code)] += 1
            counts = self.hist.get(route)
            if counts is None:
                counts = self.hist[route] = [0] * (len(BUCKETS) + 1)
            for i, bound in enumerate(BUCKETS):
                if seconds <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            self.hist_sum[route] += seconds

    def lines(self) -> list[str]:
        with self._lock:
            requests = dict(self.requests)
            refusals = dict(self.refusals)
            hist = {k: list(v) for k, v in self.hist.items()}
            hist_sum = dict(self.hist_sum)
            in_flight = self.in_flight
        out = ["# HELP workbench_requests_total HTTP requests answered, by route template and status.",
               "# TYPE workbench_requests_total counter"]
        for (method, route, status), n in sorted(requests.items()):
            out.append(f"workbench_requests_total{_labels(method=method, route=route, status=status)} {n}")
        out += ["# HELP workbench_refusals_total Requests refused with a Workbench error code (4xx/5xx).",
                "# TYPE workbench_refusals_total counter"]
        for (route, code), n in sorted(refusals.items()):
            out.append(f"workbench_refusals_total{_labels(route=route, code=code)} {n}")
        out += ["# HELP workbench_request_duration_seconds Time from request start to the last response byte.",
                "# TYPE workbench_request_duration_seconds histogram"]
        for route, counts in sorted(hist.items()):
            cumulative = 0
            for bound, n in zip(BUCKETS, counts):
                cumulative += n
                out.append(f"workbench_request_duration_seconds_bucket{_labels(route=route, le=_num(bound))} "
                           f"{cumulative}")
            cumulative += counts[-1]
            out.append(f"workbench_request_duration_seconds_bucket{_labels(route=route, le='+Inf')} {cumulative}")
            out.append(f"workbench_request_duration_seconds_sum{_labels(route=route)} {_num(hist_sum[route])}")
            out.append(f"workbench_request_duration_seconds_count{_labels(route=route)} {cumulative}")
        out += ["# HELP workbench_requests_in_flight Requests being served now.",
                "# TYPE workbench_requests_in_flight gauge", f"workbench_requests_in_flight {in_flight}",
                "# HELP workbench_start_time_seconds When this node process started (Unix time).",
                "# TYPE workbench_start_time_seconds gauge", f"workbench_start_time_seconds {_num(self.started)}"]
        return out


def _route_label(scope) -> str:
    """The matched route's template with its router prefix (``/v1/datasets/{name}/rows``), or ``unmatched``."""
    template = getattr(scope.get("route"), "path", None)
    if not template:
        return "unmatched"
    parts, tparts = scope.get("path", "").split("/"), template.split("/")
    if ":path}" in template or len(parts) < len(tparts):
        return template
    return "/".join(parts[:len(parts) - len(tparts) + 1]) + template


class MetricsMiddleware:
    """Pure ASGI middleware: count every HTTP request, its status, error code and latency."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        state = {"status": 500, "body": b"", "json": False}
        self.metrics.started_request()

        async def counting_send(message):
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                if message["status"] >= 400:
                    for k, v in message.get("headers") or []:
                        if k.lower() == b"content-type" and v.startswith(b"application/json"):
                            state["json"] = True
            elif message["type"] == "http.response.body" and state["json"] \
                    and len(state["body"]) < _MAX_ERROR_BODY:
                state["body"] += message.get("body", b"")[:_MAX_ERROR_BODY]
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            status = state["status"]
            code = None
            if status >= 400:
                code = "http_" + str(status)
                if state["json"]:
                    try:
                        code = str(json.loads(state["body"]).get("code", code))[:64]
                    except (ValueError, AttributeError):
                        pass
            route = _route_label(scope)
            self.metrics.observe(scope.get("method", ""), route, status, time.perf_counter() - start, code)


def _ledger_lines(service) -> list[str]:
    from .store import AuditHead, Charge, DatasetBudget, Grant

    out = []
    with service.store.transaction("read") as session:
        budgets = session.execute(select(DatasetBudget)).scalars().all()
        by_state = session.execute(select(Charge.dataset, Charge.state, func.count())
                                   .group_by(Charge.dataset, Charge.state)).all()
        grants = session.execute(select(Grant.dataset, func.count()).where(Grant.revoked.is_(False))
                                 .group_by(Grant.dataset)).all()
        head = session.get(AuditHead, 1)
    out += ["# HELP workbench_dataset_epsilon_spent Privacy loss (epsilon) spent on a dataset, all analysts.",
            "# TYPE workbench_dataset_epsilon_spent gauge"]
    out += [f"workbench_dataset_epsilon_spent{_labels(dataset=b.dataset)} {_num(b.epsilon_spent)}" for b in budgets]
    out += ["# HELP workbench_dataset_epsilon_cap Lifetime epsilon budget of a dataset.",
            "# TYPE workbench_dataset_epsilon_cap gauge"]
    out += [f"workbench_dataset_epsilon_cap{_labels(dataset=b.dataset)} {_num(b.epsilon_cap)}" for b in budgets]
    out += ["# HELP workbench_dataset_delta_spent Delta spent on a dataset, all analysts.",
            "# TYPE workbench_dataset_delta_spent gauge"]
    out += [f"workbench_dataset_delta_spent{_labels(dataset=b.dataset)} {_num(b.delta_spent)}" for b in budgets]
    out += ["# HELP workbench_dataset_delta_cap Lifetime delta budget of a dataset.",
            "# TYPE workbench_dataset_delta_cap gauge"]
    out += [f"workbench_dataset_delta_cap{_labels(dataset=b.dataset)} {_num(b.delta_cap)}" for b in budgets]
    out += ["# HELP workbench_charges Charges in the ledger by dataset and state (reserved, committed, failed).",
            "# TYPE workbench_charges gauge"]
    out += [f"workbench_charges{_labels(dataset=ds, state=st)} {n}" for ds, st, n in sorted(by_state)]
    out += ["# HELP workbench_live_grants Grants not revoked, by dataset.", "# TYPE workbench_live_grants gauge"]
    out += [f"workbench_live_grants{_labels(dataset=ds)} {n}" for ds, n in sorted(grants)]
    out += ["# HELP workbench_audit_records Records in the hash-chained audit log.",
            "# TYPE workbench_audit_records gauge", f"workbench_audit_records {head.last_seq if head else 0}"]
    return out


def _node_lines(service) -> list[str]:
    catalog = service.catalog
    entries = catalog.entries()
    problems = catalog.problems()
    pool = service.pool
    return [
        "# HELP workbench_up 1 while the node answers.", "# TYPE workbench_up gauge", "workbench_up 1",
        "# HELP workbench_datasets Datasets by state (serving or unavailable).", "# TYPE workbench_datasets gauge",
        f"workbench_datasets{_labels(state='serving')} {len(entries)}",
        f"workbench_datasets{_labels(state='unavailable')} {len(problems)}",
        "# HELP workbench_worker_crashes_total Worker processes that died and were replaced.",
        "# TYPE workbench_worker_crashes_total counter", f"workbench_worker_crashes_total {pool.crashes}",
        "# HELP workbench_workers_started Worker processes alive or starting.",
        "# TYPE workbench_workers_started gauge", f"workbench_workers_started {getattr(pool, '_started', 0)}",
        "# HELP workbench_workers_idle Worker processes waiting for a task.",
        "# TYPE workbench_workers_idle gauge", f"workbench_workers_idle {pool.idle}",
        "# HELP workbench_rate_limited_total Requests refused (429) because their user was over their fair share.",
        "# TYPE workbench_rate_limited_total counter", f"workbench_rate_limited_total {service.fair.refused}",
    ]


def _fl_lines(service) -> list[str]:
    """Federated learning on this node: its SuperNode (deployment engine) and its training jobs."""
    fl = getattr(service.config, "fl", None)
    configured = int(getattr(fl, "superlink", None) is not None)
    alive = 0
    if configured:
        import psutil

        try:
            for child in psutil.Process().children(recursive=True):
                try:
                    if any("flower-supernode" in part for part in child.cmdline()[:3]):
                        alive += 1
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    out = ["# HELP workbench_fl_supernode_configured 1 if this node joins a Flower SuperLink.",
           "# TYPE workbench_fl_supernode_configured gauge", f"workbench_fl_supernode_configured {configured}",
           "# HELP workbench_fl_supernode_processes flower-supernode processes started by this node and alive.",
           "# TYPE workbench_fl_supernode_processes gauge", f"workbench_fl_supernode_processes {alive}"]
    try:
        from ..fl import node_jobs
    except ImportError:
        return out
    registry = node_jobs._registries.get(service)  # never create one just to be scraped
    jobs = list(registry._jobs.values()) if registry is not None else []
    by_state: dict[tuple[str, str], int] = defaultdict(int)
    rounds: dict[str, int] = defaultdict(int)
    spent: dict[str, float] = defaultdict(float)
    for job in jobs:
        by_state[(job.dataset, job.status)] += 1
        rounds[job.dataset] += job.releases
        spent[job.dataset] += job.epsilon_spent
    out += ["# HELP workbench_fl_jobs Training jobs held by this node, by dataset and status.",
            "# TYPE workbench_fl_jobs gauge"]
    out += [f"workbench_fl_jobs{_labels(dataset=d, status=st)} {n}" for (d, st), n in sorted(by_state.items())]
    out += ["# HELP workbench_fl_rounds_done Rounds this node has trained for its current jobs.",
            "# TYPE workbench_fl_rounds_done gauge"]
    out += [f"workbench_fl_rounds_done{_labels(dataset=d)} {n}" for d, n in sorted(rounds.items())]
    out += ["# HELP workbench_fl_epsilon_spent Epsilon charged by this node's current training jobs.",
            "# TYPE workbench_fl_epsilon_spent gauge"]
    out += [f"workbench_fl_epsilon_spent{_labels(dataset=d)} {_num(v)}" for d, v in sorted(spent.items())]
    return out


def collect(service, metrics: Metrics | None) -> str:
    """The whole exposition text for one scrape."""
    lines = _node_lines(service)
    if metrics is not None:
        lines += metrics.lines()
    lines += _ledger_lines(service)
    for collector in [_fl_lines] + list(_collectors):
        try:
            lines += list(collector(service))
        except Exception:  # noqa: BLE001 - one broken producer must not hide the rest
            lines += [f"# collector {getattr(collector, '__name__', '?')} failed"]
    return "\n".join(lines) + "\n"


router = APIRouter(tags=["node"])


def _metrics_endpoint(request: Request) -> PlainTextResponse:
    from .routes import principal_of

    caller = principal_of(request)
    caller.require("owner", "auditor")
    service = request.app.state.service
    text = collect(service, getattr(request.app.state, "metrics", None))
    return PlainTextResponse(text, media_type=CONTENT_TYPE)


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> PlainTextResponse:
    """Prometheus metrics (owners and auditors): requests, refusals, latency, budget spent per dataset, workers."""
    return _metrics_endpoint(request)


def install(app, service) -> Metrics:
    """Register the middleware and the ``/metrics`` + ``/v1/metrics`` routes on ``app``."""
    m = Metrics()
    app.state.metrics = m
    app.include_router(router, prefix="/v1")
    app.include_router(router, include_in_schema=False)
    app.add_middleware(MetricsMiddleware, metrics=m)
    return m
