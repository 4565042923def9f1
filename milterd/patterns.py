"""Regular expressions an administrator writes, run on text a client controls.

Custom rules (``[[rule]]`` body, header and uri regexes), rDNS ``generic_patterns``
and ``/regex/`` greylist whitelist entries are matched against message text, PTR
names and addresses the sender chooses.  Python's ``re`` backtracks without
bound: a rule as plain as ``\\s+x`` takes quadratic time on a body of spaces
(20,000 spaces 3.9 s; the default 1 MB of text, hours) and ``(a+)+$`` exponential
time, holding the GIL, so every connection of the worker stalls.

They are compiled with the ``regex`` package instead (mrab-regex, proposed as
``re``'s successor; in its default VERSION0 mode it has ``re``'s syntax and
Unicode semantics, so a pattern matches what it matched before).  It fails such
patterns fast where ``re`` backtracks, releases the GIL while it matches
(``concurrent=True``), and gives up after :data:`SEARCH_TIMEOUT`: a search that
times out counts as no match, with a warning naming the pattern.  RE2 (linear
time) was not chosen: its ``\\w``, ``\\d``, ``\\s`` and ``\\b`` are ASCII-only, and
it has no backreferences or lookarounds, so existing rules would match
differently on non-ASCII text or be refused.
"""

from __future__ import annotations

import logging

import regex

log = logging.getLogger(__name__)

#: Seconds one search may take before it counts as no match (a rule on 1 MB of text takes milliseconds).
SEARCH_TIMEOUT = 0.5

#: What compiling a bad pattern raises (``x{99999999999}``, thousands of nested groups included;
#: ValueError: an inline ``(?V1)``, which conflicts with the re-compatible VERSION0 we ask for).
PatternError = (regex.error, OverflowError, RecursionError, ValueError)

IGNORECASE = regex.IGNORECASE


class AdminPattern:
    """A compiled administrator's regular expression whose searches are bounded in time."""

    __slots__ = ("pattern", "_compiled")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        """Compile *pattern* (one of :data:`PatternError` when it is not a valid expression)."""
        self.pattern = pattern
        self._compiled = regex.compile(pattern, flags | regex.VERSION0)

    def search(self, text: str) -> regex.Match[str] | None:
        """The first match in *text*, or None (also when the search took longer than :data:`SEARCH_TIMEOUT`)."""
        try:
            return self._compiled.search(text, concurrent=True, timeout=SEARCH_TIMEOUT)
        except TimeoutError:
            log.warning("regular expression %r gave up after %gs on %d characters: counted as no match", self.pattern[:80], SEARCH_TIMEOUT, len(text))
            return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AdminPattern) and (self.pattern, self._compiled.flags) == (other.pattern, other._compiled.flags)

    def __hash__(self) -> int:
        return hash((self.pattern, self._compiled.flags))

    def __repr__(self) -> str:
        return f"AdminPattern({self.pattern!r})"
