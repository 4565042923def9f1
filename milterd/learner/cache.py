"""A worker's cache of hot token counts, so that most lookups never reach SQL.

Bounded and short-lived: the whole cache is dropped every ``ttl`` seconds (what
another worker or MX host learns is used within ``ttl``), and when it holds
``size`` tokens (it may then exceed ``size`` by one message's tokens, at most
:data:`~milterd.learner.tokenizer.MAX_TOKENS`).  Dropping it whole, instead of
keeping a time and a recency list per token, keeps an entry at about 100 bytes
(a per-token LRU measured 281 bytes: 56 MB per worker at 200,000 tokens); a
dropped cache costs one batched query per message until it is warm again.
Tokens the store does not know are cached too (as the shared zero counts): most
of a message's tokens are rare, and asking for them every message would cost
more than asking for the frequent ones.  Not thread-safe by itself: the caller
holds a lock around :meth:`TokenCache.cached` and :meth:`TokenCache.store`, and
fetches in between without it; what was fetched before the cache was dropped, or a
token forgotten, meanwhile is answered but not cached (:meth:`TokenCache.mark`): a count
read before a ttl boundary was served for another whole ttl.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .classifier import Counts

ZERO = Counts()


class TokenCache:
    """Counts by token hash, bounded by size and age."""

    def __init__(self, size: int, ttl: float) -> None:
        self.size = size
        self.ttl = ttl
        self._entries: dict[int, Counts] = {}
        self._born = 0.0
        self._generation = 0  # counts the drops of the whole cache
        self._forgets = 0  # counts the calls of forget
        self._forgotten: dict[int, int] = {}  # token -> the forget that dropped it last, since the last drop
        self.hits = 0
        self.misses = 0

    def lookup(self, tokens: Sequence[int], now: float, fetch: Callable[[Sequence[int]], dict[int, Counts]]) -> dict[int, Counts]:
        """The counts of *tokens*: cached ones, and the rest from *fetch* in one call."""
        found, missing = self.cached(tokens, now)
        if missing:
            found.update(self.store(missing, fetch(missing), self.mark()))
        return found

    def mark(self) -> tuple[int, int]:
        """Where the cache stands (taken with :meth:`cached`, given to :meth:`store` after the fetch)."""
        return self._generation, self._forgets

    def cached(self, tokens: Sequence[int], now: float) -> tuple[dict[int, Counts], list[int]]:
        """The cached counts of *tokens*, and the tokens not cached (to fetch, then :meth:`store`)."""
        if now - self._born >= self.ttl or len(self._entries) >= self.size:
            self._entries = {}
            self._born = now
            self._generation += 1
            self._forgotten = {}
        entries = self._entries
        found: dict[int, Counts] = {}
        missing: list[int] = []
        for token in tokens:
            counts = entries.get(token)
            if counts is None:
                missing.append(token)
            else:
                found[token] = counts
        self.hits += len(found)
        self.misses += len(missing)
        return found, missing

    def store(self, missing: Sequence[int], fetched: dict[int, Counts], mark: tuple[int, int]) -> dict[int, Counts]:
        """Cache what was fetched for *missing* (unknown tokens as zero counts) since *mark* (:meth:`mark` when
        :meth:`cached` answered): none when the cache was dropped since, nor a token forgotten since; their counts."""
        generation, forgets = mark
        entries = self._entries if generation == self._generation and self.size else None
        forgotten = self._forgotten
        found: dict[int, Counts] = {}
        for token in missing:
            counts = fetched.get(token, ZERO)
            found[token] = counts
            if entries is not None and forgotten.get(token, 0) <= forgets:
                entries[token] = counts
        return found

    def forget(self, tokens: Sequence[int]) -> None:
        """Drop *tokens* (this process just learned them)."""
        self._forgets += 1
        for token in tokens:
            self._forgotten[token] = self._forgets
            self._entries.pop(token, None)
        if len(self._forgotten) >= max(self.size, 1):  # bounded as the entries are: dropped whole
            self._entries, self._forgotten = {}, {}
            self._generation += 1
