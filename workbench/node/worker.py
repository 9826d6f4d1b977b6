"""A small pool of worker processes that run OpenDP (and other native code).

A worker that dies (a Rust panic aborts the process) or overruns its time
limit is killed and replaced; the caller gets :class:`ComputationFailed` and
the node keeps serving. Workers are separate Python processes fed JSON over pipes, so they share no
state with the node beyond the plain-data task they are handed.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import signal
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

from .. import LEAN_IMPORT_ENV
from ..errors import ComputationFailed, WorkbenchError, error_class_for
from . import tasks

log = logging.getLogger(__name__)


def _serve(conn_in: Connection, conn_out: Connection) -> None:
    """The worker's loop: JSON task in, JSON result out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    nice = int(os.environ.get("WORKBENCH_WORKER_NICE", "0") or 0)
    if nice > 0:
        os.nice(nice)  # a pool for free work yields the CPU to paid releases
    while True:
        try:
            message = json.loads(conn_in.recv_bytes())
        except (EOFError, OSError):
            return
        if message is None:
            return
        name, payload = message
        try:
            reply = ("ok", tasks.resolve(name)(payload))
        except WorkbenchError as exc:
            reply = ("error", {"code": exc.code, "message": exc.message})
        except Exception as exc:  # noqa: BLE001 - reported as a generic failure, without data
            reply = ("crash", f"{type(exc).__name__}: {traceback.format_exc(limit=3)}")
        conn_out.send_bytes(json.dumps(reply, default=str).encode())


class _Worker:
    """One worker: a fresh ``python -m workbench.node.worker`` talking over two pipes."""

    def __init__(self, nice: int = 0, streaming: bool = True):
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        # Polars' streaming engine for every collect in a worker (OpenDP's releases included): bounded memory
        # whatever the dataset's size (docs/scale.md). Not for synthesis fits: mbi's group-bys made the streaming
        # engine of Polars 1.36 panic (hot_groups/single_key.rs: unwrap on None); a fit reads few columns anyway.
        # POLARS_FORCE_ASYNC: files are read into buffers, not memory-mapped, so a release's resident memory is
        # what it allocates, not also every page of the file it scanned (at 100M rows: 0.49 vs 1.14 GiB a worker).
        env = dict(os.environ, POLARS_MAX_THREADS=os.environ.get("POLARS_MAX_THREADS", "2"),
                   POLARS_AUTO_NEW_STREAMING=os.environ.get("POLARS_AUTO_NEW_STREAMING", "1") if streaming else "0",
                   WORKBENCH_WORKER_NICE=str(nice), **{LEAN_IMPORT_ENV: "1"})  # no client side in a worker
        if streaming:
            env.setdefault("POLARS_FORCE_ASYNC", "1")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "workbench.node.worker", str(task_r), str(result_w)],
            pass_fds=(task_r, result_w), stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        os.close(task_r)
        os.close(result_w)
        self.tasks = Connection(task_w, readable=False)
        self.results = Connection(result_r, writable=False)

    def send(self, message) -> None:
        self.tasks.send_bytes(json.dumps(message).encode())

    def kill(self) -> None:
        try:  # the whole process group: a worker's own children (a columnar copy's part writer) go with it
            os.killpg(self.process.pid, signal.SIGKILL)
        except Exception:  # noqa: BLE001
            try:
                self.process.kill()
            except Exception:  # noqa: BLE001
                pass
        try:
            self.process.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        self.tasks.close()
        self.results.close()


class WorkerPool:
    """Run a registered task (:mod:`workbench.node.tasks`) on a payload in a worker process, with a time limit.

    Fair between users: a user runs at most ``per_user`` tasks at once, and a free worker goes to the waiting
    task whose user has the fewest running (then the oldest), so one user's loop of heavy calls leaves the
    other workers to everyone else. ``nice`` > 0 runs the workers at a lower CPU priority (free work).
    """

    def __init__(self, size: int = 2, timeout_s: float = 120.0, per_user: int | None = None, nice: int = 0,
                 streaming: bool = True):
        self._idle: list[_Worker] = []
        self._size = size
        self._timeout = timeout_s
        self._per_user = per_user if per_user is not None else max(1, size - 1)
        self._nice = nice
        self._streaming = streaming
        self._cond = threading.Condition()
        self._waiting: list[tuple[int, str]] = []  # (ticket, user) in arrival order
        self._running: dict[str, int] = {}
        self._tickets = itertools.count()
        self._started = 0
        self._closed = False
        self.crashes = 0

    def _next_in_line(self) -> int | None:
        """The ticket that may take the next worker: fewest running for its user, then oldest; None if every
        waiting user is at their limit."""
        best = None
        for ticket, user in self._waiting:
            running = self._running.get(user, 0)
            if running < self._per_user and (best is None or running < best[0]):
                best = (running, ticket)
        return None if best is None else best[1]

    def _checkout(self, user: str) -> _Worker:
        with self._cond:
            ticket = next(self._tickets)
            self._waiting.append((ticket, user))
            while not ((self._idle or self._started < self._size) and self._next_in_line() == ticket):
                self._cond.wait()
            self._waiting.remove((ticket, user))
            self._running[user] = self._running.get(user, 0) + 1
            worker = self._idle.pop() if self._idle else None
            if worker is None:
                self._started += 1
            self._cond.notify_all()
        if worker is None:
            try:
                worker = _Worker(self._nice, self._streaming)
            except BaseException:
                with self._cond:
                    self._started -= 1
                    self._finish(user)
                raise
        return worker

    def _finish(self, user: str) -> None:
        """Called with the condition held: ``user`` has one task fewer running."""
        left = self._running.get(user, 0) - 1
        if left > 0:
            self._running[user] = left
        else:
            self._running.pop(user, None)
        self._cond.notify_all()

    def _checkin(self, worker: _Worker, user: str) -> None:
        with self._cond:
            self._idle.append(worker)
            self._finish(user)

    def _replace(self, worker: _Worker, user: str) -> None:
        worker.kill()
        with self._cond:
            self._started -= 1
            self._finish(user)

    def run(self, task: str, payload: Any, timeout_s: float | None = None, user: str = "") -> Any:
        """The result of task ``task`` (a name in :data:`workbench.node.tasks.TASKS`) on ``payload``, queued
        fairly among ``user``'s and others' tasks."""
        tasks.target_of(task)  # only registered names reach a worker
        if self._closed:
            raise ComputationFailed("The node is shutting down.", code="computation_failed")
        worker = self._checkout(user)
        timeout = timeout_s or self._timeout
        try:
            worker.send((task, payload))
            if not worker.results.poll(timeout):
                self._replace(worker, user)
                raise ComputationFailed(f"The computation took longer than {timeout:g} s and was stopped.",
                                        code="computation_timeout")
            status, value = json.loads(worker.results.recv_bytes())
        except (EOFError, OSError, BrokenPipeError):
            self.crashes += 1
            self._replace(worker, user)
            raise ComputationFailed("The computation's worker process died; the node replaced it.",
                                    code="computation_failed") from None
        self._checkin(worker, user)
        if status == "ok":
            return value
        if status == "error":
            raise error_class_for(value["code"])(value["message"], code=value["code"])
        # The traceback may quote data: it goes to the owner's log only, never to the client.
        log.warning("worker error running %s: %s", task, value)
        raise ComputationFailed("The computation failed inside the worker.", code="computation_failed")

    def warm(self) -> None:
        """Start every worker now, so the first query does not pay for it."""
        with self._cond:
            missing = self._size - self._started
            self._started += missing
        workers = []
        try:
            for _ in range(missing):
                workers.append(_Worker(self._nice, self._streaming))
        finally:
            with self._cond:
                self._started -= missing - len(workers)
                self._idle.extend(workers)
                self._cond.notify_all()

    @property
    def idle(self) -> int:
        """Worker processes waiting for a task."""
        with self._cond:
            return len(self._idle)

    def close(self) -> None:
        self._closed = True
        with self._cond:
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.kill()


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
