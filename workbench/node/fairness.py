"""Each user's share of the node: how much heavy work one user may have in flight at once.

Two kinds of heavy work are counted per user: ``compute`` (a task for the
worker pool: a preview's calibration, a release, an HE/SMPC contribution) and
``session`` (a contribution that waits on other parties through an
aggregator). A user over their share gets :class:`~workbench.errors.RateLimited`
(HTTP 429 with ``Retry-After``) *before* anything is charged or queued; other
users are unaffected. Which waiting task gets the next free worker is decided
by :class:`workbench.node.worker.WorkerPool` (fewest running tasks first).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

from ..errors import RateLimited

KINDS = ("compute", "session")
#: Suggested wait (seconds) sent with a 429, per kind.
RETRY_AFTER_S = {"compute": 1.0, "session": 5.0}


class UserLimiter:
    """Counts each user's heavy work in flight; refuses work beyond ``limits[kind]`` per user."""

    def __init__(self, compute: int = 4, session: int = 2):
        self.limits = {"compute": compute, "session": session}
        self._in_flight: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()
        self.refused = 0

    @contextmanager
    def admit(self, user: str, kind: str = "compute") -> Iterator[None]:
        """Hold one of ``user``'s ``kind`` slots for the block, or raise :class:`RateLimited` now."""
        key = (user, kind)
        with self._lock:
            if self._in_flight[key] >= self.limits[kind]:
                self.refused += 1
                raise RateLimited(
                    f"You already have {self._in_flight[key]} {kind} requests running or queued on this node "
                    f"(your share is {self.limits[kind]}); nothing was charged. Retry after "
                    f"{RETRY_AFTER_S[kind]:g} s.", code="rate_limited",
                    details={"retry_after_s": RETRY_AFTER_S[kind], "kind": kind, "limit": self.limits[kind]})
            self._in_flight[key] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[key] -= 1
                if self._in_flight[key] <= 0:
                    del self._in_flight[key]

    def in_flight(self, user: str, kind: str = "compute") -> int:
        with self._lock:
            return self._in_flight.get((user, kind), 0)
