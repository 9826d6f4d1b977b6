"""What runs beside the data: the node's job runner.

One thread per node claims approved jobs one at a time (a claim is a
conditional update, so two node processes on one database never run a job
twice), runs each in a fresh sandbox (:mod:`.sandbox`), reads back at most a
bounded number of bytes, runs the disclosure checks (:mod:`.disclosure`) on
every output and on the log, and holds each in the owners' review queue.

Privacy guarantee: nothing a job produces leaves here. Outputs and logs go to
the review queue (released only by an owner other than the analyst, then
collected through the gate); the analyst sees only the job's state and a
generic error class, never an exception message (it could carry data). The
only other way out is the job's DP channel (:mod:`.dp_channel`): DP releases
through the gate, within the epsilon the owner approved with the code.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
from pydantic import BaseModel, ValidationError
from sqlalchemy import select, update

from ...node import governance
from ...node.auth import Principal
from ...node.catalog import DatasetEntry
from ...node.consent import consent_spec, consenting
from ...node.data import raw_scan
from ...node.store import utcnow
from ...errors import WorkbenchError
from . import disclosure, sandbox
from .dp_channel import DPChannel
from .store import CodeJobOutputRecord, CodeJobRecord, ensure_tables
from .wire import LOG_TYPES, OUTPUT_TYPES

log = logging.getLogger(__name__)

CHANNEL = "jobs"
WATCH_EVERY_S = 0.1  # how often the node looks at a running sandbox's memory and clock
IDLE_POLLS = 30  # the runner thread ends after this many idle seconds; any jobs request wakes it again
KNOWN_ERRORS = {"MemoryError", "BlockingIOError", "PermissionError", "FileNotFoundError", "OSError", "TimeoutError",
                "ConnectionRefusedError", "ConnectionError", "DeadKernelError", "CellTimeoutError", "KeyError",
                "ValueError", "TypeError", "NameError", "ImportError", "ModuleNotFoundError", "ZeroDivisionError",
                "RuntimeError", "AssertionError", "IndexError", "AttributeError", "SystemExit", "KeyboardInterrupt",
                "gaierror", "OverflowError", "RecursionError", "IsADirectoryError", "NotADirectoryError"}


class _Piece(BaseModel):
    name: str
    b64: str | None = None
    problem: str | None = None


class SandboxDocument(BaseModel):
    """What the in-sandbox runner writes (untrusted: validated, size-capped)."""

    error: str | None = None
    log: _Piece
    outputs: list[_Piece]


@dataclass
class RunResult:
    document: SandboxDocument | None
    error: str | None  # the analyst-visible reason, generic


def execute(argv: list[str], task: dict, limits: sandbox.Limits) -> RunResult:
    """Run the sandbox; kill it at the wall-time limit; read at most what the limits allow."""
    cap = (limits.output_bytes * (len(task["outputs"]) + 1)) * 4 // 3 + (1 << 20)
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
    chunks: list[bytes] = []
    overflow = threading.Event()

    def drain() -> None:
        total = 0
        while True:
            chunk = process.stdout.read(65536)
            if not chunk:
                return
            total += len(chunk)
            if total > cap:
                overflow.set()
                _kill(process)
                return
            chunks.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    threading.Thread(target=lambda: process.stderr.read(), daemon=True).start()  # bwrap's own messages: drop
    try:
        process.stdin.write(json.dumps(task).encode())
        process.stdin.close()
    except BrokenPipeError:
        pass
    stopped = _watch(process, limits)
    if stopped is not None:
        reader.join(5)
        return RunResult(None, stopped)
    reader.join(30)
    if overflow.is_set():
        return RunResult(None, "stopped: the job wrote more than its output limit")
    try:
        document = SandboxDocument.model_validate_json(b"".join(chunks))
    except ValidationError:
        return RunResult(None, f"stopped: the sandbox ended without a result (exit status {process.returncode}; "
                               "a CPU-time, memory or process limit, or the code ended its runner)")
    return RunResult(document, _generic(document.error))


def _watch(process: subprocess.Popen, limits: sandbox.Limits) -> str | None:
    """Wait for the sandbox to end. Stop it at the wall-time limit, or as soon as all its processes together
    hold more resident memory than the memory limit (``prlimit --as`` caps each process, but a job may start
    many). Returns why it was stopped, or None if it ended by itself."""
    deadline = time.monotonic() + limits.wall_seconds
    while True:
        try:
            process.wait(timeout=WATCH_EVERY_S)
            return None
        except subprocess.TimeoutExpired:
            pass
        if time.monotonic() > deadline:
            reason = f"stopped: the wall-time limit ({limits.wall_seconds:g} s) was reached"
        elif resident_bytes(process.pid) > limits.memory_bytes:
            reason = f"stopped: the job's processes held more than its memory limit ({limits.memory_bytes >> 20} MB)"
        else:
            continue
        _kill(process)
        process.wait()
        return reason


def resident_bytes(pid: int) -> int:
    """The resident memory of every process below ``pid`` (the sandbox's; bwrap itself is tiny), summed:
    pages shared between them count once per process, so the sum errs on the high side."""
    try:
        below = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for child in below:
        try:
            total += child.memory_info().rss
        except psutil.Error:  # it ended meanwhile
            continue
    return total


def _kill(process: subprocess.Popen) -> None:
    """Kill bwrap's process group; its PID namespace (every process of the job) dies with it."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _generic(error: str | None) -> str | None:
    """The analyst sees the exception's class only if it is a well-known one (a message could carry data)."""
    if error is None:
        return None
    status = error.removeprefix("the script exited with status ")
    if status != error and status.lstrip("-").isdigit():
        return f"the script exited with status {int(status)}"
    name = error.split(":", 1)[0].strip()
    return f"the code raised {name}" if name in KNOWN_ERRORS else "the code raised an error"


def declared_pieces(document: SandboxDocument, declared: list[str]) -> list[tuple[_Piece, bool]]:
    """``(piece, is_log)`` for what the (untrusted) document may hold: each declared output once (the first
    piece of that name), then the log if it has the log's name. Anything else in the stream is dropped."""
    pieces: dict[str, _Piece] = {}
    for piece in document.outputs:
        if piece.name in declared and piece.name not in pieces:
            pieces[piece.name] = piece
    chosen = [(piece, False) for piece in pieces.values()]
    return chosen + ([(document.log, True)] if document.log.name in LOG_TYPES else [])


class JobRunner:
    """Claims approved jobs and runs them, one at a time, each in its own sandbox."""

    def __init__(self, service):
        self.service = service
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        ensure_tables(service.store)
        self._recover()

    def _recover(self) -> None:
        """Jobs left ``running`` by a node that stopped mid-run fail (their sandbox died with it); submitting
        the same job again runs it again. (One runner per database: see docs/code_jobs.md.)"""
        with self.service.store.transaction("read") as session:
            stale = session.execute(select(CodeJobRecord.id).where(CodeJobRecord.status == "running")).scalars().all()
        for job_id in stale:
            self._finish(job_id, "failed", "the node stopped during the run; submit the job again")

    def wake(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True, name="workbench-jobs")
                self._thread.start()
        self._wake.set()

    def _loop(self) -> None:
        idle = 0
        while idle < IDLE_POLLS:
            try:
                job_id = self._claim()
            except Exception:  # noqa: BLE001 - e.g. the store is gone (node closed): stop quietly
                log.warning("the code-job runner stops", exc_info=True)
                return
            if job_id is None:
                idle += 1
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            idle = 0
            try:
                self.run(job_id)
            except Exception:  # noqa: BLE001 - one job's failure never stops the runner
                log.exception("code job %s failed in the runner", job_id)
                self._finish(job_id, "failed", "the node could not run the job; its owner can see the logs")

    def _claim(self) -> int | None:
        with self.service.store.transaction("read") as session:
            job_id = session.execute(select(CodeJobRecord.id).where(CodeJobRecord.status == "approved")
                                     .order_by(CodeJobRecord.id).limit(1)).scalar_one_or_none()
        if job_id is None:
            return None
        claimed = {}

        def take(session) -> dict:
            done = session.execute(update(CodeJobRecord).where(CodeJobRecord.id == job_id,
                                                               CodeJobRecord.status == "approved")
                                   .values(status="running", started_at=utcnow()))
            if done.rowcount != 1:
                raise _Taken()
            row = session.get(CodeJobRecord, job_id)
            claimed["id"] = job_id
            return {"job_id": job_id, "user": row.user_name, "code_hash": row.code_hash}

        try:
            with self.service.store.transaction("read") as session:
                dataset = session.get(CodeJobRecord, job_id).dataset
            self.service.gate.record("node", "job_start", dataset, take)
        except _Taken:
            return None
        return claimed.get("id")

    def run(self, job_id: int) -> None:
        with self.service.store.transaction("read") as session:
            job = session.get(CodeJobRecord, job_id)
        entry = self.service.catalog.get(job.dataset)
        if entry.version != job.dataset_version:
            self._finish(job_id, "failed", "the dataset changed since this job was approved; re-run it")
            return
        settings = entry.config.code_jobs
        limits = sandbox.Limits.of(settings)
        with tempfile.TemporaryDirectory(prefix="wb-job-") as scratch:
            data = data_for_sandbox(entry, Path(scratch))
            task = {"kind": job.kind, "code": job.code, "parameters": json.loads(job.parameters_json),
                    "outputs": json.loads(job.outputs_json), "max_output_bytes": limits.output_bytes,
                    "data_path": f"/data/dataset.{'csv' if data.suffix.lower() == '.csv' else 'parquet'}"}
            channel = DPChannel(self.service, job, entry, Path(scratch)) if job.dp_epsilon > 0 else None
            try:
                argv = sandbox.command(data, limits, Path(scratch), channel.path if channel else None)
                result = execute(argv, task, limits)
            except WorkbenchError as exc:
                result = RunResult(None, exc.message)
            finally:
                if channel is not None:
                    channel.close()
        self._hold(job, entry, result)

    def _hold(self, job: CodeJobRecord, entry: DatasetEntry, result: RunResult) -> None:
        """Check every piece the sandbox returned and hold it in the review queue."""
        pieces = [] if result.document is None else declared_pieces(result.document, json.loads(job.outputs_json))
        ctx = disclosure.context(entry) if pieces else None
        analyst = Principal(name=job.user_name, role="analyst")
        records = [self._hold_piece(job, entry, ctx, analyst, piece, is_log) for piece, is_log in pieces]
        held = any(r.review_id is not None for r in records)
        status = "failed" if result.error else ("held" if held else "failed")
        error = result.error or (None if held else "the job produced none of its outputs")

        def save(session) -> dict:
            for record in records:
                session.add(record)
            session.execute(update(CodeJobRecord).where(CodeJobRecord.id == job.id)
                            .values(status=status, error=error, finished_at=utcnow()))
            return {"outputs": {r.name: [c["check"] for c in json.loads(r.checks_json) if not c["ok"]]
                                for r in records}}

        self.service.gate.record("node", "job_held" if status == "held" else "job_failed", job.dataset, save,
                                 job_id=job.id, user=job.user_name, error=error)

    def _hold_piece(self, job, entry, ctx, analyst, piece: _Piece, is_log: bool) -> CodeJobOutputRecord:
        extension = piece.name.rsplit(".", 1)[-1].lower()
        media = LOG_TYPES.get(piece.name) if is_log else OUTPUT_TYPES.get(extension, "application/octet-stream")
        record = CodeJobOutputRecord(job_id=job.id, name=piece.name, media_type=media, is_log=is_log,
                                     problem=piece.problem, checks_json="[]")
        if piece.b64 is None:
            return record
        try:
            content = base64.b64decode(piece.b64, validate=True)
        except ValueError:
            record.problem = "not valid base64 (the sandbox's stream was tampered with)"
            return record
        checks = [c.model_dump() for c in disclosure.check(piece.name, content, ctx)]
        digest = hashlib.sha256(content).hexdigest()
        record.size, record.sha256, record.checks_json = len(content), digest, json.dumps(checks)
        if media.startswith("text/") or media.endswith("json") or media == "image/svg+xml":
            text = content.decode("utf-8", errors="replace")  # an executed notebook: its cells and text outputs
            record.preview = (disclosure.notebook_text(text) if piece.name.endswith(".ipynb") else text)[:4000]
        elif media in ("image/png", "image/jpeg"):  # the owner looks at it (shown as an <img>, never run)
            record.preview = f"data:{media};base64,{base64.b64encode(content).decode()}"
        flagged = [c["check"] for c in checks if not c["ok"]]
        summary = {"what_leaves": f"{'the log' if is_log else 'output'} {piece.name} of code job {job.id} "
                                  f"({len(content)} bytes)", "checks": checks, "flagged": flagged}
        spec = {"job_id": job.id, "output": piece.name, "sha256": digest}
        review = governance.submit_review(self.service.store, analyst, entry, CHANNEL, "code_job_output", spec,
                                          summary, {"name": piece.name, "media_type": media, "sha256": digest,
                                                    "content_b64": base64.b64encode(content).decode(),
                                                    "checks": checks})
        record.review_id = review.review_id
        return record

    def _finish(self, job_id: int, status: str, error: str) -> None:
        def change(session) -> dict:
            session.execute(update(CodeJobRecord).where(CodeJobRecord.id == job_id)
                            .values(status=status, error=error, finished_at=utcnow()))
            return {}

        with self.service.store.transaction("read") as session:
            dataset = session.get(CodeJobRecord, job_id).dataset
        self.service.gate.record("node", f"job_{status}", dataset, change, job_id=job_id, error=error)


class _Taken(Exception):
    """Another runner claimed the job first."""


_registry_lock = threading.Lock()


def runner_of(service) -> JobRunner:
    """The job runner attached to a node service (created on first use)."""
    with _registry_lock:
        runner = getattr(service, "_code_job_runner", None)
        if runner is None:
            runner = service._code_job_runner = JobRunner(service)
        return runner


def data_for_sandbox(entry: DatasetEntry, scratch: Path) -> Path:
    """The one file the sandbox may read: the owner's file itself, or, when the dataset has a consent rule or is a
    folder of Parquet files, one Parquet copy of its consenting rows written (streamed) into the job's scratch
    folder, readable by the sandbox's uid. Rows without consent never reach the analyst's code."""
    rule = consent_spec(entry.config)
    if rule is None and Path(entry.path).is_file():
        return Path(entry.path)
    target = scratch / "dataset.parquet"
    consenting(raw_scan(entry.path, entry.config.file_format), rule).sink_parquet(target)
    os.chmod(target, 0o644)
    return target
