"""Prometheus metrics for a node: requests, refusals, latency, budget spent, workers.

Served at ``/metrics`` and ``/v1/metrics`` in the Prometheus text format
(version 0.0.4, written by ``prometheus_client``) to owners and auditors
(``Authorization: Bearer <token>``; give Prometheus an auditor's token through
``credentials_file``). Counting is done by a pure ASGI middleware. Route labels
are route *templates* (``/v1/datasets/{name}/dp/release``), never raw paths, so
a client cannot blow up the number of series; unmatched paths share the label
``unmatched``. A middleware that answers a request itself (the replay fast
path) names its route template in ``scope["workbench.route"]``.

Nothing here is computed from the rows of a dataset: budget figures come from
the ledger, everything else from the requests themselves. Channels add their
own series (e.g. federated-learning SuperNode state) with
:func:`register_collector`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Callable, Iterable

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from sqlalchemy import func, select

__all__ = ["Metrics", "MetricsMiddleware", "ROUTE_KEY", "install", "register_collector", "router"]

log = logging.getLogger(__name__)

#: Latency histogram buckets, in seconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The ASGI scope key where a middleware that answers by itself names the route template it stands in for.
ROUTE_KEY = "workbench.route"
_MAX_ERROR_BODY = 4096

#: Channel series producers: ``f(service) -> iterable of prometheus_client metric families``.
_collectors: list[Callable[[object], Iterable[Metric]]] = []


def register_collector(collector: Callable[[object], Iterable[Metric]]) -> None:
    """Add a producer of extra metric families (e.g. a channel's own state), called at every scrape."""
    if collector not in _collectors:
        _collectors.append(collector)


class Metrics:
    """The request series of one node app, in its own registry (reset when the node restarts)."""

    def __init__(self, service) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("workbench_requests", "HTTP requests answered, by route template and status.",
                                ["method", "route", "status"], registry=self.registry)
        self.refusals = Counter("workbench_refusals", "Requests refused with a Workbench error code (4xx/5xx).",
                                ["route", "code"], registry=self.registry)
        self.duration = Histogram("workbench_request_duration_seconds",
                                  "Time from request start to the last response byte.", ["route"],
                                  buckets=BUCKETS, registry=self.registry)
        self.in_flight = Gauge("workbench_requests_in_flight", "Requests being served now.", registry=self.registry)
        started = Gauge("workbench_start_time_seconds", "When this node process started (Unix time).",
                        registry=self.registry)
        started.set(time.time())
        self.registry.register(_NodeCollector(service))

    def observe(self, method: str, route: str, status: int, seconds: float, code: str | None) -> None:
        self.requests.labels(method, route, str(status)).inc()
        if code is not None:
            self.refusals.labels(route, code).inc()
        self.duration.labels(route).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _NodeCollector:
    """Series read at scrape time: node state, the ledger, and every registered channel collector."""

    def __init__(self, service) -> None:
        self.service = service

    def describe(self) -> list:
        return []  # families vary with the registered channels: collected, never pre-described

    def collect(self) -> Iterable[Metric]:
        yield from _node_families(self.service)
        yield from _ledger_families(self.service)
        up = GaugeMetricFamily("workbench_collector_up", "1 if a channel's metrics collector answered the scrape.",
                               labels=["collector"])
        for collector in list(_collectors):
            name = getattr(collector, "__qualname__", "?")
            try:
                families = list(collector(self.service))
            except Exception:  # noqa: BLE001 - one broken producer must not hide the rest
                log.exception("metrics collector %s failed", name)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _node_families(service) -> Iterable[Metric]:
    catalog, pool = service.catalog, service.pool
    yield _gauge("workbench_up", "1 while the node answers.", 1)
    datasets = GaugeMetricFamily("workbench_datasets", "Datasets by state (serving or unavailable).",
                                 labels=["state"])
    datasets.add_metric(["serving"], len(catalog.entries()))
    datasets.add_metric(["unavailable"], len(catalog.problems()))
    yield datasets
    yield CounterMetricFamily("workbench_worker_crashes", "Worker processes that died and were replaced.",
                              value=pool.crashes)
    yield _gauge("workbench_workers_started", "Worker processes alive or starting.", getattr(pool, "_started", 0))
    yield _gauge("workbench_workers_idle", "Worker processes waiting for a task.", pool.idle)
    yield CounterMetricFamily("workbench_rate_limited", "Requests refused (429) because their user was over their "
                              "fair share.", value=service.fair.refused)


def _ledger_families(service) -> Iterable[Metric]:
    from .store import AuditHead, Charge, DatasetBudget, Grant

    with service.store.transaction("read") as session:
        budgets = session.execute(select(DatasetBudget)).scalars().all()
        by_state = session.execute(select(Charge.dataset, Charge.state, func.count())
                                   .group_by(Charge.dataset, Charge.state)).all()
        grants = session.execute(select(Grant.dataset, func.count()).where(Grant.revoked.is_(False))
                                 .group_by(Grant.dataset)).all()
        head = session.get(AuditHead, 1)
    per_dataset = [("epsilon_spent", "Privacy loss (epsilon) spent on a dataset, all analysts."),
                   ("epsilon_cap", "Lifetime epsilon budget of a dataset."),
                   ("delta_spent", "Delta spent on a dataset, all analysts."),
                   ("delta_cap", "Lifetime delta budget of a dataset.")]
    for field, doc in per_dataset:
        family = GaugeMetricFamily(f"workbench_dataset_{field}", doc, labels=["dataset"])
        for b in budgets:
            family.add_metric([b.dataset], float(getattr(b, field)))
        yield family
    charges = GaugeMetricFamily("workbench_charges",
                                "Charges in the ledger by dataset and state (reserved, committed, failed).",
                                labels=["dataset", "state"])
    for dataset, state, n in sorted(by_state):
        charges.add_metric([dataset, state], n)
    yield charges
    live = GaugeMetricFamily("workbench_live_grants", "Grants not revoked, by dataset.", labels=["dataset"])
    for dataset, n in sorted(grants):
        live.add_metric([dataset], n)
    yield live
    yield _gauge("workbench_audit_records", "Records in the hash-chained audit log.", head.last_seq if head else 0)


def _route_label(scope) -> str:
    """The matched route's template with its router prefix (``/v1/datasets/{name}/rows``), or ``unmatched``."""
    named = scope.get(ROUTE_KEY)
    if named:
        return named
    template = getattr(scope.get("route"), "path", None)
    if not template:
        return "unmatched"
    parts, tparts = scope.get("path", "").split("/"), template.split("/")
    if ":path}" in template or len(parts) < len(tparts):
        return template
    return "/".join(parts[:len(parts) - len(tparts) + 1]) + template


def _error_code(status: int, body: bytes, is_json: bool) -> str | None:
    if status < 400:
        return None
    code = "http_" + str(status)
    if is_json:
        try:
            code = str(json.loads(body).get("code", code))[:64]
        except (ValueError, AttributeError):
            pass
    return code


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
        self.metrics.in_flight.inc()

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
            self.metrics.in_flight.dec()
            status = state["status"]
            self.metrics.observe(scope.get("method", ""), _route_label(scope), status,
                                 time.perf_counter() - start, _error_code(status, state["body"], state["json"]))


router = APIRouter(tags=["node"])


@router.get("/metrics", response_class=Response)
def metrics(request: Request) -> Response:
    """Prometheus metrics (owners and auditors): requests, refusals, latency, budget spent per dataset, workers."""
    from .deps import principal_of

    principal_of(request).require("owner", "auditor")
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_PLAIN_0_0_4)


def install(app, service) -> Metrics:
    """Register the middleware and the ``/metrics`` + ``/v1/metrics`` routes on ``app``."""
    m = Metrics(service)
    app.state.metrics = m
    app.include_router(router, prefix="/v1")
    app.include_router(router, include_in_schema=False)
    app.add_middleware(MetricsMiddleware, metrics=m)
    return m
