"""The node's SQL state: users, grants, budgets, charges, releases and audit.

One SQLAlchemy schema serves SQLite (the embedded default, in the node's state
folder) and PostgreSQL (by URL). Writers that move budget take row locks
(``SELECT ... FOR UPDATE`` on PostgreSQL; ``BEGIN IMMEDIATE`` on SQLite), always
in the order dataset budget → grant → audit head, so concurrent releases
serialize instead of overspending.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from sqlalchemy import (
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def as_utc(moment: datetime | None) -> datetime | None:
    """Stored times are UTC; SQLite hands them back without a zone."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=timezone.utc)
    return moment


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_version: Mapped[int] = mapped_column(Integer, default=1)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RetiredUser(Base):
    """A deleted user's last token version: a user re-created under the name starts above it, so no token
    issued to the old identity ever verifies for the new one."""

    __tablename__ = "retired_users"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    last_token_version: Mapped[int] = mapped_column(Integer)
    retired_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


def first_token_version(session: Session, name: str) -> int:
    """The token version a new user called ``name`` starts at: above any deleted user's of that name."""
    retired = session.get(RetiredUser, name)
    return 1 if retired is None else retired.last_token_version + 1


_users_generation = 0


def users_generation() -> int:
    """A number that changes whenever this process commits a change to any user (caches compare it)."""
    return _users_generation


@event.listens_for(Session, "after_flush")
def _note_user_changes(session: Session, _context) -> None:
    if any(isinstance(obj, User) for objs in (session.new, session.dirty, session.deleted) for obj in objs):
        session.info["users_changed"] = True


@event.listens_for(Session, "after_commit")
def _bump_users_generation(session: Session) -> None:
    global _users_generation
    if session.info.pop("users_changed", False):
        _users_generation += 1


class Grant(Base):
    __tablename__ = "grants"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(Text)
    epsilon: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float, default=0.0)
    epsilon_spent: Mapped[float] = mapped_column(Float, default=0.0)
    delta_spent: Mapped[float] = mapped_column(Float, default=0.0)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class DatasetBudget(Base):
    """The lifetime cap of a dataset, over every analyst and grant."""

    __tablename__ = "dataset_budgets"
    dataset: Mapped[str] = mapped_column(String(64), primary_key=True)
    epsilon_cap: Mapped[float] = mapped_column(Float)
    delta_cap: Mapped[float] = mapped_column(Float)
    epsilon_spent: Mapped[float] = mapped_column(Float, default=0.0)
    delta_spent: Mapped[float] = mapped_column(Float, default=0.0)


class Charge(Base):
    """A reservation of privacy loss. ``reserved`` rows left by a crash stay charged."""

    __tablename__ = "charges"
    __table_args__ = (UniqueConstraint("user_name", "request_id", name="uq_charge_request"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"), nullable=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    dataset_version: Mapped[str] = mapped_column(String(80))
    channel: Mapped[str] = mapped_column(String(16))
    spec_hash: Mapped[str] = mapped_column(String(64))
    epsilon: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float)
    state: Mapped[str] = mapped_column(String(16), default="reserved")  # reserved | committed | failed
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Release(Base):
    """A released answer, kept so the identical question is answered again for free."""

    __tablename__ = "releases"
    __table_args__ = (
        UniqueConstraint("user_name", "dataset", "dataset_version", "spec_hash", name="uq_release_question"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    charge_id: Mapped[int] = mapped_column(ForeignKey("charges.id"))
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    dataset: Mapped[str] = mapped_column(String(64))
    dataset_version: Mapped[str] = mapped_column(String(80))
    channel: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(32))
    spec_hash: Mapped[str] = mapped_column(String(64))
    result_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AuditRecord(Base):
    __tablename__ = "audit"
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(40))
    actor: Mapped[str] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(32), index=True)
    dataset: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[str] = mapped_column(Text)
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))


class AuditHead(Base):
    """One row: the chain's tip, locked by every writer of the audit log."""

    __tablename__ = "audit_head"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)
    last_hash: Mapped[str] = mapped_column(String(64))


class AccessRequest(Base):
    """An analyst's request for a grant; an owner other than the requester decides it."""

    __tablename__ = "access_requests"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    purpose: Mapped[str] = mapped_column(Text)
    epsilon: Mapped[float] = mapped_column(Float)
    delta: Mapped[float] = mapped_column(Float, default=0.0)
    note: Mapped[str] = mapped_column(Text, default="")
    expires_days: Mapped[float | None] = mapped_column(Float, nullable=True)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | approved | denied | withdrawn
    decided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    grant_id: Mapped[int | None] = mapped_column(ForeignKey("grants.id"), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Review(Base):
    """A release DP does not cover (e.g. SDV on real rows), held until an owner approves it."""

    __tablename__ = "reviews"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    dataset: Mapped[str] = mapped_column(String(64), index=True)
    dataset_version: Mapped[str] = mapped_column(String(80))
    channel: Mapped[str] = mapped_column(String(16))
    kind: Mapped[str] = mapped_column(String(64))
    spec_json: Mapped[str] = mapped_column(Text)
    summary_json: Mapped[str] = mapped_column(Text)  # what would leave and its privacy metrics: what the owner sees
    result_json: Mapped[str] = mapped_column(Text)  # the candidate output, held on the node until approved
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | approved | rejected
    decided_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    reason: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SynthJobRecord(Base):
    """A finished synthesis job (done, failed or cancelled), so its starter can still fetch it after a node
    restart. The synthetic rows are not copied: ``release_id`` points at the gate's stored release."""

    __tablename__ = "synth_jobs"
    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    user_name: Mapped[str] = mapped_column(String(64), index=True)
    dataset: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[str] = mapped_column(String(16))
    release_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    view_json: Mapped[str] = mapped_column(Text)  # the job's SynthJob view, release table left out
    finished_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


GENESIS_HASH = "0" * 64


def make_engine(url: str, synchronous: str = "FULL", immediate: bool = True) -> Engine:
    """An engine for ``url``; SQLite gets WAL, full sync (or ``synchronous``) and serialized writers."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 60})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection, _record):  # pragma: no cover - driver hook
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute(f"PRAGMA synchronous={synchronous}")
            cursor.execute("PRAGMA busy_timeout=60000")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn):  # pragma: no cover - driver hook
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(url, pool_size=20, max_overflow=40, pool_pre_ping=True)


class Store:
    """Owns the engine and hands out transactions.

    On a SQLite file, writers of this process queue on a Python lock (SQLite's
    own busy handler sleeps up to 100 ms between retries), and three
    connection pools serve three kinds of transaction: ``durable`` (the
    default; fsync at commit: anything that moves budget), ``light`` (no
    fsync: survives a crash of the node process, may lose its last records on
    power loss; for records that move no budget, e.g. replays) and ``read``.
    """

    def __init__(self, url: str):
        self.url = url
        self.engine = make_engine(url)
        Base.metadata.create_all(self.engine)
        engines = {"durable": self.engine, "light": self.engine, "read": self.engine}
        self._write_lock: threading.RLock | None = None
        if url.startswith("sqlite") and url.split("///", 1)[-1] not in ("", ":memory:"):
            engines["light"] = make_engine(url, synchronous="NORMAL")
            engines["read"] = make_engine(url, synchronous="NORMAL", immediate=False)
            self._write_lock = threading.RLock()
        self._engines = engines
        self._makers = {mode: sessionmaker(e, expire_on_commit=False) for mode, e in engines.items()}
        self._sessions = self._makers["durable"]
        with self.transaction() as session:
            if session.get(AuditHead, 1) is None:
                session.add(AuditHead(id=1, last_seq=0, last_hash=GENESIS_HASH))

    @contextmanager
    def transaction(self, mode: str = "durable") -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error.

        ``mode``: ``durable`` (default), ``light`` or ``read`` (see the class docstring).
        """
        lock = self._write_lock if mode != "read" else None
        if lock is not None:
            lock.acquire()
        session = self._makers[mode]()
        try:
            with session.begin():
                yield session
        finally:
            session.close()
            if lock is not None:
                lock.release()

    def sync_dataset_budgets(self, caps: dict[str, tuple[float, float]]) -> None:
        """Create or update each dataset's lifetime cap from the config (spending is kept)."""
        with self.transaction() as session:
            for name, (eps, delta) in caps.items():
                row = session.get(DatasetBudget, name, with_for_update=True)
                if row is None:
                    session.add(DatasetBudget(dataset=name, epsilon_cap=eps, delta_cap=delta))
                else:
                    row.epsilon_cap, row.delta_cap = eps, delta

    def dispose(self) -> None:
        for engine in {id(e): e for e in self._engines.values()}.values():
            engine.dispose()
