"""Group commit: many small writes share one transaction.

Writes are queued; one writer thread runs every queued write in a single
transaction and then answers each caller. A caller is answered only after its
write is committed, so nothing it was told about can be lost by a crash of
the node process. A batch holding a ``durable`` write (one that moves budget)
commits with an fsync, for all of them at once; otherwise it is a ``light``
transaction. If the shared transaction fails (a write raised, e.g. a refused
reservation), each write is retried alone in its own transaction, so one bad
write cannot fail its neighbours; writes must therefore touch nothing but
their session.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any, Callable

from sqlalchemy.orm import Session

from ..errors import WorkbenchError
from .store import Store

log = logging.getLogger(__name__)

Write = Callable[[Session], Any]
Finish = Callable[[Session, list], list]
MAX_BATCH = 256
WAIT_S = 120.0  # how long a caller waits for its write to commit


class GroupCommitter:
    """One writer thread that commits queued writes in batches."""

    def __init__(self, store: Store, finish: Finish | None = None):
        """``finish(session, results)``, if given, runs once per batch after its writes (e.g. one read for all)."""
        self._store = store
        self._finish = finish
        self._queue: "queue.Queue[tuple[Write, Future, bool] | None]" = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="group-commit", daemon=True)
        self._closed = False
        self._thread.start()

    def submit(self, write: Write, durable: bool = False) -> "Future[Any]":
        """Queue ``write(session)``; the future resolves to its return value once committed."""
        future: Future = Future()
        if self._closed:
            future.set_exception(RuntimeError("the node is shutting down"))
        else:
            self._queue.put((write, future, durable))
        return future

    def run(self, write: Write, durable: bool = False, timeout_s: float = WAIT_S) -> Any:
        """Queue ``write`` and wait for its commit (for callers on a plain thread)."""
        return self.submit(write, durable).result(timeout_s)

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._commit(batch)
                    return
                batch.append(nxt)
            self._commit(batch)

    def _commit(self, batch: list[tuple[Write, Future, bool]]) -> None:
        mode = "durable" if any(durable for _, _, durable in batch) else "light"
        try:
            with self._store.transaction(mode) as session:
                results = [write(session) for write, _, _ in batch]
                if self._finish is not None:
                    results = self._finish(session, results)
        except Exception as exc:  # noqa: BLE001 - retried one by one, so only the bad write fails
            if len(batch) > 1:
                for one in batch:
                    self._commit([one])
            else:
                if not isinstance(exc, WorkbenchError):  # a refusal (budget, grant) is an answer, not a fault
                    log.warning("group-committed write failed: %r", exc)
                batch[0][1].set_exception(exc)
            return
        for (_, future, _), result in zip(batch, results):
            future.set_result(result)
