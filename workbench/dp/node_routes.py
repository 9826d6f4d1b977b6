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

from ..node import policy
from ..node.catalog import DatasetEntry
from ..node.data import task_payload
from ..node.gate import Outcome, spec_hash
from ..node.ledger import Cost, choose_grant, left
from ..node.routes import Caller, Service
from ..node.service import NodeService
from ..protocol import Accuracy, Budget, DPPreview, DPRelease, DPRequest, Table
from . import engine

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


def _task(entry: DatasetEntry, body: DPRequest, mode: str, columnar: str | None) -> dict:
    spec = body.query.model_dump(mode="json")
    key = hashlib.sha256(json.dumps([entry.name, entry.version, entry.info.model_dump(mode="json"), spec,
                                     body.epsilon, body.delta, ALPHA], sort_keys=True).encode()).hexdigest()
    return task_payload(entry, query=spec, epsilon=body.epsilon, delta=body.delta, alpha=ALPHA, mode=mode,
                        columnar=columnar, cache_key=key)


def _columnar(service: NodeService) -> str:
    """Where the workers keep their columnar copies of the datasets (see :mod:`workbench.dp.columnar`)."""
    return str(service.config.node.state_dir / "columnar")


def _checked(service: NodeService, name: str, body: DPRequest) -> DatasetEntry:
    entry = service.catalog.get(name)
    policy.check_loss(service, body.epsilon, body.delta)
    engine.validate(entry.info, body.query, body.delta)
    return entry


def _accuracy(service: NodeService, entry: DatasetEntry, body: DPRequest) -> dict:
    """OpenDP's accuracy for this query shape: metadata only, cached."""
    task = _task(entry, body, "preview", _columnar(service))
    previews = service.state_of("dp", PreviewCache)
    hit = previews.get(task["cache_key"])
    if hit is not None:
        return hit
    result = service.pool.run("dp.query", task)
    previews.put(task["cache_key"], result)
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
    task = _task(entry, body, "release", _columnar(service))
    outcome = await service.gate.release_async(
        caller, entry, "dp", body.query.kind, body.query.model_dump(mode="json"), Cost(body.epsilon, body.delta),
        compute=lambda: service.pool.run("dp.query", task), grant_id=body.grant_id, request_id=body.request_id)
    return release_response(entry, body, outcome)


def release_response(entry: DatasetEntry, body: DPRequest, outcome: Outcome) -> DPRelease:
    """The wire answer for a release or a replay (post-processing of the stored result only)."""
    result = outcome.result
    return DPRelease(release_id=outcome.release_id, dataset=entry.name, dataset_version=entry.version,
                     query=body.query, epsilon=outcome.cost.epsilon, delta=outcome.cost.delta,
                     epsilon_charged=outcome.charged.epsilon, delta_charged=outcome.charged.delta,
                     grant_id=outcome.grant_id, replayed=outcome.replayed, released_at=outcome.released_at,
                     alpha=ALPHA, table=Table(**result["table"]), budget_left=outcome.budget_left)
