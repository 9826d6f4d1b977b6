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

from sqlalchemy import select
from sqlalchemy.orm import Session

from .store import GENESIS_HASH, AuditHead, AuditRecord, Store


def _digest(prev_hash: str, seq: int, ts: str, actor: str, action: str, dataset: str | None, details: str) -> str:
    body = json.dumps([seq, ts, actor, action, dataset, details], separators=(",", ":"), sort_keys=True)
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def append(session: Session, actor: str, action: str, dataset: str | None = None, **details: Any) -> AuditRecord:
    """Append one record inside the caller's transaction (so it commits or rolls back with it)."""
    head = session.get(AuditHead, 1, with_for_update=True)
    seq = head.last_seq + 1
    ts = datetime.now(timezone.utc).isoformat()
    payload = json.dumps(details, sort_keys=True, separators=(",", ":"), default=str)
    digest = _digest(head.last_hash, seq, ts, actor, action, dataset, payload)
    record = AuditRecord(seq=seq, ts=ts, actor=actor, action=action, dataset=dataset, details=payload,
                         prev_hash=head.last_hash, hash=digest)
    session.add(record)
    head.last_seq, head.last_hash = seq, digest
    return record


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
