"""The release gate: the one function every answer leaving the node passes.

authenticate (done by the app) → authorize (role, tier, grant) → price →
replay check → reserve in the ledger (atomic; refuses overspending) →
compute → record the release and its audit entry → return.

A channel supplies only ``cost`` and a ``compute`` callable; it never touches
the ledger or the audit log. Privacy guarantee: no code path returns a
computed answer without a committed charge for it, except a replay of an
answer the same user already received (post-processing of a past release).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import select

from ..errors import ComputationFailed, InvalidQuery, PrivacyError, WorkbenchError
from . import audit
from .auth import Principal
from .catalog import DatasetEntry
from .ledger import Cost, reserve
from .store import Charge, DatasetBudget, Release, Store, utcnow

log = logging.getLogger(__name__)

RELEASING_ROLES = ("analyst", "owner")


@dataclass(frozen=True)
class Outcome:
    release_id: int
    result: dict
    replayed: bool
    charged: Cost
    cost: Cost
    grant_id: int | None
    released_at: datetime


def spec_hash(channel: str, spec: dict, cost: Cost) -> str:
    """The identity of a question: channel, canonical spec and price."""
    canonical = json.dumps({"channel": channel, "spec": spec, "epsilon": cost.epsilon, "delta": cost.delta},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ReleaseGate:
    def __init__(self, store: Store):
        self.store = store
        self._locks = [threading.Lock() for _ in range(64)]

    # ---------------------------------------------------------------- authorization

    def authorize(self, principal: Principal, entry: DatasetEntry) -> None:
        principal.require(*RELEASING_ROLES)

    def refuse(self, principal: Principal, dataset: str | None, error: WorkbenchError, **details: Any) -> None:
        """Record a refusal in the audit log (its own transaction: the refused one rolled back)."""
        with self.store.transaction() as session:
            audit.append(session, principal.name, "refusal", dataset, code=error.code, **details)

    # ---------------------------------------------------------------- the release path

    def has_answer(self, principal: Principal, entry: DatasetEntry, qhash: str) -> bool:
        """Whether this user already received the answer to this question (a replay would be free)."""
        with self.store.transaction("read") as session:
            return session.execute(select(Release.id).where(
                Release.user_name == principal.name, Release.dataset == entry.name,
                Release.dataset_version == entry.version, Release.spec_hash == qhash)).first() is not None

    def release(self, principal: Principal, entry: DatasetEntry, channel: str, kind: str, spec: dict, cost: Cost,
                compute: Callable[[], dict], grant_id: int | None = None, request_id: str | None = None) -> Outcome:
        """Charge, compute and record one release (or replay a stored one for free)."""
        self.authorize(principal, entry)
        qhash = spec_hash(channel, spec, cost)
        free = entry.info.tier == "open"
        with self._locks[int(qhash[:8], 16) % len(self._locks)]:
            replay = self._replay(principal, entry, qhash, request_id, channel, kind)
            if replay is not None:
                return replay
            try:
                with self.store.transaction() as session:
                    if free:
                        charge = Charge(grant_id=None, user_name=principal.name, dataset=entry.name,
                                        dataset_version=entry.version, channel=channel, spec_hash=qhash,
                                        epsilon=0.0, delta=0.0, state="reserved", request_id=request_id)
                        session.add(charge)
                        session.flush()
                    else:
                        charge = reserve(session, principal.name, entry.name, entry.version, channel, qhash, cost,
                                         grant_id, request_id)
                    charge_id, charged_grant = charge.id, charge.grant_id
            except WorkbenchError as exc:
                self.refuse(principal, entry.name, exc, channel=channel, kind=kind, epsilon=cost.epsilon,
                            delta=cost.delta)
                raise
            try:
                result = compute()
            except WorkbenchError as exc:
                self._fail(principal, entry, charge_id, exc.code)
                raise
            except Exception:  # noqa: BLE001
                log.exception("release computation failed")
                self._fail(principal, entry, charge_id, "computation_failed")
                raise ComputationFailed("The computation failed; the charge for it stands.") from None
            charged = Cost(0.0, 0.0) if free else cost
            # "light": the charge is already durable; losing this record to a power cut keeps it charged.
            with self.store.transaction("light") as session:
                charge = session.get(Charge, charge_id, with_for_update=True)
                charge.state, charge.finished_at = "committed", utcnow()
                stored = Release(charge_id=charge_id, user_name=principal.name, dataset=entry.name,
                                 dataset_version=entry.version, channel=channel, kind=kind, spec_hash=qhash,
                                 result_json=json.dumps(result, default=str))
                session.add(stored)
                session.flush()
                audit.append(session, principal.name, "release", entry.name, release_id=stored.id,
                             charge_id=charge_id, grant_id=charged_grant, channel=channel, kind=kind,
                             epsilon=charged.epsilon, delta=charged.delta, dataset_version=entry.version)
                return Outcome(stored.id, result, False, charged, cost, charged_grant, stored.created_at)

    def _replay(self, principal: Principal, entry: DatasetEntry, qhash: str, request_id: str | None, channel: str,
                kind: str) -> Outcome | None:
        with self.store.transaction("light") as session:  # a replay moves no budget: no fsync
            stored = None
            if request_id is not None:
                charge = session.execute(select(Charge).where(Charge.user_name == principal.name,
                                                              Charge.request_id == request_id)).scalar_one_or_none()
                if charge is not None:
                    if charge.spec_hash != qhash or charge.dataset != entry.name:
                        raise InvalidQuery("This request_id was already used for a different question.",
                                           code="request_id_conflict")
                    stored = session.execute(select(Release).where(Release.charge_id == charge.id)).scalar_one_or_none()
                    if stored is None:
                        raise ComputationFailed("This request is still running or failed; its charge stands.",
                                                code="computation_failed")
            if stored is None:
                stored = session.execute(select(Release).where(
                    Release.user_name == principal.name, Release.dataset == entry.name,
                    Release.dataset_version == entry.version, Release.spec_hash == qhash)).scalar_one_or_none()
            if stored is None:
                return None
            charge = session.get(Charge, stored.charge_id)
            audit.append(session, principal.name, "replay", entry.name, release_id=stored.id, channel=channel,
                         kind=kind, epsilon=0.0, delta=0.0, grant_id=charge.grant_id)
            return Outcome(stored.id, json.loads(stored.result_json), True, Cost(0.0, 0.0),
                           Cost(charge.epsilon, charge.delta), charge.grant_id, stored.created_at)

    def _fail(self, principal: Principal, entry: DatasetEntry, charge_id: int, code: str) -> None:
        """The computation failed after the reservation: the charge stands (conservative)."""
        with self.store.transaction("light") as session:
            charge = session.get(Charge, charge_id, with_for_update=True)
            charge.state, charge.finished_at = "failed", utcnow()
            audit.append(session, principal.name, "release_failed", entry.name, charge_id=charge_id, code=code)

    def recover(self) -> int:
        """At start-up: reservations left by a crash stay charged; say so in the audit log."""
        with self.store.transaction() as session:
            stale = session.execute(select(Charge).where(Charge.state == "reserved")).scalars().all()
            for charge in stale:
                charge.state, charge.finished_at = "failed", utcnow()
                audit.append(session, "node", "reservation_kept", charge.dataset, charge_id=charge.id,
                             epsilon=charge.epsilon, delta=charge.delta, reason="node stopped during the release")
            return len(stale)

    def dataset_left(self, dataset: str) -> tuple[float, float]:
        with self.store.transaction("read") as session:
            cap = session.get(DatasetBudget, dataset)
            if cap is None:
                return 0.0, 0.0
            return max(cap.epsilon_cap - cap.epsilon_spent, 0.0), max(cap.delta_cap - cap.delta_spent, 0.0)


def check_not_private(entry: DatasetEntry) -> None:
    if entry.info.tier != "open":
        raise PrivacyError("Rows of a private dataset never leave the node; ask a DP question instead.",
                            code="privacy_violation")
