"""Background synthesis jobs on the node: queue, progress, cancellation.

A fit can take minutes, so the release runs in a thread while the client
polls ``GET /v1/synth/jobs/{id}``. Each job gets its own one-process
:class:`~workbench.node.worker.WorkerPool`: a time-out, a crash or a
cancellation kills only that process, and the DP query workers are never
blocked by a long fit. At most ``[node] synth_workers`` fits run at once; the
others wait, uncharged, in the queue. The queue is fair by user: a user has
at most ``per_user_synth_jobs`` jobs queued or running (more get 429 with
``Retry-After``, nothing charged), and a free slot goes to the waiting job
whose user runs the fewest fits, then whose user started one least recently,
then the oldest: one user's backlog never makes another user wait for more
than one of its fits per slot.

The charge is made by the release gate before the fit starts (inside
``work``); cancelling a running job kills its worker and the charge stands
(the gate records the failure). Cancelling a queued job costs nothing.

Running and queued jobs live in memory. A finished job's status, error and
release id are also written to the node's store (``synth_jobs``), so its
starter can still fetch it after a node restart; the synthetic rows are read
back from the gate's stored release, not copied. A job that was running when
the node stopped is lost (its charge stands, as for a cancellation); asking
the same question again is answered from the gate's store for free.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from workbench.errors import ComputationFailed, NotFound, WorkbenchError
from workbench.protocol import ErrorBody
from workbench.channels.synth.wire import SynthJob, SynthRelease

if TYPE_CHECKING:
    from workbench.node.fairness import UserLimiter

log = logging.getLogger(__name__)

KEEP_JOBS = 200
KEEP_SECONDS = 3600.0
KEEP_STORED_DAYS = 30.0  # finished jobs in the store (the release itself stays in the gate's store)


@dataclass
class Job:
    job_id: str
    user: str
    dataset: str
    kind: str
    request_id: str | None
    progress_path: Path
    status: str = "queued"
    phase: str = "queued"
    progress: float = 0.0
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    error: ErrorBody | None = None
    release: SynthRelease | None = None
    review: dict | None = None
    cancel_requested: bool = False

    def view(self) -> SynthJob:
        phase, progress = self.phase, self.progress
        if self.status == "running":
            try:
                state = json.loads(self.progress_path.read_text())
                phase, progress = state.get("phase", phase), float(state.get("progress", progress))
            except (OSError, ValueError):
                pass
        end = self.finished or time.monotonic()
        elapsed = end - self.started if self.started else 0.0
        return SynthJob(job_id=self.job_id, dataset=self.dataset, kind=self.kind, status=self.status, phase=phase,
                        progress=progress, elapsed_s=round(elapsed, 2), error=self.error, release=self.release,
                        review=self.review)

    def worker_pid(self) -> int | None:
        try:
            return int(json.loads(self.progress_path.read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return None


class FairSlots:
    """``slots`` fits at once; a free slot goes round-robin by user (fewest running, least recently served)."""

    def __init__(self, slots: int, lock: threading.Lock):
        self.slots = slots
        self._changed = threading.Condition(lock)
        self._waiting: list[Job] = []
        self._running: dict[str, int] = {}
        self._served = 0
        self._last_served: dict[str, int] = {}

    def acquire(self, job: Job) -> bool:
        """Wait until ``job`` may run (True), or until it is cancelled while waiting (False)."""
        with self._changed:
            self._waiting.append(job)
            try:
                while not job.cancel_requested:
                    if sum(self._running.values()) < self.slots and self._next() is job:
                        self._running[job.user] = self._running.get(job.user, 0) + 1
                        self._served += 1
                        self._last_served[job.user] = self._served
                        return True
                    self._changed.wait(timeout=1.0)  # woken by release and cancel; the timeout is a safety net
                return False
            finally:
                self._waiting.remove(job)

    def release(self, job: Job) -> None:
        with self._changed:
            self._running[job.user] -= 1
            if not self._running[job.user]:
                del self._running[job.user]
            self._changed.notify_all()

    def wake(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _next(self) -> Job | None:
        live = [j for j in self._waiting if not j.cancel_requested]  # in arrival order: min keeps the oldest
        return min(live, key=lambda j: (self._running.get(j.user, 0), self._last_served.get(j.user, 0)),
                   default=None)


class SynthJobs:
    """The node's synthesis jobs (in memory; finished ones also in ``store``, when given)."""

    def __init__(self, state_dir: Path, slots: int, store=None, fair: UserLimiter | None = None):
        self.store = store
        self.fair = fair  # each user's share of synthesis jobs (queued or running)
        self.folder = state_dir / "synth" / "jobs"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.jax_cache = str(state_dir / "synth" / "jax-cache")
        self._jobs: "OrderedDict[str, Job]" = OrderedDict()
        self._lock = threading.Lock()
        self._slots = FairSlots(slots, self._lock)

    def submit(self, user: str, dataset: str, kind: str, request_id: str | None,
               work: Callable[[Job], None], queue: bool = True) -> Job:
        """Start ``work(job)`` in a thread (or reuse the job of a retried ``request_id``).

        A job that queues (``queue``) takes one of the user's synthesis slots first: :class:`RateLimited` when
        they already have ``per_user_synth_jobs`` queued or running (nothing created, nothing charged)."""
        with self._lock:
            self._prune()
            if request_id is not None:
                for job in self._jobs.values():
                    if job.user == user and job.request_id == request_id:
                        return job
            give_back = self.fair.take(user, "synthesis") if queue and self.fair is not None else None
            job_id = secrets.token_hex(12)
            job = Job(job_id, user, dataset, kind, request_id, self.folder / f"{job_id}.json")
            self._jobs[job_id] = job
        thread = threading.Thread(target=self._run, args=(job, work, queue, give_back), daemon=True,
                                  name=f"workbench-synth-{job_id[:6]}")
        thread.start()
        return job

    def _run(self, job: Job, work: Callable[[Job], None], queue: bool,
             give_back: Callable[[], None] | None) -> None:
        holding = queue and self._slots.acquire(job)
        try:
            if job.cancel_requested:
                job.status, job.phase = "cancelled", "cancelled before it started (nothing was charged)"
                job.error = ErrorBody(code="synthesis_cancelled", message="Cancelled before it started; "
                                      "nothing was charged.")
                return
            job.status, job.phase, job.started = "running", "starting", time.monotonic()
            work(job)  # sets job.release (or job.review)
            job.status, job.phase, job.progress = "done", "done", 1.0
        except WorkbenchError as exc:
            if job.cancel_requested:
                job.status, job.phase = "cancelled", "cancelled"
                job.error = ErrorBody(code="synthesis_cancelled",
                                      message="Cancelled while running; the privacy charge for it stands.")
            else:
                job.status, job.phase = "failed", "failed"
                job.error = ErrorBody(code=exc.code, message=exc.message, details=exc.details or None)
        except Exception:  # noqa: BLE001 - details go to the owner's log only
            log.exception("synthesis job %s failed", job.job_id)
            job.status, job.phase = "failed", "failed"
            job.error = ErrorBody(code="internal_error", message="The synthesis failed; the owner can see why.")
        finally:
            job.finished = time.monotonic()
            self._persist(job)
            if holding:
                self._slots.release(job)
            if give_back is not None:
                give_back()
            try:
                job.progress_path.unlink(missing_ok=True)
            except OSError:
                pass

    def get(self, job_id: str, user: str) -> Job:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            job = self._restore(job_id)
        if job is None or job.user != user:
            raise NotFound("No such synthesis job (only the user who started it sees it).", code="not_found")
        return job

    def _persist(self, job: Job) -> None:
        """Write a finished job to the store (status, error, review, the release without its rows)."""
        if self.store is None or job.status not in ("done", "failed", "cancelled"):
            return
        from datetime import timedelta

        from sqlalchemy import delete

        from workbench.node.store import SynthJobRecord, utcnow

        try:
            view = job.view()
            release_id = view.release.release_id if view.release is not None else None
            body = view.model_dump(mode="json")
            if body.get("release") is not None:
                body["release"]["table"] = None
            with self.store.transaction("light") as session:
                session.merge(SynthJobRecord(job_id=job.job_id, user_name=job.user, dataset=job.dataset,
                                             kind=job.kind, request_id=job.request_id, status=job.status,
                                             release_id=release_id, view_json=json.dumps(body)))
                old = utcnow() - timedelta(days=KEEP_STORED_DAYS)
                session.execute(delete(SynthJobRecord).where(SynthJobRecord.finished_at < old))
        except Exception:  # noqa: BLE001 - the job itself is done; only its after-restart copy is missing
            log.exception("could not store synthesis job %s", job.job_id)

    def _restore(self, job_id: str) -> Job | None:
        """A finished job from the store (after a node restart), its rows read from the gate's release."""
        if self.store is None:
            return None
        from workbench.node.store import Release, SynthJobRecord

        with self.store.transaction("read") as session:
            record = session.get(SynthJobRecord, job_id)
            if record is None:
                return None
            body = json.loads(record.view_json)
            if body.get("release") is not None:
                stored = session.get(Release, record.release_id) if record.release_id is not None else None
                if stored is None:
                    return None
                body["release"]["table"] = json.loads(stored.result_json)["table"]
        view = SynthJob.model_validate(body)
        now = time.monotonic()
        job = Job(view.job_id, record.user_name, view.dataset, view.kind, record.request_id,
                  self.folder / f"{job_id}.json", status=view.status, phase=view.phase, progress=view.progress,
                  started=now - view.elapsed_s, finished=now, error=view.error, release=view.release,
                  review=view.review)
        with self._lock:
            self._prune()
            self._jobs.setdefault(job_id, job)
            return self._jobs[job_id]

    def cancel(self, job_id: str, user: str, wait_s: float = 15.0) -> Job:
        """Stop a job: a queued one never starts (free); a running one's worker is killed (charge stands)."""
        job = self.get(job_id, user)
        if job.status in ("done", "failed", "cancelled"):
            return job
        job.cancel_requested = True
        self._slots.wake()
        deadline = time.monotonic() + wait_s
        while job.status == "running" and time.monotonic() < deadline:
            pid = job.worker_pid()
            if pid is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.1)
        while job.status in ("queued", "running") and time.monotonic() < deadline:
            time.sleep(0.05)
        return job

    def _prune(self) -> None:
        now = time.monotonic()
        for job_id in list(self._jobs):
            job = self._jobs[job_id]
            old = job.finished is not None and now - job.finished > KEEP_SECONDS
            if old or (len(self._jobs) > KEEP_JOBS and job.finished is not None):
                del self._jobs[job_id]


def jobs_of(service) -> SynthJobs:
    """The job registry attached to a node service (created on first use)."""
    return service.state_of("synth", lambda s: SynthJobs(s.config.node.state_dir,
                                                        getattr(s.config.node, "synth_workers", 1), store=s.store,
                                                        fair=s.fair))


def cancelled_error() -> ComputationFailed:
    return ComputationFailed("The synthesis was cancelled; the charge for it stands.", code="synthesis_cancelled")
