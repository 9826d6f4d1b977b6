"""Each user's share of the node: how much heavy work one user may have in flight at once.

Three kinds of heavy work are counted per user: ``compute`` (a task for the
worker pool: a preview's calibration, a release, an HE/SMPC contribution),
``session`` (a contribution that waits on other parties through an
aggregator) and ``synthesis`` (a synthesis job queued or running, see
:mod:`workbench.channels.synth.jobs`). A user over their share gets :class:`~workbench.errors.RateLimited`
(HTTP 429 with ``Retry-After``) *before* anything is charged or queued; other
users are unaffected. Requests that arrive on the event loop (DP releases)
first queue per user without holding a thread (:meth:`UserLimiter.queued`,
up to ``queue`` of them; 429 beyond). Which waiting task gets the next free
worker is decided by :class:`workbench.node.worker.WorkerPool` (fewest
running tasks first).
"""

from __future__ import annotations

import asyncio
import threading
from collections import defaultdict
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import AsyncIterator, Callable, Iterator

from ..errors import RateLimited

#: Suggested wait (seconds) sent with a 429, per kind.
RETRY_AFTER_S = {"compute": 1.0, "session": 5.0, "synthesis": 10.0}


@dataclass
class _Line:
    """One user's queue on the event loop."""

    slots: asyncio.Semaphore
    waiting: int = 0
    holding: int = 0


class UserLimiter:
    """Counts each user's heavy work in flight; refuses work beyond ``limits[kind]`` per user."""

    def __init__(self, compute: int = 8, session: int = 2, queue: int = 64, synthesis: int = 4):
        self.limits = {"compute": compute, "session": session, "synthesis": synthesis}
        self.queue_limit = queue
        self._in_flight: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()
        self._queues: dict[str, _Line] = {}  # touched on the event loop only
        self.refused = 0

    @asynccontextmanager
    async def queued(self, user: str) -> AsyncIterator[None]:
        """On the event loop: wait (holding no thread) until ``user`` has fewer than ``limits["compute"]``
        requests running here, then hold a compute slot; :class:`RateLimited` if ``queue`` already wait."""
        line = self._queues.get(user)
        if line is None:
            line = self._queues[user] = _Line(asyncio.Semaphore(self.limits["compute"]))
        if line.slots.locked() and line.waiting >= self.queue_limit:
            self.refused += 1
            raise _refusal("compute", line.waiting, self.queue_limit, "waiting")
        line.waiting += 1
        try:
            await line.slots.acquire()
        finally:
            line.waiting -= 1
        line.holding += 1
        try:
            with self.admit(user, "compute", counted_by_queue=True):
                yield
        finally:
            line.holding -= 1
            line.slots.release()
            if line.waiting == 0 and line.holding == 0:
                self._queues.pop(user, None)

    @contextmanager
    def admit(self, user: str, kind: str = "compute", counted_by_queue: bool = False) -> Iterator[None]:
        """Hold one of ``user``'s ``kind`` slots for the block, or raise :class:`RateLimited` now.

        ``counted_by_queue``: the slot was already granted by :meth:`queued` (counted, never refused)."""
        give_back = self.take(user, kind, counted_by_queue)
        try:
            yield
        finally:
            give_back()

    def take(self, user: str, kind: str, counted_by_queue: bool = False) -> Callable[[], None]:
        """Take one of ``user``'s ``kind`` slots now (or raise :class:`RateLimited`), for work that outlives
        the request (a synthesis job); returns the function that gives the slot back (call it once)."""
        key = (user, kind)
        with self._lock:
            if not counted_by_queue and self._in_flight[key] >= self.limits[kind]:
                self.refused += 1
                raise _refusal(kind, self._in_flight[key], self.limits[kind], "running or queued")
            self._in_flight[key] += 1

        def give_back() -> None:
            with self._lock:
                self._in_flight[key] -= 1
                if self._in_flight[key] <= 0:
                    del self._in_flight[key]
        return give_back

    def in_flight(self, user: str, kind: str = "compute") -> int:
        """How many ``kind`` requests of ``user`` hold a slot now."""
        with self._lock:
            return self._in_flight.get((user, kind), 0)


def _refusal(kind: str, count: int, limit: int, state: str) -> RateLimited:
    return RateLimited(
        f"You already have {count} {kind} requests {state} on this node (your share is {limit}); nothing was "
        f"charged. Retry after {RETRY_AFTER_S[kind]:g} s.", code="rate_limited",
        details={"retry_after_s": RETRY_AFTER_S[kind], "kind": kind, "limit": limit})
