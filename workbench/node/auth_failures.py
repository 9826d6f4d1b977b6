"""Failed authentications in the audit log, aggregated per source and time window.

The first failure of each kind (the refusal's stable ``details.reason``, e.g.
``expired``, ``malformed``) from a source in a window is recorded at once
(``auth_failed``, with its message); later ones in the same window are
counted in memory and written as one ``auth_failed_summary`` record (source,
kind, window, count, messages) when the window ends, at the latest when the
node stops. So an outsider flooding the node with bad tokens adds at most two
records per source and kind per window, and the evidence (how many, from
where, when, why) is kept. At most ``max_sources`` (source, kind) pairs are
tracked per window; further ones are counted together under ``"*"``.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from . import audit
from .store import Store

OTHER_SOURCES = "*"


@dataclass
class _Window:
    opened: float  # monotonic
    opened_at: str  # UTC, for the record
    failures: int = 1
    reasons: Counter = field(default_factory=Counter)


class AuthFailureLog:
    def __init__(self, store: Store, window_s: float = 60.0, max_sources: int = 1000):
        self._store = store
        self.window_s = window_s
        self.max_sources = max_sources
        self._windows: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._flusher: threading.Thread | None = None

    def start(self) -> None:
        """Write the summaries of ended windows in the background (every ``window_s``)."""
        self._flusher = threading.Thread(target=self._flush_loop, daemon=True, name="workbench-auth-failures")
        self._flusher.start()

    def record(self, source: str | None, kind: str, reason: str) -> None:
        """One failed authentication from ``source`` (the client address); ``kind`` from a fixed set."""
        now = time.monotonic()
        with self._lock:
            ended = self._take_ended(now)
            key = (source or "unknown", kind[:40])
            if key not in self._windows and len(self._windows) >= self.max_sources:
                key = (OTHER_SOURCES, OTHER_SOURCES)
            window = self._windows.get(key)
            first = window is None
            if first:
                window = self._windows[key] = _Window(now, datetime.now(timezone.utc).isoformat())
            else:
                window.failures += 1
            message = reason[:120] if reason[:120] in window.reasons or len(window.reasons) < 20 else "(other)"
            window.reasons[message] += 1
        self._write(ended, first=(key, reason) if first else None)

    def flush(self, everything: bool = False) -> int:
        """Write the summaries of ended windows (all windows with ``everything``); returns how many."""
        with self._lock:
            ended = self._take_ended(float("inf") if everything else time.monotonic())
        self._write(ended)
        return len(ended)

    def close(self) -> None:
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join(timeout=10)
        self.flush(everything=True)

    def _take_ended(self, now: float) -> list[tuple[tuple[str, str], _Window]]:
        ended = [(k, w) for k, w in self._windows.items() if now - w.opened >= self.window_s]
        for key, _ in ended:
            del self._windows[key]
        return ended

    def _write(self, ended: list[tuple[tuple[str, str], _Window]],
               first: tuple[tuple[str, str], str] | None = None) -> None:
        summaries = [(k, w) for k, w in ended if w.failures > 1]
        if not summaries and first is None:
            return
        closed_at = datetime.now(timezone.utc).isoformat()
        with self._store.transaction("light") as session:  # no fsync: a flood of bad tokens must not stall writers
            for key, window in summaries:
                audit.append(session, "anonymous", "auth_failed_summary", None, client=key[0], kind=key[1],
                             window_start=window.opened_at, window_end=closed_at, failures=window.failures,
                             messages=dict(window.reasons))
            if first is not None:
                audit.append(session, "anonymous", "auth_failed", None, client=first[0][0], kind=first[0][1],
                             reason=first[1],
                             note=f"further failures of this kind from this source in the next {self.window_s:g} s "
                                  "are counted in one auth_failed_summary record")

    def _flush_loop(self) -> None:
        while not self._stop.wait(self.window_s):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 - retried at the next tick or at close
                pass
