"""Governance: access requests and their decisions, the owner's review queue, and
the permission explainer.

* An analyst asks for a grant (dataset, purpose, budget, optional expiry);
  an owner approves (possibly with a smaller budget or an expiry) or denies
  with a reason. Nobody decides their own request.
* Releases that DP does not cover (e.g. SDV fitted on real rows) are held in
  the review queue: the owner sees what would leave and its privacy metrics,
  then approves or rejects; only then can the requester collect it, through
  the release gate.
* :func:`explain` replays the gate's checks for a user, dataset and price and
  says which passed and which refused, without spending anything.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any, Mapping

from sqlalchemy import select

from ..errors import InvalidQuery, NotAuthorized, NotFound, WorkbenchError
from ..protocol import (AccessRequestBody, AccessRequestInfo, ApproveBody, Check, DenyBody, Explanation, ReviewInfo)
from . import audit
from .agreement import AgreementConfig, check_grant, recorded_claims
from .auth import Principal
from .catalog import DatasetEntry
from .ledger import fits, grant_is_live
from .store import AccessRequest, DatasetBudget, Grant, Review, Store, User, utcnow

DECIDERS = ("owner",)


def _request_info(row: AccessRequest) -> AccessRequestInfo:
    return AccessRequestInfo(
        request_id=row.id, user=row.user_name, dataset=row.dataset, purpose=row.purpose, epsilon=row.epsilon,
        delta=row.delta, note=row.note, expires_days=row.expires_days, status=row.status,
        decided_by=row.decided_by, decided_at=row.decided_at, reason=row.reason, grant_id=row.grant_id,
        created_at=row.created_at)


def _check_purpose(principal: Principal, purpose: str) -> None:
    allowed = getattr(principal, "purposes", None)
    if allowed is not None and purpose not in allowed:
        raise NotAuthorized(f"Your identity provider does not allow the purpose {purpose!r}; allowed: "
                            f"{', '.join(sorted(allowed)) or 'none'}.", code="purpose_not_allowed")


# ---------------------------------------------------------------- access requests


def submit_request(store: Store, principal: Principal, entry: DatasetEntry, body: AccessRequestBody
                   ) -> AccessRequestInfo:
    """Record an analyst's request for a grant on ``entry``."""
    principal.require("analyst", "owner")
    if entry.info.tier == "open":
        raise InvalidQuery(f"'{entry.name}' is open data: it needs no grant.", code="invalid_query")
    _check_purpose(principal, body.purpose)
    if principal.role != "owner":  # asking outside the agreement is refused at once, naming the clause
        check_grant(entry.config.agreement, purpose=body.purpose, epsilon=body.epsilon, delta=body.delta,
                    claims=principal.claims, expires_at=None)
    with store.transaction() as session:
        row = AccessRequest(user_name=principal.name, dataset=entry.name, purpose=body.purpose.strip(),
                            epsilon=body.epsilon, delta=body.delta, note=body.note, expires_days=body.expires_days)
        session.add(row)
        session.flush()
        audit.append(session, principal.name, "request_submit", entry.name, request_id=row.id, purpose=row.purpose,
                     epsilon=row.epsilon, delta=row.delta)
        return _request_info(row)


def list_requests(store: Store, principal: Principal, status: str | None = None) -> list[AccessRequestInfo]:
    """Owners and auditors see every request; anyone else sees their own."""
    with store.transaction("read") as session:
        stmt = select(AccessRequest).order_by(AccessRequest.id.desc())
        if principal.role not in ("owner", "auditor"):
            stmt = stmt.where(AccessRequest.user_name == principal.name)
        if status:
            stmt = stmt.where(AccessRequest.status == status)
        return [_request_info(r) for r in session.execute(stmt).scalars()]


def get_request(store: Store, principal: Principal, request_id: int) -> AccessRequestInfo:
    with store.transaction("read") as session:
        row = session.get(AccessRequest, request_id)
        if row is None or (principal.role not in ("owner", "auditor") and row.user_name != principal.name):
            raise NotFound(f"No access request {request_id}.", code="not_found")
        return _request_info(row)


def _pending_for_decision(session, principal: Principal, request_id: int) -> AccessRequest:
    return _pending(session, principal, AccessRequest, request_id, ("access request", "Request"),
                    "decide their own access request")


def _pending(session, principal: Principal, model: type, row_id: int, names: tuple[str, str], own: str):
    """The pending row an owner decides, locked; the one check that nobody decides their own (four eyes)."""
    principal.require(*DECIDERS)
    row = session.get(model, row_id, with_for_update=True)
    if row is None:
        raise NotFound(f"No {names[0]} {row_id}.", code="not_found")
    check_not_own(principal, row.user_name, own)
    if row.status != "pending":
        raise InvalidQuery(f"{names[1]} {row_id} is already {row.status}.", code="not_pending")
    return row


def check_not_own(principal: Principal, requester: str, own: str) -> None:
    """Four eyes: nobody decides what they asked for themselves (``own``: e.g. "approve their own code")."""
    if requester == principal.name:
        raise NotAuthorized(f"Nobody may {own}; ask another owner.", code="self_approval")


def approve_request(store: Store, principal: Principal, request_id: int, body: ApproveBody,
                    agreements: Mapping[str, AgreementConfig | None] | None = None) -> AccessRequestInfo:
    """Approve a pending request: create its grant, at most the budget asked for, within the dataset's agreement."""
    with store.transaction() as session:
        row = _pending_for_decision(session, principal, request_id)
        epsilon = row.epsilon if body.epsilon is None else body.epsilon
        delta = row.delta if body.delta is None else body.delta
        if not fits(epsilon, delta, row.epsilon, row.delta):
            raise InvalidQuery("An approval may grant less than was asked, not more; the analyst can ask again.",
                               code="invalid_query")
        days = body.expires_days if body.expires_days is not None else row.expires_days
        expires = datetime.now(timezone.utc) + timedelta(days=days) if days else None
        expires = check_grant((agreements or {}).get(row.dataset), purpose=row.purpose, epsilon=epsilon, delta=delta,
                              claims=recorded_claims(session, row.user_name), expires_at=expires)
        grant = Grant(user_name=row.user_name, dataset=row.dataset, purpose=row.purpose, epsilon=epsilon,
                      delta=delta, expires_at=expires, created_by=principal.name)
        session.add(grant)
        session.flush()
        row.status, row.decided_by, row.decided_at = "approved", principal.name, utcnow()
        row.reason, row.grant_id = body.reason, grant.id
        audit.append(session, principal.name, "request_approve", row.dataset, request_id=row.id, user=row.user_name,
                     grant_id=grant.id, epsilon=epsilon, delta=delta, expires_at=expires)
        audit.append(session, principal.name, "grant_add", row.dataset, grant_id=grant.id, user=row.user_name,
                     purpose=row.purpose, epsilon=epsilon, delta=delta, expires_at=expires, request_id=row.id)
        return _request_info(row)


def deny_request(store: Store, principal: Principal, request_id: int, body: DenyBody) -> AccessRequestInfo:
    with store.transaction() as session:
        row = _pending_for_decision(session, principal, request_id)
        row.status, row.decided_by, row.decided_at, row.reason = "denied", principal.name, utcnow(), body.reason
        audit.append(session, principal.name, "request_deny", row.dataset, request_id=row.id, user=row.user_name,
                     reason=body.reason)
        return _request_info(row)


def withdraw_request(store: Store, principal: Principal, request_id: int) -> AccessRequestInfo:
    with store.transaction() as session:
        row = session.get(AccessRequest, request_id, with_for_update=True)
        if row is None or row.user_name != principal.name:
            raise NotFound(f"No access request {request_id}.", code="not_found")
        if row.status != "pending":
            raise InvalidQuery(f"Request {request_id} is already {row.status}.", code="not_pending")
        row.status, row.decided_at = "withdrawn", utcnow()
        audit.append(session, principal.name, "request_withdraw", row.dataset, request_id=row.id)
        return _request_info(row)


# ---------------------------------------------------------------- the review queue


def _review_info(row: Review, with_summary: bool) -> ReviewInfo:
    return ReviewInfo(review_id=row.id, user=row.user_name, dataset=row.dataset, dataset_version=row.dataset_version,
                      channel=row.channel, kind=row.kind, spec=json.loads(row.spec_json),
                      summary=json.loads(row.summary_json) if with_summary else None, status=row.status,
                      decided_by=row.decided_by, decided_at=row.decided_at, reason=row.reason,
                      created_at=row.created_at)


def submit_review(store: Store, principal: Principal, entry: DatasetEntry, channel: str, kind: str, spec: dict,
                  summary: dict[str, Any], result: dict[str, Any]) -> ReviewInfo:
    """Hold a non-DP release for an owner's decision. ``summary`` is what the owner sees (what would leave,
    privacy metrics); ``result`` stays on the node until approved."""
    with store.transaction() as session:
        row = Review(user_name=principal.name, dataset=entry.name, dataset_version=entry.version, channel=channel,
                     kind=kind, spec_json=json.dumps(spec, sort_keys=True), summary_json=json.dumps(summary,
                                                                                                   default=str),
                     result_json=json.dumps(result, default=str))
        session.add(row)
        session.flush()
        audit.append(session, principal.name, "review_submit", entry.name, review_id=row.id, channel=channel,
                     kind=kind)
        return _review_info(row, with_summary=False)


def list_reviews(store: Store, principal: Principal, status: str | None = None) -> list[ReviewInfo]:
    owner_view = principal.role in ("owner", "auditor")
    with store.transaction("read") as session:
        stmt = select(Review).order_by(Review.id.desc())
        if not owner_view:
            stmt = stmt.where(Review.user_name == principal.name)
        if status:
            stmt = stmt.where(Review.status == status)
        return [_review_info(r, with_summary=owner_view) for r in session.execute(stmt).scalars()]


def get_review(store: Store, principal: Principal, review_id: int) -> ReviewInfo:
    owner_view = principal.role in ("owner", "auditor")
    with store.transaction("read") as session:
        row = session.get(Review, review_id)
        if row is None or (not owner_view and row.user_name != principal.name):
            raise NotFound(f"No review {review_id}.", code="not_found")
        return _review_info(row, with_summary=owner_view)


def decide_review(store: Store, principal: Principal, review_id: int, approve: bool, reason: str) -> ReviewInfo:
    principal.require(*DECIDERS)
    with store.transaction() as session:
        row = _pending(session, principal, Review, review_id, ("review", "Review"), "approve their own release")
        row.status = "approved" if approve else "rejected"
        row.decided_by, row.decided_at, row.reason = principal.name, utcnow(), reason
        audit.append(session, principal.name, "review_approve" if approve else "review_reject", row.dataset,
                     review_id=row.id, user=row.user_name, channel=row.channel, kind=row.kind, reason=reason)
        return _review_info(row, with_summary=True)


def approved_result(store: Store, principal: Principal, review_id: int) -> tuple[Review, dict]:
    """The held output of an approved review, for its requester only (the caller releases it via the gate)."""
    with store.transaction("read") as session:
        row = session.get(Review, review_id)
        if row is None or row.user_name != principal.name:
            raise NotFound(f"No review {review_id}.", code="not_found")
        if row.status != "approved":
            raise NotAuthorized(f"Review {review_id} is {row.status}: nothing may leave until an owner approves it.",
                                code="not_approved")
        return row, json.loads(row.result_json)


# ---------------------------------------------------------------- why allowed / refused


def explain(store: Store, entry: DatasetEntry | None, dataset: str, user: str, epsilon: float, delta: float = 0.0,
            grant_id: int | None = None, problem: str | None = None) -> Explanation:
    """The gate's checks for ``user`` releasing at (epsilon, delta) on ``dataset``, each with its verdict."""
    checks: list[Check] = []
    code: str | None = None

    def add(name: str, ok: bool, detail: str, fail_code: str | None = None) -> bool:
        nonlocal code
        checks.append(Check(check=name, ok=ok, detail=detail))
        if not ok and code is None:
            code = fail_code
        return ok

    with store.transaction("read") as session:
        row = session.execute(select(User).where(User.name == user)).scalar_one_or_none()
        if add("user exists", row is not None and not row.disabled,
               "active user" if row is not None and not row.disabled else "no such (active) user",
               "not_authenticated"):
            add("role may release", row.role in ("analyst", "owner"), f"role is {row.role}", "not_authorized")
        if entry is None:
            add("dataset available", False, problem or f"unknown dataset '{dataset}'",
                "unknown_dataset" if problem is None else "dataset_unavailable")
            return Explanation(user=user, dataset=dataset, epsilon=epsilon, delta=delta, allowed=False, code=code,
                               checks=checks)
        add("dataset available", True, f"version {entry.version}, tier {entry.info.tier}")
        if entry.info.tier == "open":
            add("tier", True, "open data: no grant or budget needed")
            return Explanation(user=user, dataset=dataset, epsilon=epsilon, delta=delta, allowed=code is None,
                               code=code, checks=checks)
        grants = session.execute(select(Grant).where(Grant.user_name == user, Grant.dataset == dataset)
                                 .order_by(Grant.id)).scalars().all()
        for g in grants:
            state = "live" if grant_is_live(g) else ("revoked" if g.revoked else "expired")
            checks.append(Check(check=f"grant {g.id}", ok=grant_is_live(g),
                                detail=f"{state}; purpose {g.purpose!r}; epsilon {g.epsilon_spent:.4g}/{g.epsilon:.4g}"
                                       f" spent; delta {g.delta_spent:.3g}/{g.delta:.3g}"))
        live = [g for g in grants if grant_is_live(g) and (grant_id is None or g.id == grant_id)]
        if not add("a live grant applies", len(live) >= 1,
                   "no live grant" if not live else f"grant(s) {', '.join(str(g.id) for g in live)}", "no_grant"):
            pass
        elif add("one grant chosen", len(live) == 1 or grant_id is not None,
                 "several live grants: name one (grant_id= or purpose=)" if len(live) > 1 else f"grant {live[0].id}",
                 "grant_ambiguous"):
            g = live[0]
            left = g.epsilon - g.epsilon_spent
            dleft = g.delta - g.delta_spent
            add("grant budget", fits(epsilon, delta, left, dleft),
                f"needs epsilon {epsilon:g}, delta {delta:g}; grant has {max(left, 0):.4g}, {max(dleft, 0):.3g} left",
                "budget_exceeded")
        cap = session.get(DatasetBudget, dataset)
        if cap is not None:
            add("dataset lifetime budget",
                fits(epsilon, delta, cap.epsilon_cap - cap.epsilon_spent, cap.delta_cap - cap.delta_spent),
                f"{max(cap.epsilon_cap - cap.epsilon_spent, 0):.4g} of {cap.epsilon_cap:g} epsilon left",
                "dataset_budget_exceeded")
    return Explanation(user=user, dataset=dataset, epsilon=epsilon, delta=delta, allowed=code is None, code=code,
                       checks=checks)


def explain_for(service, user: str, dataset: str, epsilon: float, delta: float = 0.0,
                grant_id: int | None = None) -> Explanation:
    """:func:`explain` with the dataset looked up in the service's catalogue."""
    try:
        entry = service.catalog.get(dataset)
        problem = None
    except WorkbenchError as exc:
        entry, problem = None, (exc.message if exc.code == "dataset_unavailable" else None)
    return explain(service.store, entry, dataset, user, epsilon, delta, grant_id, problem)
