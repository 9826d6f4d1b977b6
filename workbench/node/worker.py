"""A small pool of worker processes that run OpenDP (and other native code).

A worker that dies (a Rust panic aborts the process) or overruns its time
limit is killed and replaced; the caller gets :class:`ComputationFailed` and
the node keeps serving. Workers are separate Python processes fed JSON over pipes, so they share no
state with the node beyond the plain-data task they are handed.
"""

from __future__ import annotations

import logging
import json
import os
import queue
import subprocess
import sys
import signal
import threading
import traceback
from multiprocessing.connection import Connection
from typing import Any

from ..errors import ComputationFailed, WorkbenchError, error_class_for
from . import tasks

log = logging.getLogger(__name__)


def _serve(conn_in: Connection, conn_out: Connection) -> None:
    """The worker's loop: JSON task in, JSON result out, until the pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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

    def __init__(self):
        task_r, task_w = os.pipe()
        result_r, result_w = os.pipe()
        env = dict(os.environ, POLARS_MAX_THREADS=os.environ.get("POLARS_MAX_THREADS", "2"))
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
    """Run a registered task (:mod:`workbench.node.tasks`) on a payload in a worker process, with a time limit."""

    def __init__(self, size: int = 2, timeout_s: float = 120.0):
        self._idle: "queue.LifoQueue[_Worker]" = queue.LifoQueue()
        self._size = size
        self._timeout = timeout_s
        self._lock = threading.Lock()
        self._started = 0
        self._closed = False
        self.crashes = 0

    def _checkout(self) -> _Worker:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._started < self._size:
                self._started += 1
                return _Worker()
        return self._idle.get()

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._started -= 1

    def run(self, task: str, payload: Any, timeout_s: float | None = None) -> Any:
        """The result of task ``task`` (a name in :data:`workbench.node.tasks.TASKS`) on ``payload``."""
        tasks.target_of(task)  # only registered names reach a worker
        if self._closed:
            raise ComputationFailed("The node is shutting down.", code="computation_failed")
        worker = self._checkout()
        timeout = timeout_s or self._timeout
        try:
            worker.send((task, payload))
            if not worker.results.poll(timeout):
                self._replace(worker)
                raise ComputationFailed(f"The computation took longer than {timeout:g} s and was stopped.",
                                        code="computation_timeout")
            status, value = json.loads(worker.results.recv_bytes())
        except (EOFError, OSError, BrokenPipeError):
            self.crashes += 1
            self._replace(worker)
            raise ComputationFailed("The computation's worker process died; the node replaced it.",
                                    code="computation_failed") from None
        self._idle.put(worker)
        if status == "ok":
            return value
        if status == "error":
            raise error_class_for(value["code"])(value["message"], code=value["code"])
        # The traceback may quote data: it goes to the owner's log only, never to the client.
        log.warning("worker error running %s: %s", task, value)
        raise ComputationFailed("The computation failed inside the worker.", code="computation_failed")

    def warm(self) -> None:
        """Start every worker now, so the first query does not pay for it."""
        workers = [self._checkout() for _ in range(self._size)]
        for w in workers:
            self._idle.put(w)

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                worker = self._idle.get_nowait()
            except queue.Empty:
                break
            worker.kill()


if __name__ == "__main__":
    _serve(Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False))
