"""The append-only, hash-chained audit log.

Each record's hash is SHA-256 over the previous hash and the record's
canonical JSON, so changing, deleting or reordering any record breaks every
later link. Writers lock the chain's head row, so concurrent appends stay
in one line. :func:`verify` walks the chain.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

from sqlalchemy import bindparam, event, insert, select, update
from sqlalchemy.orm import Session

from .store import GENESIS_HASH, AuditHead, AuditRecord, Store


def _digest(prev_hash: str, seq: int, ts: str, actor: str, action: str, dataset: str | None, details: str) -> str:
    body = json.dumps([seq, ts, actor, action, dataset, details], separators=(",", ":"), sort_keys=True)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def append(session: Session, actor: str, action: str, dataset: str | None = None, **details: Any) -> None:
    """Append one record inside the caller's transaction (so it commits or rolls back with it).

    The chain's head row is locked at the first append of a transaction; the records and the new head are
    written in one go when the transaction commits (cheap when many records share a transaction).
    """
    pending = session.info.get(_PENDING)
    if pending is None:
        row = session.connection().execute(_HEAD_FOR_UPDATE).one()
        pending = session.info[_PENDING] = {"head": (row.last_seq, row.last_hash), "rows": []}
    seq, prev = pending["head"][0] + 1, pending["head"][1]
    ts = datetime.now(timezone.utc).isoformat()
    payload = json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)
    digest = _digest(prev, seq, ts, actor, action, dataset, payload)
    pending["rows"].append({"seq": seq, "ts": ts, "actor": actor, "action": action, "dataset": dataset,
                            "details": payload, "prev_hash": prev, "hash": digest})
    pending["head"] = (seq, digest)


_PENDING = "workbench_audit_pending"
# Plain Core statements on the tables, built once (the ORM's bulk paths cost ~10x more per call).
_HEAD, _RECORDS = AuditHead.__table__, AuditRecord.__table__
_HEAD_FOR_UPDATE = select(_HEAD.c.last_seq, _HEAD.c.last_hash).where(_HEAD.c.id == 1).with_for_update()
_INSERT = insert(_RECORDS)
_MOVE_HEAD = update(_HEAD).where(_HEAD.c.id == 1).values(last_seq=bindparam("new_seq"),
                                                          last_hash=bindparam("new_hash"))


@event.listens_for(Session, "before_commit")
def _write_pending(session: Session) -> None:
    pending = session.info.pop(_PENDING, None)
    if pending is not None:
        connection = session.connection()
        connection.execute(_INSERT, pending["rows"])
        seq, digest = pending["head"]
        connection.execute(_MOVE_HEAD, {"new_seq": seq, "new_hash": digest})


@event.listens_for(Session, "after_rollback")
def _forget_pending(session: Session) -> None:
    session.info.pop(_PENDING, None)


@dataclass
class Verification:
    ok: bool
    records: int
    first_bad_seq: int | None = None
    reason: str = ""


def verify(store: Store) -> Verification:
    """Walk the whole chain; report the first record whose link or hash does not hold."""
    prev, expected_seq, count = GENESIS_HASH, 1, 0
    with store.transaction() as session:
        head = session.get(AuditHead, 1)
        for rec in session.execute(select(AuditRecord).order_by(AuditRecord.seq)).scalars():
            count += 1
            if rec.seq != expected_seq:
                return Verification(False, count, rec.seq, f"record {expected_seq} is missing")
            if rec.prev_hash != prev:
                return Verification(False, count, rec.seq, "link to the previous record is broken")
            if _digest(prev, rec.seq, rec.ts, rec.actor, rec.action, rec.dataset, rec.details) != rec.hash:
                return Verification(False, count, rec.seq, "record content does not match its hash")
            prev, expected_seq = rec.hash, expected_seq + 1
        if head is not None and (head.last_hash != prev or head.last_seq != count):
            return Verification(False, count, count + 1, "records after the last one were removed")
    return Verification(True, count)


def records(store: Store, actor: str | None = None, actions: tuple[str, ...] | None = None,
            limit: int | None = None) -> Iterator[dict]:
    """Records as dicts, newest first, optionally for one actor and some actions."""
    with store.transaction() as session:
        stmt = select(AuditRecord).order_by(AuditRecord.seq.desc())
        if actor is not None:
            stmt = stmt.where(AuditRecord.actor == actor)
        if actions:
            stmt = stmt.where(AuditRecord.action.in_(actions))
        if limit:
            stmt = stmt.limit(limit)
        rows = session.execute(stmt).scalars().all()
    for rec in rows:
        yield {"seq": rec.seq, "ts": rec.ts, "actor": rec.actor, "action": rec.action, "dataset": rec.dataset,
               "details": json.loads(rec.details), "prev_hash": rec.prev_hash, "hash": rec.hash}
