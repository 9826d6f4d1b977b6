"""Code-job records in the node's SQL store (the same database as grants, reviews and audit).

``code_jobs``: one row per (code, parameters, outputs, dataset version) an
analyst submitted, with its approval and run state. ``code_job_outputs``: one
row per file a run produced (and its log), with its disclosure checks; the
bytes themselves are held in the review queue (``reviews.result_json``) until
an owner releases them.
"""

from __future__ import annotations

import json
from datetime import datetime

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from ...node.store import Base, Review, Store, as_utc, utcnow
from .wire import Check, CodeJobInfo, DPUse, JobOutput


class CodeJobRecord(Base):
    __tablename__ = "code_jobs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    dataset_version: Mapped[str] = mapped_column(String(80))
    code_name: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(8))
    code: Mapped[str] = mapped_column(Text)
    code_hash: Mapped[str] = mapped_column(String(64))
    approval_hash: Mapped[str] = mapped_column(String(64), index=True)
    job_hash: Mapped[str] = mapped_column(String(64), index=True)
    parameters_json: Mapped[str] = mapped_column(Text)
    outputs_json: Mapped[str] = mapped_column(Text)
    purpose: Mapped[str] = mapped_column(Text, default="")
    note: Mapped[str] = mapped_column(Text, default="")
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"), nullable=True)
    dp_epsilon: Mapped[float] = mapped_column(Float, default=0.0)
    dp_spent: Mapped[float] = mapped_column(Float, default=0.0)
    dp_releases_json: Mapped[str] = mapped_column(Text, default="[]")
    # pending | approved | running | held | released | withheld | rejected | failed
    status: Mapped[str] = mapped_column(String(16), default="pending", index=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    approved_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    approved_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    approved_with_job: Mapped[int | None] = mapped_column(Integer, nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class CodeJobOutputRecord(Base):
    __tablename__ = "code_job_outputs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("code_jobs.id"), index=True)
    name: Mapped[str] = mapped_column(String(120))
    media_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    is_log: Mapped[bool] = mapped_column(Boolean, default=False)
    problem: Mapped[str | None] = mapped_column(Text, nullable=True)
    checks_json: Mapped[str] = mapped_column(Text, default="[]")
    preview: Mapped[str | None] = mapped_column(Text, nullable=True)
    review_id: Mapped[int | None] = mapped_column(ForeignKey("reviews.id"), nullable=True)


TABLES = [CodeJobRecord.__table__, CodeJobOutputRecord.__table__]


def ensure_tables(store: Store) -> None:
    """Create this channel's tables if the store lacks them (idempotent)."""
    Base.metadata.create_all(store.engine, tables=TABLES)


def outputs_of(session: Session, job_id: int, owner_view: bool) -> list[JobOutput]:
    rows = session.execute(select(CodeJobOutputRecord, Review.status).outerjoin(
        Review, Review.id == CodeJobOutputRecord.review_id).where(CodeJobOutputRecord.job_id == job_id)
        .order_by(CodeJobOutputRecord.id)).all()
    out = []
    for row, status in rows:
        # The checks are computed on the real rows (group sizes, identifiers): the analyst sees them only with
        # the released output.
        visible = owner_view or status == "approved"
        checks = [Check(**c) for c in json.loads(row.checks_json)] if visible else []
        out.append(JobOutput(name=row.name, media_type=row.media_type, size=row.size, sha256=row.sha256,
                             log=row.is_log, problem=row.problem, checks=checks,
                             flagged=any(not c.ok for c in checks), review_id=row.review_id, status=status,
                             preview=row.preview if owner_view else None))
    return out


def job_info(session: Session, row: CodeJobRecord, owner_view: bool, with_code: bool = False) -> CodeJobInfo:
    return CodeJobInfo(
        job_id=row.id, user=row.user_name, dataset=row.dataset, dataset_version=row.dataset_version,
        code_name=row.code_name, kind=row.kind, code_hash=row.code_hash, approval_hash=row.approval_hash,
        job_hash=row.job_hash, parameters=json.loads(row.parameters_json), outputs=json.loads(row.outputs_json),
        purpose=row.purpose, note=row.note, grant_id=row.grant_id, dp_epsilon=row.dp_epsilon, dp_spent=row.dp_spent,
        status=row.status, error=row.error, approved_by=row.approved_by, approved_at=as_utc(row.approved_at),
        approved_with_job=row.approved_with_job, reason=row.reason, created_at=as_utc(row.created_at),
        started_at=as_utc(row.started_at), finished_at=as_utc(row.finished_at),
        results=outputs_of(session, row.id, owner_view),
        dp_releases=[DPUse(**d) for d in json.loads(row.dp_releases_json)],
        code=row.code if with_code else None)
