"""The node's general endpoints: identity, catalogue, budgets, grants, history, audit, open rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.background import BackgroundTask

from .._version import __version__
from ..errors import PrivacyError
from ..protocol import (PROTOCOL_VERSION, SUPPORTED_PROTOCOLS, BudgetInfo, DatasetInfo, GrantInfo, HistoryEntry,
                        NodeInfo, RowsResponse, for_protocol)
from . import admin, audit
from .deps import Caller, Service, dataset_entry, protocol_of, public_info
from .agreement import agreements
from .data import task_payload
from .gate import check_not_private
from .ledger import choose_grant

router = APIRouter()


@router.get("/health", tags=["node"])
def health(service: Service) -> dict:
    """Liveness: the node answers and its database responds."""
    with service.store.transaction("read"):
        pass
    return {"status": "ok", "node": service.name, "worker_crashes": service.pool.crashes}


@router.get("/info", response_model=NodeInfo, tags=["node"])
def info(service: Service) -> NodeInfo:
    """The node's name, software version and protocol versions (no token needed)."""
    return NodeInfo(name=service.name, version=__version__, protocol=PROTOCOL_VERSION,
                    protocols=list(SUPPORTED_PROTOCOLS))


@router.get("/me", response_model=NodeInfo, tags=["node"])
def me(service: Service, caller: Caller) -> NodeInfo:
    """Who the token belongs to, and the node's versions."""
    return NodeInfo(name=service.name, version=__version__, protocol=PROTOCOL_VERSION,
                    protocols=list(SUPPORTED_PROTOCOLS), user=caller.name, role=caller.role)


@router.get("/catalog", response_model=list[DatasetInfo], tags=["catalogue"])
def catalog(request: Request, service: Service, caller: Caller) -> JSONResponse:
    """Every dataset's public metadata (``has_mock``: a free public DP mock is published; ``agreement``:
    its sharing agreement, protocol 2)."""
    version = protocol_of(request)
    return JSONResponse([for_protocol(public_info(service, e), version) for e in service.catalog.entries()])


@router.get("/datasets/{name}", response_model=DatasetInfo, tags=["catalogue"])
def dataset(name: str, request: Request, service: Service, caller: Caller) -> JSONResponse:
    """One dataset's public metadata: columns, types, bounds, categories, privacy unit, licence, agreement."""
    return JSONResponse(for_protocol(public_info(service, dataset_entry(service, name)), protocol_of(request)))


@router.get("/datasets/{name}/budget", response_model=BudgetInfo, tags=["budget"])
def budget(name: str, service: Service, caller: Caller,
           grant_id: Annotated[int | None, Query(ge=1)] = None) -> BudgetInfo:
    """What the caller's grant on this dataset has left, and the dataset's lifetime budget left."""
    entry = dataset_entry(service, name)
    ds_eps, ds_delta = service.gate.dataset_left(entry.name)
    with service.store.transaction() as session:
        grant = choose_grant(session, caller.name, entry.name, grant_id)
        info = admin.grant_info(grant)
    return BudgetInfo(dataset=entry.name, grant_id=info.grant_id, purpose=info.purpose,
                      epsilon_left=info.epsilon_left, delta_left=info.delta_left,
                      epsilon_spent=info.epsilon_spent, delta_spent=info.delta_spent,
                      dataset_epsilon_left=ds_eps, dataset_delta_left=ds_delta)


@router.get("/datasets/{name}/rows", response_model=RowsResponse, tags=["open data"])
def rows(name: str, service: Service, caller: Caller,
         limit: Annotated[int, Query(ge=1, le=1_000_000)] = 100_000) -> FileResponse:
    """The rows of an open-tier dataset, with its licence. Any other tier: ``privacy_violation``.

    Free work: read and encoded in the niced pool for free work, within the caller's share (429 beyond)."""
    entry = dataset_entry(service, name)
    try:
        check_not_private(entry)
    except PrivacyError as exc:
        service.gate.refuse(caller, entry.name, exc, attempted="read_rows")
        raise
    service.gate.check_agreement(caller, entry, "open")
    # Open rows: consenting rows only, as stored (no casts).
    task = task_payload(entry, columns=list(entry.config.columns), limit=limit, dataset=entry.name,
                        licence=entry.info.licence, version=entry.version,
                        folder=str(service.config.node.state_dir / "open_rows"))
    with service.fair.admit(caller.name, "compute"):
        out = service.preview_pool.run("node.open_rows", task, user=caller.name)
    with service.store.transaction() as session:
        audit.append(session, caller.name, "open_read", entry.name, rows=out["rows"], licence=entry.info.licence,
                     dataset_version=entry.version)
    return FileResponse(out["file"], media_type="application/json",
                        background=BackgroundTask(Path(out["file"]).unlink, missing_ok=True))


@router.get("/grants", response_model=list[GrantInfo], tags=["budget"])
def grants(service: Service, caller: Caller, user: str | None = None, dataset: str | None = None) -> list[GrantInfo]:
    """The caller's grants (owners and auditors may list anyone's)."""
    if caller.role not in ("owner", "auditor"):
        user = caller.name
    return admin.list_grants(service.store, user=user, dataset=dataset)


class GrantRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user: str = Field(max_length=64)
    dataset: str = Field(max_length=64)
    purpose: str = Field(min_length=1, max_length=500)
    epsilon: float = Field(gt=0, le=1000)
    delta: float = Field(0.0, ge=0, lt=1)
    expires_days: float | None = Field(None, gt=0, le=3650)


@router.post("/grants", response_model=GrantInfo, tags=["admin"])
def create_grant(body: GrantRequest, service: Service, caller: Caller) -> GrantInfo:
    """Owner only: grant a user a budget on a dataset for a purpose."""
    caller.require("owner")
    return admin.add_grant(service.store, body.user, body.dataset, body.purpose, body.epsilon, body.delta,
                           body.expires_days, actor=caller.name, known_datasets=set(service.config.datasets),
                           agreement=agreements(service.config).get(body.dataset))


@router.delete("/grants/{grant_id}", tags=["admin"])
def delete_grant(grant_id: int, service: Service, caller: Caller) -> dict:
    """Owner only: revoke a grant (its spending stays on the dataset's lifetime budget)."""
    caller.require("owner")
    admin.revoke_grant(service.store, grant_id, actor=caller.name)
    return {"revoked": grant_id}


class UserRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=64)
    role: str


@router.post("/users", tags=["admin"])
def create_user(body: UserRequest, service: Service, caller: Caller) -> dict:
    """Owner only: add a user; the response carries their token, shown this once."""
    caller.require("owner")
    token = admin.add_user(service.store, service.authority, body.name, body.role, actor=caller.name)
    return {"name": body.name, "role": body.role, "token": token}


@router.get("/users", tags=["admin"])
def users(service: Service, caller: Caller) -> list[dict]:
    """Owner only: every user, their role and whether they are disabled."""
    caller.require("owner")
    return admin.list_users(service.store)


@router.post("/users/{name}/disable", tags=["admin"])
def disable_user(name: str, service: Service, caller: Caller) -> dict:
    """Owner only: disable a user; every token of theirs stops working at once (not the last owner)."""
    caller.require("owner")
    admin.set_disabled(service.store, name, True, actor=caller.name)
    return {"name": name, "disabled": True}


@router.post("/users/{name}/enable", tags=["admin"])
def enable_user(name: str, service: Service, caller: Caller) -> dict:
    """Owner only: enable a disabled user again (their unrevoked tokens work again)."""
    caller.require("owner")
    admin.set_disabled(service.store, name, False, actor=caller.name)
    return {"name": name, "disabled": False}


class RoleRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(max_length=16)


@router.put("/users/{name}/role", tags=["admin"])
def change_role(name: str, body: RoleRequest, service: Service, caller: Caller) -> dict:
    """Owner only: change a user's role; their earlier tokens are revoked and the new token is returned once."""
    caller.require("owner")
    token = admin.set_role(service.store, service.authority, name, body.role, actor=caller.name)
    return {"name": name, "role": body.role, "token": token}


@router.delete("/users/{name}", tags=["admin"])
def delete_user(name: str, service: Service, caller: Caller) -> dict:
    """Owner only: delete a user (tokens dead, live grants revoked; the name's token versions keep rising)."""
    caller.require("owner")
    revoked = admin.delete_user(service.store, name, actor=caller.name)
    return {"deleted": name, "grants_revoked": revoked}


@router.get("/history", response_model=list[HistoryEntry], tags=["budget"])
def history(service: Service, caller: Caller,
            limit: Annotated[int, Query(ge=1, le=10_000)] = 500) -> list[HistoryEntry]:
    """The caller's own releases and replays, newest first (from the audit log)."""
    out = []
    for rec in audit.records(service.store, actor=caller.name, actions=("release", "replay"), limit=limit):
        d = rec["details"]
        out.append(HistoryEntry(release_id=d.get("release_id", 0), time=rec["ts"], dataset=rec["dataset"] or "",
                                channel=d.get("channel", ""), kind=d.get("kind", ""), epsilon=d.get("epsilon", 0.0),
                                delta=d.get("delta", 0.0), grant_id=d.get("grant_id"),
                                replayed=rec["action"] == "replay", text=d.get("text", "")))
    return out


@router.get("/audit", tags=["audit"], response_class=PlainTextResponse)
def audit_export(service: Service, caller: Caller,
                 limit: Annotated[int | None, Query(ge=1)] = None) -> PlainTextResponse:
    """Auditors and owners: the audit log as JSON lines, oldest first. Analysts: their own records."""
    actor = None if caller.role in ("owner", "auditor") else caller.name
    import json as _json
    lines = [_json.dumps(r, default=str) for r in reversed(list(audit.records(service.store, actor=actor, limit=limit)))]
    return PlainTextResponse("\n".join(lines) + ("\n" if lines else ""), media_type="application/x-ndjson")


@router.get("/audit/verify", tags=["audit"])
def audit_verify(service: Service, caller: Caller) -> dict:
    """Auditors and owners: walk the hash chain."""
    caller.require("owner", "auditor")
    result = audit.verify(service.store)
    return {"ok": result.ok, "records": result.records, "first_bad_seq": result.first_bad_seq, "reason": result.reason}
