"""HTTP endpoints for access requests, the review queue and the permission explainer."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from ..protocol import AccessRequestBody, AccessRequestInfo, ApproveBody, DenyBody, Explanation, ReviewInfo
from . import governance
from .agreement import agreements
from .ledger import Cost
from .deps import Caller, Service

router = APIRouter()
Status = Annotated[str | None, Query(pattern="^(pending|approved|denied|withdrawn|rejected)$")]


@router.post("/datasets/{name}/requests", response_model=AccessRequestInfo, tags=["governance"])
def request_access(name: str, body: AccessRequestBody, service: Service, caller: Caller) -> AccessRequestInfo:
    """Ask the owners for a grant on this dataset, for a purpose, with a budget."""
    return governance.submit_request(service.store, caller, service.catalog.get(name), body)


@router.get("/requests", response_model=list[AccessRequestInfo], tags=["governance"])
def requests(service: Service, caller: Caller, status: Status = None) -> list[AccessRequestInfo]:
    """Your requests (owners and auditors: everyone's)."""
    return governance.list_requests(service.store, caller, status)


@router.get("/requests/{request_id}", response_model=AccessRequestInfo, tags=["governance"])
def request_status(request_id: int, service: Service, caller: Caller) -> AccessRequestInfo:
    return governance.get_request(service.store, caller, request_id)


@router.post("/requests/{request_id}/approve", response_model=AccessRequestInfo, tags=["governance"])
def approve(request_id: int, body: ApproveBody, service: Service, caller: Caller) -> AccessRequestInfo:
    """Owners (not the requester): approve, optionally with a smaller budget or an expiry."""
    return governance.approve_request(service.store, caller, request_id, body, agreements(service.config))


@router.post("/requests/{request_id}/deny", response_model=AccessRequestInfo, tags=["governance"])
def deny(request_id: int, body: DenyBody, service: Service, caller: Caller) -> AccessRequestInfo:
    """Owners (not the requester): deny, with a reason the analyst will read."""
    return governance.deny_request(service.store, caller, request_id, body)


@router.post("/requests/{request_id}/withdraw", response_model=AccessRequestInfo, tags=["governance"])
def withdraw(request_id: int, service: Service, caller: Caller) -> AccessRequestInfo:
    return governance.withdraw_request(service.store, caller, request_id)


@router.get("/reviews", response_model=list[ReviewInfo], tags=["governance"])
def reviews(service: Service, caller: Caller, status: Status = None) -> list[ReviewInfo]:
    """Owners: releases waiting for a decision, with what would leave and its privacy metrics. Others: their own."""
    return governance.list_reviews(service.store, caller, status)


@router.get("/reviews/{review_id}", response_model=ReviewInfo, tags=["governance"])
def review(review_id: int, service: Service, caller: Caller) -> ReviewInfo:
    return governance.get_review(service.store, caller, review_id)


class Decision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str = Field("", max_length=2000)


@router.post("/reviews/{review_id}/approve", response_model=ReviewInfo, tags=["governance"])
def approve_review(review_id: int, body: Decision, service: Service, caller: Caller) -> ReviewInfo:
    return governance.decide_review(service.store, caller, review_id, True, body.reason)


@router.post("/reviews/{review_id}/reject", response_model=ReviewInfo, tags=["governance"])
def reject_review(review_id: int, body: Decision, service: Service, caller: Caller) -> ReviewInfo:
    return governance.decide_review(service.store, caller, review_id, False, body.reason)


class ReviewedRelease(BaseModel):
    review_id: int
    release_id: int
    grant_id: int | None
    replayed: bool
    result: dict


@router.post("/reviews/{review_id}/collect", response_model=ReviewedRelease, tags=["governance"])
def collect(review_id: int, service: Service, caller: Caller, grant_id: int | None = None) -> ReviewedRelease:
    """The requester collects an approved release. It passes the release gate (audited, naming a grant: the
    ``grant_id`` given, else the one the release was asked under, else the caller's only live grant); it spends
    no DP budget because it is not a DP release: the owner's approval is what allows it."""
    row, result = governance.approved_result(service.store, caller, review_id)
    if grant_id is None:
        grant_id = json.loads(row.spec_json).get("grant_id")
    entry = service.catalog.get(row.dataset)
    if entry.version != row.dataset_version:
        from ..errors import InvalidQuery

        raise InvalidQuery("The dataset changed since this release was reviewed; ask again.", code="stale_review")
    outcome = service.gate.release(caller, entry, "review", row.kind, {"review_id": review_id}, Cost(0.0, 0.0),
                                   compute=lambda: result, grant_id=grant_id)
    return ReviewedRelease(review_id=review_id, release_id=outcome.release_id, grant_id=outcome.grant_id,
                           replayed=outcome.replayed, result=outcome.result)


@router.get("/permissions/explain", response_model=Explanation, tags=["governance"])
def explain(service: Service, caller: Caller, dataset: str, epsilon: Annotated[float, Query(gt=0, le=1000)] = 0.1,
            delta: Annotated[float, Query(ge=0, lt=0.01)] = 0.0, user: str | None = None,
            grant_id: int | None = None) -> Explanation:
    """Why a release at this price would be allowed or refused, check by check. Owners and auditors may ask
    about any user; others about themselves."""
    if user is not None and user != caller.name:
        caller.require("owner", "auditor")
    return governance.explain_for(service, user or caller.name, dataset, epsilon, delta, grant_id)
