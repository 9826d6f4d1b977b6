"""An in-memory index of answers already released, so a replay needs no database read.

A released answer never changes (the dataset version is part of its key), so
remembering it is always safe; a miss simply falls back to the database. Only
answers whose release committed are remembered. Bounded by entry count and by
the total size of the stored results.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class StoredAnswer:
    release_id: int
    user: str
    dataset: str
    dataset_version: str
    spec_hash: str
    request_id: str | None
    result_json: str
    epsilon: float  # what the original release cost
    delta: float
    grant_id: int | None
    released_at: datetime


class AnswerIndex:
    """LRU of :class:`StoredAnswer` by question and by request id."""

    def __init__(self, max_entries: int = 50_000, max_bytes: int = 64 * 2**20):
        self._by_key: "OrderedDict[tuple, StoredAnswer]" = OrderedDict()
        self._lock = threading.Lock()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._bytes = 0

    def remember(self, answer: StoredAnswer) -> None:
        keys = [("q", answer.user, answer.dataset, answer.dataset_version, answer.spec_hash)]
        if answer.request_id is not None:
            keys.append(("r", answer.user, answer.request_id))
        with self._lock:
            for key in keys:
                old = self._by_key.pop(key, None)
                if old is not None:
                    self._bytes -= len(old.result_json)
                self._by_key[key] = answer
                self._bytes += len(answer.result_json)
            while self._by_key and (len(self._by_key) > self._max_entries or self._bytes > self._max_bytes):
                _, dropped = self._by_key.popitem(last=False)
                self._bytes -= len(dropped.result_json)

    def by_question(self, user: str, dataset: str, version: str, qhash: str) -> StoredAnswer | None:
        with self._lock:
            return self._touch(("q", user, dataset, version, qhash))

    def by_request(self, user: str, request_id: str) -> StoredAnswer | None:
        with self._lock:
            return self._touch(("r", user, request_id))

    def _touch(self, key: tuple) -> StoredAnswer | None:
        hit = self._by_key.get(key)
        if hit is not None:
            self._by_key.move_to_end(key)
        return hit
