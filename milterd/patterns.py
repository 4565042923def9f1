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
import time

import regex

log = logging.getLogger(__name__)

#: Seconds one search may take before it counts as no match (a rule on 1 MB of text takes milliseconds).
SEARCH_TIMEOUT = 0.5

#: What compiling a bad pattern raises (``x{99999999999}``, thousands of nested groups included;
#: ValueError: an inline ``(?V1)``, which conflicts with the re-compatible VERSION0 we ask for).
PatternError = (regex.error, OverflowError, RecursionError, ValueError)

IGNORECASE = regex.IGNORECASE


#: What a pattern may expand to, its counted repeats multiplied out (:func:`expanded_size`): the ``regex``
#: package compiles ``x{N}`` as N copies, about 280 bytes each, so ``x{100000000}`` or three nested
#: ``{1000}`` asked for 28 GB at start, and the kernel killed milterd with no word.  RE2 bounds its
#: programs likewise; a rule's longest counted repeat in practice is a few dozen.
MAX_EXPANSION = 100_000

#: A counted repeat: ``{n}``, ``{n,}``, ``{,m}``, ``{n,m}``, blanks allowed among the digits (verbose mode's).
_QUANTIFIER = regex.compile(r"\{([\d\s]*)(?:,([\d\s]*))?\}")


def expanded_size(pattern: str) -> int:
    """An upper bound of the atoms *pattern* compiles to: each atom 1, a group the sum of its atoms, a
    counted repeat ``{n}``/``{n,m}`` times its largest count.  Linear in the pattern's length.

    The pattern is read twice, as plain and as verbose (``(?x)``: blanks and ``#`` comments skipped), and
    the larger count is taken: where the mode is set (a flag, an inline group, a scoped ``(?-x:…)``) is
    not worked out, so that neither reading's comment or blank can hide a repeat the compiler sees
    (reviews found a "[" in a comment read as a set, and a blank before "{" read as the repeated atom)."""
    return max(_expanded_size(pattern, verbose=False), _expanded_size(pattern, verbose=True))


def _count(digits: str | None) -> int:
    text = "".join((digits or "").split())
    return int(text) if text else 0


def _expanded_size(pattern: str, verbose: bool) -> int:
    frames: list[list[int]] = [[0, 0]]  # per open group: [its atoms so far, the weight of its last atom]
    at, end = 0, len(pattern)
    while at < end:
        char = pattern[at]
        frame = frames[-1]
        if char == "\\":
            frame[0], frame[1], at = frame[0] + 1, 1, at + 2
            continue
        if char == "[":
            close = at + 1 + (pattern[at + 1:at + 2] == "^")
            close += pattern[close:close + 1] == "]"  # a "]" first in a set is itself
            while close < end and pattern[close] != "]":
                close += 2 if pattern[close] == "\\" else 1
            frame[0], frame[1], at = frame[0] + 1, 1, close + 1
            continue
        if pattern.startswith("(?#", at):
            at = pattern.find(")", at) + 1 or end
            continue
        if verbose and char == "#":
            at = pattern.find("\n", at) + 1 or end
            continue
        if verbose and char.isspace():
            at += 1
            continue
        if char == "(":
            frames.append([0, 0])
        elif char == ")" and len(frames) > 1:
            inner = max(frames.pop()[0], 1)
            frames[-1][0] += inner
            frames[-1][1] = inner
        elif char == "{" and (counted := _QUANTIFIER.match(pattern, at)) is not None and (counted[1] or counted[2] or "").strip():
            times = max(_count(counted[1]), _count(counted[2]))
            if times > MAX_EXPANSION + end:
                return times  # enough to refuse it: the rest is not looked at
            frame[0] += frame[1] * (times - 1)
            frame[1] *= times
            at = counted.end()
            if frame[0] > MAX_EXPANSION + end:
                return frame[0]  # enough to refuse it: the rest is not looked at
            continue
        elif char not in "|*+?":
            frame[0], frame[1] = frame[0] + 1, 1
        at += 1
    return sum(frame[0] for frame in frames)


#: Seconds the searches of one rule may take together on one message (:class:`SearchBudget`).
RULE_SEARCH_BUDGET = 1.0


class SearchBudget:
    """What is left of :data:`RULE_SEARCH_BUDGET` for one rule on one message: each search times out at
    0.5 s, but a rule that backtracks on 20 Subject fields (or a thousand links) took 0.5 s on each, 10 s
    and more of a worker for one message.  Once spent, the rule counts as no match.  Each rule has its
    own: shared by the rules of a message, a sender's text that made the first rules slow left the
    later ones (a phishing link's) unsearched."""

    def __init__(self, name: str, seconds: float = RULE_SEARCH_BUDGET) -> None:
        self.name = name
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left (0 once spent, and a warning says so)."""
        left = self.deadline - time.monotonic()
        if left <= 0:
            log.warning("rule %s: %gs of regular expression searches spent on one message: counted as no match", self.name, RULE_SEARCH_BUDGET)
        return max(left, 0.0)


class AdminPattern:
    """A compiled administrator's regular expression whose searches are bounded in time."""

    __slots__ = ("pattern", "_compiled")

    def __init__(self, pattern: str, flags: int = 0) -> None:
        """Compile *pattern* (one of :data:`PatternError` when it is not a valid expression)."""
        self.pattern = pattern
        if expanded_size(pattern) > MAX_EXPANSION + len(pattern):  # a long pattern without repeats is compiled as before
            raise ValueError(f"its counted repeats expand to more than {MAX_EXPANSION:,} items: too large to compile")
        self._compiled = regex.compile(pattern, flags | regex.VERSION0)

    def search(self, text: str, timeout: float = SEARCH_TIMEOUT) -> regex.Match[str] | None:
        """The first match in *text*, or None (also when the search took longer than *timeout*, at most
        :data:`SEARCH_TIMEOUT`)."""
        timeout = min(timeout, SEARCH_TIMEOUT)
        try:
            return self._compiled.search(text, concurrent=True, timeout=timeout)
        except TimeoutError:
            log.warning("regular expression %r gave up after %gs on %d characters: counted as no match", self.pattern[:80], timeout, len(text))
            return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, AdminPattern) and (self.pattern, self._compiled.flags) == (other.pattern, other._compiled.flags)

    def __hash__(self) -> int:
        return hash((self.pattern, self._compiled.flags))

    def __repr__(self) -> str:
        return f"AdminPattern({self.pattern!r})"
