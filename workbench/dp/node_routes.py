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

from fastapi import APIRouter

from ..errors import InvalidQuery
from ..protocol import Accuracy, Budget, DPPreview, DPRelease, DPRequest, Table
from ..node.catalog import DatasetEntry
from ..node.gate import Outcome, spec_hash
from ..node.ledger import Cost, choose_grant, left
from ..node.routes import Caller, Service
from ..node.service import NodeService
from . import engine
from .pushdown.run import check as pushdown_check
from .pushdown.sources import pushdown_task

router = APIRouter(tags=["dp"])
ALPHA = 0.05
ENGINE = "workbench.dp.engine:run"
PUSHDOWN = "workbench.dp.pushdown.run:run"  # tables in PostgreSQL or Spark
MIN_EPSILON = 1e-6
MIN_DELTA = 1e-20

_previews: "OrderedDict[str, dict]" = OrderedDict()
_previews_lock = threading.Lock()


def _task(entry: DatasetEntry, body: DPRequest, mode: str, columnar: str | None, state_dir=None) -> dict:
    spec = body.query.model_dump(mode="json")
    key = hashlib.sha256(json.dumps([entry.name, entry.version, entry.info.model_dump(mode="json"), spec,
                                     body.epsilon, body.delta, ALPHA], sort_keys=True).encode()).hexdigest()
    task = {"info": entry.info.model_dump(mode="json"), "query": spec, "epsilon": body.epsilon, "delta": body.delta,
            "alpha": ALPHA, "format": entry.config.file_format, "mode": mode, "stamp": list(entry.stamp),
            "columnar": columnar, "cache_key": key, "source": None}
    if entry.source is not None:  # a table in PostgreSQL or Spark (workbench.dp.pushdown): no file, no copy
        task.update(source=pushdown_task(entry, state_dir), path=None, columnar=None, stamp=None)
    else:
        task["path"] = str(entry.path)
    return task


def _target(entry: DatasetEntry) -> str:
    """The worker function that answers a query on this dataset: OpenDP on Polars, or the SQL pushdown."""
    return PUSHDOWN if entry.source is not None else ENGINE


def _columnar(service: NodeService) -> str:
    """Where the workers keep their columnar copies of the datasets (see :mod:`workbench.dp.columnar`)."""
    return str(service.config.node.state_dir / "columnar")


def _checked(service: NodeService, name: str, body: DPRequest) -> DatasetEntry:
    entry = service.catalog.get(name)
    limit = service.config.node.max_epsilon_per_release
    if body.epsilon > limit:
        raise InvalidQuery(f"This node caps one release at epsilon={limit:g}.", code="bad_epsilon")
    # Vanishing losses make OpenDP search noise scales near overflow for many seconds (a free DoS by preview).
    if body.epsilon < MIN_EPSILON or 0 < body.delta < MIN_DELTA:
        raise InvalidQuery(f"epsilon must be at least {MIN_EPSILON:g} and delta 0 or at least {MIN_DELTA:g}.",
                           code="bad_epsilon")
    engine.validate(entry.info, body.query, body.delta)
    if entry.source is not None:  # a table: what the pushdown cannot answer is refused here, before the gate
        pushdown_check(entry.info, body.query, entry.source.decimals)
    return entry


def _accuracy(service: NodeService, entry: DatasetEntry, body: DPRequest) -> dict:
    """OpenDP's accuracy for this query shape: metadata only, cached."""
    task = _task(entry, body, "preview", _columnar(service), service.config.node.state_dir)
    with _previews_lock:
        hit = _previews.get(task["cache_key"])
    if hit is not None:
        return hit
    result = service.pool.run(_target(entry), task)
    with _previews_lock:
        _previews[task["cache_key"]] = result
        while len(_previews) > 1024:
            _previews.popitem(last=False)
    return result


@router.post("/datasets/{name}/dp/preview", response_model=DPPreview)
def preview(name: str, body: DPRequest, service: Service, caller: Caller) -> DPPreview:
    """The price and expected error of a DP query, before anything is spent."""
    entry = _checked(service, name, body)
    caller.require("analyst", "owner")
    result = _accuracy(service, entry, body)
    before = after = None
    grant_id = None
    if entry.info.tier == "private":
        with service.store.transaction("read") as session:
            grant = choose_grant(session, caller.name, entry.name, body.grant_id)
            grant_id = grant.id
            before = left(grant)
    qhash = spec_hash("dp", body.query.model_dump(mode="json"), Cost(body.epsilon, body.delta))
    replay = service.gate.has_answer(caller, entry, qhash)
    if before is not None:
        spend = (0.0, 0.0) if replay else (body.epsilon, body.delta)
        after = Budget(epsilon=max(before.epsilon - spend[0], 0.0), delta=max(before.delta - spend[1], 0.0))
    return DPPreview(dataset=entry.name, dataset_version=entry.version, query=body.query, epsilon=body.epsilon,
                     delta=body.delta, grant_id=grant_id, alpha=ALPHA,
                     accuracy=[Accuracy(**a) for a in result["accuracy"]], note=result.get("note", ""),
                     budget_left_before=before, budget_left_after=after, would_replay=replay)


@router.post("/datasets/{name}/dp/release", response_model=DPRelease)
async def release(name: str, body: DPRequest, service: Service, caller: Caller) -> DPRelease:
    """Release a DP query: charged once, through the gate; the identical question again is free."""
    entry = _checked(service, name, body)
    task = _task(entry, body, "release", _columnar(service), service.config.node.state_dir)
    outcome = await service.gate.release_async(
        caller, entry, "dp", body.query.kind, body.query.model_dump(mode="json"), Cost(body.epsilon, body.delta),
        compute=lambda: service.pool.run(_target(entry), task), grant_id=body.grant_id, request_id=body.request_id)
    return release_response(entry, body, outcome)


def release_response(entry: DatasetEntry, body: DPRequest, outcome: Outcome) -> DPRelease:
    """The wire answer for a release or a replay (post-processing of the stored result only)."""
    result = outcome.result
    return DPRelease(release_id=outcome.release_id, dataset=entry.name, dataset_version=entry.version,
                     query=body.query, epsilon=outcome.cost.epsilon, delta=outcome.cost.delta,
                     epsilon_charged=outcome.charged.epsilon, delta_charged=outcome.charged.delta,
                     grant_id=outcome.grant_id, replayed=outcome.replayed, released_at=outcome.released_at,
                     alpha=ALPHA, table=Table(**result["table"]), budget_left=outcome.budget_left)
