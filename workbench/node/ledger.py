"""The privacy ledger: grants, the datasets' lifetime caps, and charges.

``reserve`` is the only function that moves budget. In one transaction it
locks the dataset's cap row and the grant row (in that order), checks that the
new charge fits under both, records the charge as ``reserved`` and appends the
audit record. A crash after that commit leaves the charge in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from ..errors import BudgetExceeded, InvalidQuery, NotAuthorized
from ..protocol import Budget
from . import audit
from .store import Charge, DatasetBudget, Grant, as_utc, utcnow

#: Slack for floating-point sums of epsilons (10 x 0.1 must fit a budget of 1.0).
TOLERANCE = 1e-9
#: The same slack for deltas (they are a million times smaller than epsilons).
DELTA_TOLERANCE = TOLERANCE * 1e-6


@dataclass(frozen=True)
class Cost:
    epsilon: float
    delta: float = 0.0


def fits(epsilon: float, delta: float, epsilon_left: float, delta_left: float) -> bool:
    """Whether a charge fits what is left, up to the ledger's tolerance (the one test every pre-check uses)."""
    return epsilon <= epsilon_left + TOLERANCE and delta <= delta_left + DELTA_TOLERANCE


def check_fits(grant, cap, dataset: str, epsilon: float, delta: float, what: str = "This release") -> None:
    """Refuse a charge the grant or the dataset's lifetime cap (ORM objects or rows) cannot pay.

    The one budget test: the reservation applies it under its locks, and :mod:`workbench.node.policy` applies it
    before any work is started (so a release that could not be paid is refused for free).
    """
    eps_left = grant.epsilon - grant.epsilon_spent
    delta_left = grant.delta - grant.delta_spent
    if not fits(epsilon, delta, eps_left, delta_left):
        raise BudgetExceeded(
            f"{what} costs epsilon={epsilon:g}, delta={delta:g}; grant {grant.id} has "
            f"epsilon={max(eps_left, 0):g}, delta={max(delta_left, 0):g} left.",
            code="budget_exceeded", details={"grant_id": grant.id, "epsilon_left": max(eps_left, 0.0),
                                             "delta_left": max(delta_left, 0.0)})
    if cap is None:
        raise NotAuthorized(f"Dataset '{dataset}' has no budget configured.", code="not_authorized")
    if not fits(epsilon, delta, cap.epsilon_cap - cap.epsilon_spent, cap.delta_cap - cap.delta_spent):
        raise BudgetExceeded(f"Dataset '{dataset}' has reached its lifetime privacy budget.",
                             code="dataset_budget_exceeded")


def left(grant) -> Budget:
    """What a grant (ORM object or row) has left to spend."""
    return Budget(epsilon=max(grant.epsilon - grant.epsilon_spent, 0.0),
                  delta=max(grant.delta - grant.delta_spent, 0.0))


def grant_is_live(grant: Grant) -> bool:
    expires = as_utc(grant.expires_at)
    return not grant.revoked and (expires is None or expires > datetime.now(timezone.utc))


def choose_grant(session: Session, user: str, dataset: str, grant_id: int | None) -> Grant:
    """The grant a release spends: the one named, or the user's only live grant for the dataset."""
    if grant_id is not None:
        return _pick([session.get(Grant, grant_id)], user, dataset, grant_id)
    rows = session.execute(select(Grant).where(Grant.user_name == user, Grant.dataset == dataset)
                           .order_by(Grant.id)).scalars().all()
    return _pick(rows, user, dataset, None)


def _pick(rows, user: str, dataset: str, grant_id: int | None):
    """The grant (ORM object or row) a release spends among ``rows``; refusals in the ledger's words."""
    if grant_id is not None:
        grant = rows[0] if rows else None
        if grant is None or grant.user_name != user or grant.dataset != dataset:
            raise NotAuthorized(f"You have no grant {grant_id} for dataset '{dataset}'.", code="no_grant")
        if not grant_is_live(grant):
            raise NotAuthorized(f"Grant {grant_id} has expired or was revoked.", code="grant_expired")
        return grant
    grants = [g for g in rows if grant_is_live(g)]
    if not grants:
        raise NotAuthorized(f"You have no live grant for dataset '{dataset}'; ask its owner for access.",
                            code="no_grant")
    if len(grants) > 1:
        ids = ", ".join(str(g.id) for g in grants)
        raise InvalidQuery(f"You have several grants for '{dataset}' ({ids}); name one with grant_id= or purpose=.",
                           code="grant_ambiguous")
    return grants[0]


# Plain Core statements, built once: the reservation is on every release's path.
_B, _G, _C = DatasetBudget.__table__, Grant.__table__, Charge.__table__
_CAP_FOR_UPDATE = select(_B).where(_B.c.dataset == bindparam("ds")).with_for_update()
_GRANTS_OF = select(_G).where(_G.c.user_name == bindparam("user"), _G.c.dataset == bindparam("ds")).order_by(_G.c.id)
_GRANT = select(_G).where(_G.c.id == bindparam("gid"))
_GRANT_FOR_UPDATE = _GRANT.with_for_update()
_SPEND_GRANT = update(_G).where(_G.c.id == bindparam("gid")).values(
    epsilon_spent=_G.c.epsilon_spent + bindparam("e"), delta_spent=_G.c.delta_spent + bindparam("d"))
_SPEND_CAP = update(_B).where(_B.c.dataset == bindparam("ds")).values(
    epsilon_spent=_B.c.epsilon_spent + bindparam("e"), delta_spent=_B.c.delta_spent + bindparam("d"))
_INSERT_CHARGE = insert(_C)


def reserve(session: Session, user: str, dataset: str, version: str, channel: str, spec_hash: str, cost: Cost,
            grant_id: int | None, request_id: str | None) -> tuple[int, int]:
    """Lock, check and record a charge against a grant and the dataset's lifetime cap: ``(charge id, grant id)``."""
    db = session.connection()
    cap = db.execute(_CAP_FOR_UPDATE, {"ds": dataset}).first()
    if grant_id is not None:
        rows = db.execute(_GRANT, {"gid": grant_id}).all()
    else:
        rows = db.execute(_GRANTS_OF, {"user": user, "ds": dataset}).all()
    chosen = _pick(rows, user, dataset, grant_id)
    grant = db.execute(_GRANT_FOR_UPDATE, {"gid": chosen.id}).first()  # locked, and as of now
    check_fits(grant, cap, dataset, cost.epsilon, cost.delta)
    spend = {"e": cost.epsilon, "d": cost.delta}
    db.execute(_SPEND_GRANT, dict(spend, gid=grant.id))
    db.execute(_SPEND_CAP, dict(spend, ds=dataset))
    charge_id = db.execute(_INSERT_CHARGE, {
        "grant_id": grant.id, "user_name": user, "dataset": dataset, "dataset_version": version, "channel": channel,
        "spec_hash": spec_hash, "epsilon": cost.epsilon, "delta": cost.delta, "state": "reserved",
        "request_id": request_id, "created_at": utcnow()}).inserted_primary_key[0]
    audit.append(session, user, "reserve", dataset, charge_id=charge_id, grant_id=grant.id, channel=channel,
                 epsilon=cost.epsilon, delta=cost.delta, spec_hash=spec_hash)
    return charge_id, grant.id
