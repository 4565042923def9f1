"""A worker's memory of recent scan results, so that a retried message is not scanned twice.

A message refused with a 4xx after it was scanned (greylisting at end of data,
another check's tempfail) comes back minutes later with the same content; its
scan would give the same answer.  :class:`ResultCache` keeps results by a
digest of everything the scan depends on (:func:`content_key`), for at most
``ttl`` seconds and at most ``size`` entries (least recently used go first).

It is per worker process: a retry that Postfix hands to another worker is
scanned again.  Only successful scans are stored; an error is never reused.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from typing import Callable, Generic, Iterable, TypeVar

T = TypeVar("T")


def content_key(fields: Iterable[str], chunks: Iterable[bytes]) -> bytes:
    """A SHA-256 digest of the envelope *fields* (each length-prefixed) and the message *chunks*.

    Length prefixes keep ``("ab", "c")`` and ``("a", "bc")`` apart.
    """
    digest = hashlib.sha256(b"milterd-scan-cache-1\0")
    for text in fields:
        data = text.encode("utf-8", "surrogateescape")
        digest.update(len(data).to_bytes(8, "big") + data)
    digest.update(b"\0message\0")
    for chunk in chunks:
        digest.update(chunk)
    return digest.digest()


class ResultCache(Generic[T]):
    """A bounded, thread-safe LRU map of digests to results, each expiring ``ttl`` seconds after it was stored."""

    def __init__(self, size: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self.ttl = ttl
        self.clock = clock
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, tuple[float, T]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        """False when ``size`` or ``ttl`` is 0: nothing is kept."""
        return self.size > 0 and self.ttl > 0

    def get(self, key: bytes) -> tuple[T, float] | None:
        """The result stored under *key* and its age in seconds, or None (absent or expired)."""
        if not self.enabled:
            return None
        now = self.clock()
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or now - entry[0] >= self.ttl:
                if entry is not None:
                    del self._entries[key]
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry[1], now - entry[0]

    def put(self, key: bytes, value: T) -> None:
        """Store *value* under *key*, dropping the least recently used entries beyond ``size``."""
        if not self.enabled:
            return
        with self._lock:
            self._entries[key] = (self.clock(), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
