"""The node half of the DP channel: preview and release endpoints.

Privacy guarantee: a release answers one validated :class:`DPQuery` with an
OpenDP measurement satisfying the requested (epsilon, delta) at the dataset's
privacy unit, charged through the release gate before it is computed.
Previews compute only from public metadata and charge nothing.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import OrderedDict

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from workbench.errors import InvalidQuery
from workbench.protocol import (Accuracy, Budget, DPPreview, DPQuery, DPRelease, DPRequest, Table, dp_answer_for_protocol,
                        require_supported_protocol)
from workbench.node.auth import Principal
from workbench.node import policy
from workbench.node.catalog import DatasetEntry
from workbench.node.consent import consent_spec
from workbench.node.data import task_payload
from workbench.node.gate import Outcome, spec_hash
from workbench.node.ledger import Cost, choose_grant, left
from workbench.node.deps import Caller, Service, protocol_of
from workbench.node.service import NodeService
from workbench.query.validate import delta_used, validate
from workbench.query import language
from workbench.channels.dp.columnar import copy_path
from workbench.channels.dp.pushdown.run import check as pushdown_check
from workbench.node.sources import pushdown_task
from workbench.query.sql import compile_sql
from workbench.query.text import readable

router = APIRouter(tags=["dp"])
ALPHA = 0.05


class PreviewCache:
    """This node's accuracy previews by query shape (metadata only, so sharing them leaks nothing)."""

    SIZE = 1024

    def __init__(self, _service: NodeService | None = None):
        self._items: "OrderedDict[str, dict]" = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> dict | None:
        with self._lock:
            return self._items.get(key)

    def put(self, key: str, value: dict) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.SIZE:
                self._items.popitem(last=False)


def _task(service: NodeService, entry: DatasetEntry, body: DPRequest, mode: str) -> dict:
    spec = identity(body.query)
    key = hashlib.sha256(json.dumps([entry.name, entry.version, entry.info.model_dump(mode="json"), spec,
                                     body.epsilon, body.delta, ALPHA], sort_keys=True).encode()).hexdigest()
    if entry.source is not None:  # a table in PostgreSQL or Spark (workbench.channels.dp.pushdown): no file, no copy
        return {"info": entry.info.model_dump(mode="json"), "query": spec, "epsilon": body.epsilon,
                "delta": body.delta, "alpha": ALPHA, "mode": mode, "format": "table", "path": None, "stamp": None,
                "columnar": None, "consent": consent_spec(entry.config), "cache_key": key,
                "source": pushdown_task(entry, service.config.node.state_dir)}
    return task_payload(entry, query=spec, epsilon=body.epsilon, delta=body.delta, alpha=ALPHA, mode=mode,
                        columnar=_columnar(service), cache_key=key, source=None)


def _target(entry: DatasetEntry) -> str:
    """The worker task that answers a query on this dataset: OpenDP on Polars, or the SQL pushdown."""
    return "dp.pushdown" if entry.source is not None else "dp.query"


class CopyLocks:
    """One lock per dataset version, so concurrent first releases wait for one copy instead of writing several."""

    def __init__(self, _service: NodeService | None = None):
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._lock = threading.Lock()

    def of(self, name: str, version: str) -> threading.Lock:
        with self._lock:
            return self._locks.setdefault((name, version), threading.Lock())


def _copied(service: NodeService, entry: DatasetEntry, task: dict, user: str) -> None:
    """A file dataset's columnar copy, written before the gate charges anything: at a billion rows it takes minutes
    (``copy_timeout_s``, not the release's ``query_timeout_s``), and a failure or a timeout here costs nothing."""
    if task.get("columnar") is None or copy_path(task["columnar"], entry.info).exists():
        return
    with service.state_of("dp.copies", CopyLocks).of(entry.name, entry.version):
        if not copy_path(task["columnar"], entry.info).exists():
            with service.fair.admit(user, "compute"):
                service.pool.run("dp.copy", task, timeout_s=service.config.node.copy_timeout_s, user=user)


def _columnar(service: NodeService) -> str:
    """Where the workers keep their columnar copies of the datasets (see :mod:`workbench.channels.dp.columnar`)."""
    return str(service.config.node.state_dir / "columnar")


def _checked(service: NodeService, name: str, body: DPRequest) -> tuple[DatasetEntry, DPRequest]:
    """The dataset and the request as the node prices it: its question in canonical form (SQL compiled),
    delta only if the query uses one; or a refusal that charges nothing."""
    require_supported_protocol(body.protocol)
    entry = service.catalog.get(name)
    policy.check_loss(service, body.epsilon, body.delta)
    query = body.query
    if query.kind == "sql":
        if query.sql is None:
            raise InvalidQuery("A sql question needs its 'sql' text.", code="bad_sql")
        if query.by or query.where is not None or query.derive:
            raise InvalidQuery("A sql question says everything in its SQL text (WHERE, GROUP BY).", code="bad_sql")
        query = compile_sql(query.sql, entry.name)
    query = language.canonical(query)
    validate(entry.info, query, body.delta)
    if entry.source is not None:  # a table: what the pushdown cannot answer is refused here, before the gate
        pushdown_check(entry.info, query, entry.source.decimals)
    return entry, body.model_copy(update={"query": query, "delta": delta_used(entry.info, query, body.delta)})


def identity(query: DPQuery) -> dict:
    """The question as hashed for replay: its canonical spec (legacy kinds hash as they always did)."""
    spec = query.model_dump(mode="json")
    for field, empty in (("where", None), ("derive", []), ("aggs", None), ("weights", None), ("columns", None),
                         ("sql", None)):
        if spec.get(field) == empty:
            spec.pop(field)
    return spec


def _accuracy(service: NodeService, entry: DatasetEntry, body: DPRequest, user: str) -> dict:
    """OpenDP's accuracy for this query shape: metadata only, cached. A new shape is calibrated in the
    low-priority preview pool, within the caller's share (free work never takes a paid release's worker)."""
    task = _task(service, entry, body, "preview")
    previews = service.state_of("dp", PreviewCache)
    hit = previews.get(task["cache_key"])
    if hit is not None:
        return hit
    with service.fair.admit(user, "compute"):
        result = service.preview_pool.run(_target(entry), task, user=user)
    previews.put(task["cache_key"], result)
    return result


@router.post("/datasets/{name}/dp/preview", response_model=DPPreview)
def preview(name: str, body: DPRequest, request: Request, service: Service, caller: Caller) -> JSONResponse:
    """The price and expected error of a DP query, before anything is spent."""
    asked_delta = body.delta
    entry, body = _checked(service, name, body)
    caller.require("analyst", "owner")
    result = _accuracy(service, entry, body, caller.name)
    before = after = None
    grant_id = None
    if entry.info.tier == "private":
        with service.store.transaction("read") as session:
            grant = choose_grant(session, caller.name, entry.name, body.grant_id)
            grant_id = grant.id
            before = left(grant)
    qhash = spec_hash("dp", identity(body.query), Cost(body.epsilon, body.delta))
    replay = service.gate.has_answer(caller, entry, qhash)
    if before is not None:
        spend = (0.0, 0.0) if replay else (body.epsilon, body.delta)
        after = Budget(epsilon=max(before.epsilon - spend[0], 0.0), delta=max(before.delta - spend[1], 0.0))
    return _answer(DPPreview(dataset=entry.name, dataset_version=entry.version, query=body.query,
                             epsilon=body.epsilon, delta=body.delta, grant_id=grant_id, alpha=ALPHA,
                             accuracy=[Accuracy(**a) for a in result["accuracy"]],
                             note=_delta_note(asked_delta, body.delta, result.get("note", "")),
                             budget_left_before=before, budget_left_after=after, would_replay=replay,
                             text=readable(body.query)), request)


@router.post("/datasets/{name}/dp/release", response_model=DPRelease)
async def release(name: str, body: DPRequest, request: Request, service: Service, caller: Caller) -> JSONResponse:
    """Release a DP query: charged once, through the gate; the identical question again is free."""
    entry, body = _checked(service, name, body)
    task = _task(service, entry, body, "release")
    await run_in_threadpool(_copied, service, entry, task, caller.name)
    outcome = await service.gate.release_async(
        caller, entry, "dp", body.query.kind, identity(body.query), Cost(body.epsilon, body.delta),
        compute=lambda: service.pool.run(_target(entry), task, user=caller.name), grant_id=body.grant_id,
        request_id=body.request_id, text=readable(body.query))
    return _answer(release_response(entry, body, outcome), request)


def released(service: NodeService, principal: Principal, name: str, body: DPRequest) -> tuple[DatasetEntry, Outcome]:
    """A DP release made the way the HTTP route makes it, for callers inside the node (a code job's DP channel):
    the same checks, the same task, the same gate."""
    entry, body = _checked(service, name, body)
    task = _task(service, entry, body, "release")
    _copied(service, entry, task, principal.name)
    outcome = service.gate.release(
        principal, entry, "dp", body.query.kind, identity(body.query), Cost(body.epsilon, body.delta),
        compute=lambda: service.pool.run(_target(entry), task, user=principal.name), grant_id=body.grant_id,
        request_id=body.request_id, text=readable(body.query))
    return entry, outcome


def _answer(model: DPPreview | DPRelease, request: Request) -> JSONResponse:
    """The answer as the caller's protocol reads it (protocol 1 clients refuse fields they do not know)."""
    return JSONResponse(answer_json(model, protocol_of(request)))


def answer_json(model: DPPreview | DPRelease, version: str) -> dict:
    return dp_answer_for_protocol(model.model_dump(mode="json"), version)


def _delta_note(asked: float, used: float, note: str) -> str:
    if asked > used:
        note = (f"This query adds pure Laplace noise and uses no delta: it is priced and charged at delta=0 "
                f"(not the {asked:g} asked). " + note).strip()
    return note


def release_response(entry: DatasetEntry, body: DPRequest, outcome: Outcome) -> DPRelease:
    """The wire answer for a release or a replay (post-processing of the stored result only)."""
    result = outcome.result
    return DPRelease(release_id=outcome.release_id, dataset=entry.name, dataset_version=outcome.dataset_version or entry.version,
                     query=body.query, epsilon=outcome.cost.epsilon, delta=outcome.cost.delta,
                     epsilon_charged=outcome.charged.epsilon, delta_charged=outcome.charged.delta,
                     grant_id=outcome.grant_id, replayed=outcome.replayed, released_at=outcome.released_at,
                     alpha=ALPHA, table=Table(**result["table"]), budget_left=outcome.budget_left,
                     text=readable(body.query))
