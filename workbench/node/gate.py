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

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from ..errors import ComputationFailed, InvalidQuery, PrivacyError, WorkbenchError
from ..protocol import Budget
from . import audit
from .agreement import check_release
from .answers import AnswerIndex, StoredAnswer
from .auth import Principal
from .catalog import DatasetEntry
from .fairness import UserLimiter
from .group_commit import WAIT_S, GroupCommitter
from .ledger import Cost, left, reserve
from .store import Charge, DatasetBudget, Grant, Release, Store, as_utc, utcnow

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
    budget_left: Budget | None = None  # what the grant has left, read with the release or replay
    dataset_version: str | None = None  # the version the answer was computed on (a replay keeps its own)


def spec_hash(channel: str, spec: dict, cost: Cost) -> str:
    """The identity of a question: channel, canonical spec and price."""
    canonical = json.dumps({"channel": channel, "spec": spec, "epsilon": cost.epsilon, "delta": cost.delta},
                           sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class ReleaseGate:
    def __init__(self, store: Store, limiter: UserLimiter | None = None):
        self.store = store
        self.limiter = limiter or UserLimiter()
        self._locks = [threading.Lock() for _ in range(64)]
        self.answers = AnswerIndex()
        self._writes = GroupCommitter(store, finish=_fill_budgets_left)

    def close(self) -> None:
        self._writes.close()

    # ---------------------------------------------------------------- authorization

    def authorize(self, principal: Principal, entry: DatasetEntry, channel: str | None = None) -> None:
        """Role, then the dataset's sharing agreement for this channel (refusals name the clause, audited)."""
        principal.require(*RELEASING_ROLES)
        if channel is not None:
            self.check_agreement(principal, entry, channel)

    def check_agreement(self, principal: Principal, entry: DatasetEntry, channel: str) -> None:
        """The dataset's sharing agreement for this caller and channel (workbench.node.agreement); audited refusal."""
        try:
            check_release(entry.config.agreement, channel=channel, role=principal.role, claims=principal.claims)
        except WorkbenchError as exc:
            self.refuse(principal, entry.name, exc, channel=channel, clause=exc.details.get("clause"))
            raise

    def refuse(self, principal: Principal, dataset: str | None, error: WorkbenchError, **details: Any) -> None:
        """Record a refusal in the audit log (its own transaction: the refused one rolled back)."""
        with self.store.transaction() as session:
            audit.append(session, principal.name, "refusal", dataset, code=error.code, **details)

    def record(self, actor: str, action: str, dataset: str | None, change: Callable[[Any], dict | None] | None = None,
               **details: Any) -> None:
        """A step that releases nothing (code submitted, approved, run, ...): the channel's change to its own rows
        (``change(session)``, which may return more audit details) and its audit record, in one durable
        transaction. Channels log through here, never to the audit log directly."""
        with self.store.transaction() as session:
            extra = change(session) if change is not None else None
            audit.append(session, actor, action, dataset, **details, **(extra or {}))

    # ---------------------------------------------------------------- the release path

    def has_answer(self, principal: Principal, entry: DatasetEntry, qhash: str) -> bool:
        """Whether this user already received the answer to this question (a replay would be free)."""
        return (self.answers.by_question(principal.name, entry.name, entry.version, qhash) is not None
                or self._stored_answer(principal, entry, qhash, None) is not None)

    def release(self, principal: Principal, entry: DatasetEntry, channel: str, kind: str, spec: dict, cost: Cost,
                compute: Callable[[], dict], grant_id: int | None = None, request_id: str | None = None,
                text: str = "", queued_elsewhere: bool = False) -> Outcome:
        """Charge, compute and record one release (or replay a stored one for free). ``text``: the question in
        readable form, kept in the audit record (the analyst's history shows it).

        Within the caller's share of heavy work (:class:`RateLimited` before any charge), unless
        ``queued_elsewhere`` (a channel with its own bounded queue, e.g. synthesis jobs)."""
        self.authorize(principal, entry, channel)
        qhash = spec_hash(channel, spec, cost)
        replay = self._replay_remembered(principal, entry, channel, kind, qhash, request_id, text)
        if replay is not None:
            return replay.result(WAIT_S)
        return self._release(principal, entry, channel, kind, qhash, cost, compute, grant_id, request_id, text,
                             queued_elsewhere)

    async def release_async(self, principal: Principal, entry: DatasetEntry, channel: str, kind: str, spec: dict,
                            cost: Cost, compute: Callable[[], dict], grant_id: int | None = None,
                            request_id: str | None = None, text: str = "") -> Outcome:
        """:meth:`release` for the event loop: a replay of a remembered answer waits on no thread."""
        from starlette.concurrency import run_in_threadpool

        self.authorize(principal, entry, channel)
        qhash = spec_hash(channel, spec, cost)
        replay = self._replay_remembered(principal, entry, channel, kind, qhash, request_id, text)
        if replay is not None:
            return await asyncio.wrap_future(replay)
        async with self.limiter.queued(principal.name):  # the user's share; queued without holding a thread
            return await run_in_threadpool(self._release, principal, entry, channel, kind, qhash, cost, compute,
                                           grant_id, request_id, text, True)

    def replay_if_known(self, principal: Principal, entry: DatasetEntry, channel: str, kind: str, spec: dict,
                        cost: Cost, request_id: str | None = None, text: str = "") -> "Future[Outcome] | None":
        """The replay of an answer this process remembers (its audit record group-committed), or None."""
        self.authorize(principal, entry, channel)
        return self._replay_remembered(principal, entry, channel, kind, spec_hash(channel, spec, cost), request_id,
                                       text)

    def _replay_remembered(self, principal: Principal, entry: DatasetEntry, channel: str, kind: str, qhash: str,
                           request_id: str | None, text: str = "") -> "Future[Outcome] | None":
        """From memory only: the replay of this user's answer to this question, or None (ask the database)."""
        if request_id is not None:
            known = self.answers.by_request(principal.name, request_id)
            if known is not None and (known.spec_hash != qhash or known.dataset != entry.name):
                raise _request_id_conflict()
        else:
            known = self.answers.by_question(principal.name, entry.name, entry.version, qhash)
        if known is None:
            return None
        return self._writes.submit(self._replay_write(principal, known, channel, kind, text))

    @staticmethod
    def _replay_write(principal: Principal, known: StoredAnswer, channel: str, kind: str, text: str = ""):
        """The replay's audit record (group-committed) and the grant's current balance."""
        def write(session) -> Outcome:
            audit.append(session, principal.name, "replay", known.dataset, release_id=known.release_id,
                         channel=channel, kind=kind, epsilon=0.0, delta=0.0, grant_id=known.grant_id,
                         **({"text": text} if text else {}))
            return Outcome(known.release_id, json.loads(known.result_json), True, Cost(0.0, 0.0),
                           Cost(known.epsilon, known.delta), known.grant_id, known.released_at,
                           dataset_version=known.dataset_version)
        return write

    def _stripes(self, principal: Principal, qhash: str, request_id: str | None) -> list[threading.Lock]:
        """The locks a release holds: its question's and, with a request id, the id's (one order: no deadlock).

        Two bodies sent under one request id, or one question under two ids, are then decided one at a time."""
        indices = {int(qhash[:8], 16) % len(self._locks)}
        if request_id is not None:
            digest = hashlib.sha256(f"{principal.name}\0{request_id}".encode()).hexdigest()
            indices.add(int(digest[:8], 16) % len(self._locks))
        return [self._locks[i] for i in sorted(indices)]

    def _release(self, principal: Principal, entry: DatasetEntry, channel: str, kind: str, qhash: str, cost: Cost,
                 compute: Callable[[], dict], grant_id: int | None, request_id: str | None,
                 text: str = "", admitted: bool = False) -> Outcome:
        with contextlib.ExitStack() as held:
            for lock in self._stripes(principal, qhash, request_id):
                held.enter_context(lock)
            known = self._stored_answer(principal, entry, qhash, request_id)
            if known is not None:
                return self._writes.run(self._replay_write(principal, known, channel, kind, text))
            # The caller's share of heavy work, taken before anything is charged (RateLimited costs nothing).
            if not admitted:
                held.enter_context(self.limiter.admit(principal.name, "compute"))
            charge_id, charged_grant = self._reserve(principal, entry, channel, kind, qhash, cost, grant_id,
                                                     request_id)
            if charge_id is None:  # another process answered this request id first
                return self._writes.run(self._replay_write(principal, charged_grant, channel, kind, text))
            try:
                result = compute()
            except WorkbenchError as exc:
                self._fail(principal, entry, charge_id, exc.code)
                raise
            except Exception:  # noqa: BLE001
                log.exception("release computation failed")
                self._fail(principal, entry, charge_id, "computation_failed")
                raise ComputationFailed("The computation failed; the charge for it stands.") from None
            return self._record(principal, entry, channel, kind, qhash, cost, charge_id, charged_grant, request_id,
                                result, text)

    def _reserve(self, principal: Principal, entry: DatasetEntry, channel: str, kind: str, qhash: str, cost: Cost,
                 grant_id: int | None, request_id: str | None):
        """Reserve the charge durably (fsync) before anything is computed: ``(charge id, grant id)``, or
        ``(None, stored answer)`` when another process stored this request id's answer meanwhile."""
        free = entry.info.tier == "open"

        def reservation(session) -> tuple[int, int | None]:
            if free:
                charge = Charge(grant_id=None, user_name=principal.name, dataset=entry.name,
                                dataset_version=entry.version, channel=channel, spec_hash=qhash,
                                epsilon=0.0, delta=0.0, state="reserved", request_id=request_id)
                session.add(charge)
                session.flush()
                return charge.id, None
            return reserve(session, principal.name, entry.name, entry.version, channel, qhash, cost,
                           grant_id, request_id)

        try:
            return self._writes.run(reservation, durable=True)
        except IntegrityError:
            # A charge with this request id appeared since we looked (another node process on the same
            # database): it is this question's answer, a conflict, or still running; never a 500.
            known = self._stored_answer(principal, entry, qhash, request_id)
            if known is None:
                raise ComputationFailed("This request is still running; ask again.", code="computation_failed")
            return None, known
        except WorkbenchError as exc:
            self.refuse(principal, entry.name, exc, channel=channel, kind=kind, epsilon=cost.epsilon,
                        delta=cost.delta)
            raise

    def _record(self, principal: Principal, entry: DatasetEntry, channel: str, kind: str, qhash: str, cost: Cost,
                charge_id: int, charged_grant: int | None, request_id: str | None, result: dict,
                text: str = "") -> Outcome:
        """Commit the charge, store the answer and its audit record; remember the answer for replays."""
        charged = Cost(0.0, 0.0) if entry.info.tier == "open" else cost
        result_json = json.dumps(result, default=str)

        def record(session) -> tuple[Outcome, StoredAnswer]:
            # May share a light transaction: the charge is already durable; losing this record to a power
            # cut keeps it charged.
            now = utcnow()
            connection = session.connection()
            connection.execute(_COMMIT_CHARGE, {"cid": charge_id, "now": now})
            release_id = connection.execute(_INSERT_RELEASE, {
                "charge_id": charge_id, "user_name": principal.name, "dataset": entry.name,
                "dataset_version": entry.version, "channel": channel, "kind": kind, "spec_hash": qhash,
                "result_json": result_json, "created_at": now}).inserted_primary_key[0]
            audit.append(session, principal.name, "release", entry.name, release_id=release_id,
                         charge_id=charge_id, grant_id=charged_grant, channel=channel, kind=kind,
                         epsilon=charged.epsilon, delta=charged.delta, dataset_version=entry.version,
                         **({"text": text} if text else {}))
            outcome = Outcome(release_id, result, False, charged, cost, charged_grant, now,
                              _left(session, charged_grant), entry.version)
            answer = StoredAnswer(release_id, principal.name, entry.name, entry.version, qhash, request_id,
                                  result_json, charged.epsilon, charged.delta, charged_grant, now)
            return outcome, answer

        outcome, answer = self._writes.run(record)
        self.answers.remember(answer)
        return outcome

    def _stored_answer(self, principal: Principal, entry: DatasetEntry, qhash: str,
                       request_id: str | None) -> StoredAnswer | None:
        """This user's stored answer to this question (or to this request id), read from the database."""
        with self.store.transaction("read") as session:
            connection = session.connection()
            row = None
            if request_id is not None:
                charge = connection.execute(_CHARGE_BY_REQUEST, {"user": principal.name, "rid": request_id}).first()
                if charge is not None:
                    if charge.spec_hash != qhash or charge.dataset != entry.name:
                        raise _request_id_conflict()
                    row = connection.execute(_ANSWER_OF_CHARGE, {"cid": charge.id}).first()
                    if row is None:
                        raise ComputationFailed("This request is still running or failed; its charge stands.",
                                                code="computation_failed")
            if row is None:
                row = connection.execute(_ANSWER_TO_QUESTION, {"user": principal.name, "ds": entry.name,
                                                               "ver": entry.version, "qh": qhash}).first()
            if row is None:
                return None
        answer = StoredAnswer(row.id, row.user_name, row.dataset, row.dataset_version, row.spec_hash,
                              row.request_id, row.result_json, row.epsilon, row.delta, row.grant_id,
                              as_utc(row.created_at))
        self.answers.remember(answer)
        return answer

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


# Plain Core statements for the release path, built once (the ORM's per-call cost dominated a release).
_C, _R, _G = Charge.__table__, Release.__table__, Grant.__table__
_ANSWER = select(_R.c.id, _R.c.user_name, _R.c.dataset, _R.c.dataset_version, _R.c.spec_hash, _R.c.result_json,
                 _R.c.created_at, _C.c.request_id, _C.c.epsilon, _C.c.delta, _C.c.grant_id
                 ).join_from(_R, _C, _R.c.charge_id == _C.c.id)
_ANSWER_OF_CHARGE = _ANSWER.where(_R.c.charge_id == bindparam("cid"))
_ANSWER_TO_QUESTION = _ANSWER.where(_R.c.user_name == bindparam("user"), _R.c.dataset == bindparam("ds"),
                                    _R.c.dataset_version == bindparam("ver"), _R.c.spec_hash == bindparam("qh"))
_CHARGE_BY_REQUEST = select(_C.c.id, _C.c.spec_hash, _C.c.dataset).where(
    _C.c.user_name == bindparam("user"), _C.c.request_id == bindparam("rid"))
_COMMIT_CHARGE = update(_C).where(_C.c.id == bindparam("cid")).values(state="committed",
                                                                      finished_at=bindparam("now"))
_INSERT_RELEASE = insert(_R)
_BALANCE = select(_G.c.id, _G.c.epsilon, _G.c.epsilon_spent, _G.c.delta, _G.c.delta_spent)
_GRANT_LEFT = _BALANCE.where(_G.c.id == bindparam("gid"))
_GRANTS_LEFT = _BALANCE.where(_G.c.id.in_(bindparam("gids", expanding=True)))


def _left(session, grant_id: int | None) -> Budget | None:
    """What the grant has left, read in the caller's transaction."""
    row = session.connection().execute(_GRANT_LEFT, {"gid": grant_id}).first() if grant_id is not None else None
    return None if row is None else left(row)


def _fill_budgets_left(session, results: list) -> list:
    """Each replay's grant balance, read once for the whole batch (other results pass unchanged)."""
    def wants(o) -> bool:
        return isinstance(o, Outcome) and o.budget_left is None and o.grant_id is not None

    ids = {o.grant_id for o in results if wants(o)}
    if not ids:
        return results
    rows = session.connection().execute(_GRANTS_LEFT, {"gids": list(ids)}).all()
    balances = {r.id: left(r) for r in rows}
    return [dataclasses.replace(o, budget_left=balances.get(o.grant_id)) if wants(o) else o for o in results]


def _request_id_conflict() -> InvalidQuery:
    return InvalidQuery("This request_id was already used for a different question.", code="request_id_conflict")


def check_not_private(entry: DatasetEntry) -> None:
    if entry.info.tier != "open":
        raise PrivacyError("Rows of a private dataset never leave the node; ask a DP question instead.",
                            code="privacy_violation")
