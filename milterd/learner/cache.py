"""A worker's cache of hot token counts, so that most lookups never reach SQL.

Bounded (least recently used entries go first) and short-lived (``ttl``
seconds): what another worker or MX host learns is seen within ``ttl``.
Tokens the store does not know are cached too (as zero counts): most of a
message's tokens are rare, and asking for them again every message would cost
more than asking for the frequent ones.  Not thread-safe by itself: the
caller holds a lock.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

from .classifier import Counts

ZERO = Counts()


class TokenCache:
    """Counts by token hash, with a time of fetch, bounded by size and age."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: OrderedDict[int, tuple[float, Counts]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def lookup(self, tokens: Sequence[int], now: float, fetch: Callable[[Sequence[int]], dict[int, Counts]]) -> dict[int, Counts]:
        """The counts of *tokens*: cached ones, and the rest from *fetch* in one call."""
        found: dict[int, Counts] = {}
        missing: list[int] = []
        for token in tokens:
            entry = self._entries.get(token) if self.size else None
            if entry is not None and now - entry[0] < self.ttl:
                self._entries.move_to_end(token)
                found[token] = entry[1]
            else:
                missing.append(token)
        self.hits += len(found)
        self.misses += len(missing)
        if missing:
            fetched = fetch(missing)
            for token in missing:
                counts = fetched.get(token, ZERO)
                found[token] = counts
                if self.size:
                    self._entries[token] = (now, counts)
                    self._entries.move_to_end(token)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return found

    def forget(self, tokens: Sequence[int]) -> None:
        """Drop *tokens* (this process just learned them)."""
        for token in tokens:
            self._entries.pop(token, None)
