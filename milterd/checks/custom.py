"""Custom rules from rules/*.toml: header, body, URI and meta rules.

A rule is an array-of-tables entry ``[[rule]]`` with a ``name`` (the symbol
it emits), a ``score``, a ``description`` and exactly one of::

    header = "Subject"                  # with regex = '…': searched in every such header (decoded)
    body = '(?i)\\bviagra\\b'           # searched in the decoded text of the text parts
    uri = '(?i)^https?://[^/]*\\.top(:\\d+)?/'  # searched in each link, as written and normalised
    meta = "SUBJ_LOTTERY and not DKIM_VALID"   # and, or, not, parentheses

Regular expressions are Python's, searched (not matched).  A header is
searched unfolded with its RFC 2047 encoded-words decoded; header and body
rules see the text without the invisible characters (soft hyphen, zero-width
space, tag characters, …) that split a word where no reader sees it split, and
in NFKC form: a letter and its combining accent as the one accented letter
(``cafe`` and U+0301 is ``café``), compatibility characters as the plain ones
they show (full-width, mathematical and ligature letters: ``ｖｉａｇｒａ`` is
``viagra``), so patterns are written in that form.  A ``uri`` rule is searched
in each link as written and as :func:`milterd.checks.uribl.link_form` writes it
(scheme and host lower-cased, the host percent-decoded without its trailing dot,
``\\`` as ``/``, ``//host`` as ``http://host``, a ``/`` after the host), as
SpamAssassin's uri rules see both.  Rules are compiled
once when the rules are loaded: a broken regular expression, a malformed meta
expression, a meta naming a symbol no check or rule emits, a meta naming a
symbol that is only known after the verdict (DKIM_SIGNED, DKIM_SIGN_ERROR,
ARC_SEALED, ARC_SEAL_ERROR; GREYLIST, GREYLIST_PASSED, GREYLIST_EXEMPT and GREYLIST_ERROR
with ``[greylist] mode = "score"``, where the policy adds them), or metas
that refer to each other in a circle are refused then, with the file and
the rule's name.

Body rules see at most ``max_text`` characters of text, invisible ones not counted (a ``[custom]`` table
of a rule file; default "1M"); the message is read up to four times that
(base64 and markup).
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AbstractSet, Any, ClassVar, Iterable

import regex

from ..config import ConfigError
from ..content.headertext import decoded, is_field_name
from ..content.mimetext import UNREAD_REASONS
from ..message.model import Envelope, Hit, Session
from ..message.policy import AFTER_VERDICT_SYMBOLS, PIPELINE_SYMBOLS, SCORE_GREYLIST_SYMBOLS, UNSCORED
from ..options import finite
from ..patterns import AdminPattern, PatternError, SearchBudget
from ..rulelang import MetaSyntaxError, Node, evaluate, names, parse
from ..text import MARK_RUN as _MARK_RUN
from ..text import MAX_MARKS as MAX_MARKS
from ..text import first_marks as _first_marks
from ..text import without_invisible
from ..units import parse_size
from . import Check, Hits, Symbol
from .uribl import link_form

if TYPE_CHECKING:
    from ..services import Services

log = logging.getLogger("milterd")

#: Body rules searched part of the message's text only.
TEXT_CUT = "CUSTOM_TEXT_CUT"
_NAME = re.compile(r"[A-Z][A-Z0-9_]{1,63}\Z")  # \Z: "$" also matched before a final newline
KINDS = ("header", "body", "uri", "meta")
DEFAULT_MAX_TEXT = 1024 * 1024
#: The largest ``[custom] max_text``: the message text is read from a window of four times it, in memory
#: (``"10G"`` had every message larger than spool_memory fail to allocate it, its body rules silently unread).
MAX_MAX_TEXT = 16 * 1024 * 1024


@dataclass(frozen=True)
class Rule:
    """One compiled rule: ``kind`` is header, body, uri or meta."""

    name: str
    kind: str
    score: float
    description: str
    file: Path
    header: str = ""
    regex: AdminPattern | None = None
    meta: Node | None = None
    expression: str = ""


#: The former name of :class:`Rule` (header rules only).
HeaderRule = Rule


def compile_rules(services: "Services") -> list[Rule]:
    """Every ``[[rule]]`` of the rules directory, compiled; ConfigError on the first bad one."""
    rules: list[Rule] = []
    seen: dict[str, Path] = {}  # each rule's name -> the file that defined it
    for file, position, entry in services.ruleset.tables("rule"):
        rules.append(_compile(file, position, entry, seen, services.symbols))
    return rules


def _compile(file: Any, position: int, entry: Any, seen: dict[str, Path], builtin: dict[str, Symbol]) -> Rule:
    if not isinstance(entry, dict):
        raise ConfigError(file, f"rule[{position}]", "must be a table ([[rule]])")
    name = entry.get("name")
    where = f"rule {name}" if isinstance(name, str) else f"rule[{position}]"
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(file, where, "name must be an upper-case symbol name such as SUBJ_LOTTERY")
    if name in seen:
        # Two files of one layer (or one file) define it: neither replaces the other, say where the first is.
        raise ConfigError(file, where, f"a rule of that name is already defined in {seen[name]}")
    if name in builtin or name in PIPELINE_SYMBOLS:
        raise ConfigError(file, where, "a built-in check already emits this symbol (re-weight it in [symbols] instead)")
    unknown = set(entry) - {"name", "regex", "score", "description", *KINDS}
    if unknown:
        raise ConfigError(file, where, f"unknown key {sorted(unknown)[0]!r}")
    kinds = [k for k in KINDS if k in entry]
    if len(kinds) != 1:
        raise ConfigError(file, where, "needs exactly one of header = \"Name\" (with regex), body = '…', uri = '…', meta = \"…\"")
    kind = kinds[0]
    if "regex" in entry and kind != "header":
        raise ConfigError(file, f"{where}.regex", f"only header rules take regex; a {kind} rule's expression is its {kind} = value")
    score = entry.get("score", 1.0)
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise ConfigError(file, f"{where}.score", "must be a number")
    try:
        score = finite(score)
    except ValueError as exc:
        raise ConfigError(file, f"{where}.score", str(exc)) from None
    description = entry.get("description", "")
    if not isinstance(description, str):
        raise ConfigError(file, f"{where}.description", "must be a string")
    seen[name] = Path(file)
    common: dict[str, Any] = {"name": name, "kind": kind, "score": float(score), "file": Path(file)}
    if kind == "meta":
        expression = entry["meta"]
        if not isinstance(expression, str):
            raise ConfigError(file, f"{where}.meta", "must be a string such as \"A and not B\"")
        try:
            node = parse(expression)
        except MetaSyntaxError as exc:
            raise ConfigError(file, f"{where}.meta", f"bad expression: {exc}") from None
        return Rule(description=description or f"meta: {expression}", meta=node, expression=expression, **common)
    if kind == "header":
        header, pattern, key = entry["header"], entry.get("regex"), "regex"
        if not isinstance(header, str) or not header:
            raise ConfigError(file, f"{where}.header", "needs header = \"Name\"")
        if not is_field_name(header):
            # "Subject:" or "Subject " would name no field of any message: the rule would never hit, unsaid.
            raise ConfigError(file, f"{where}.header", f"{header!r} is not a header field name (printable ASCII, no colon or space), such as \"Subject\"")
        if not isinstance(pattern, str):
            raise ConfigError(file, where, "needs regex = '…'")
        if not pattern:  # as an empty body = '': it would hit every message that has the field
            raise ConfigError(file, f"{where}.regex", "must be a regular expression (a string), not empty; '^' if the field being there is what counts")
    else:
        header, pattern, key = "", entry[kind], kind
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(file, f"{where}.{kind}", "must be a regular expression (a string)")
    try:
        regex = AdminPattern(pattern)  # bounded in time on hostile text (milterd/patterns.py)
    except PatternError as exc:  # also x{99999999999}, thousands of nested groups, (?V1)
        raise ConfigError(file, f"{where}.{key}", f"bad regular expression: {exc}") from None
    return Rule(description=description, header=header.lower(), regex=regex, expression=pattern, **common)


def meta_order(rules: Iterable[Rule], known: Iterable[str], late: Iterable[str] = ()) -> list[Rule]:
    """The meta rules in an order where each comes after the metas it names.

    ConfigError (file, rule, reason) for a symbol that is in neither *known*
    nor the rules, for one in *late* (only known after the verdict, when the
    metas have been evaluated), and for metas that refer to each other in a circle.
    """
    metas = {r.name: r for r in rules if r.kind == "meta"}
    known = set(known) | {r.name for r in rules}
    late = set(late)
    for rule in metas.values():
        assert rule.meta is not None
        too_late = sorted(names(rule.meta) & late)
        if too_late:
            raise ConfigError(rule.file, f"rule {rule.name}.meta",
                              f"{too_late[0]} is only known after the verdict: a meta cannot use it (it would never count as hit)")
        missing = sorted(names(rule.meta) - known)
        if missing:
            raise ConfigError(rule.file, f"rule {rule.name}.meta", f"unknown symbol {missing[0]} (no check or rule emits it)")
    ordered: list[Rule] = []
    state: dict[str, int] = {}  # 1: being visited, 2: done
    depth: dict[str, int] = {}

    def visit(rule: Rule, path: list[str]) -> None:
        if state.get(rule.name) == 2:
            return
        if state.get(rule.name) == 1:
            circle = " -> ".join(path[path.index(rule.name):] + [rule.name])
            raise ConfigError(rule.file, f"rule {rule.name}.meta", f"metas refer to each other in a circle: {circle}")
        if len(path) >= MAX_META_CHAIN:
            # Visited recursively: a chain of a thousand metas was a RecursionError traceback at start.
            raise ConfigError(rule.file, f"rule {rule.name}.meta", f"more than {MAX_META_CHAIN} metas each refer to the next: {path[0]} -> … -> {rule.name}")
        state[rule.name] = 1
        assert rule.meta is not None
        named = sorted(name for name in names(rule.meta) if name in metas)
        for name in named:
            visit(metas[name], path + [rule.name])
        # The longest chain down from this meta, whatever the order the metas were visited in (a chain
        # written leaf first never made a long path above).
        depth[rule.name] = 1 + max((depth[name] for name in named), default=0)
        if depth[rule.name] > MAX_META_CHAIN:
            raise ConfigError(rule.file, f"rule {rule.name}.meta", f"more than {MAX_META_CHAIN} metas each refer to the next, down from {rule.name}")
        state[rule.name] = 2
        ordered.append(rule)

    for rule in metas.values():
        visit(rule, [])
    return ordered


def _first_match(rule: Rule, texts: Iterable[str], deadline: float) -> tuple[str, regex.Match[str]] | None:
    """The first of *texts* (a header's fields, a message's links) *rule* matches, and the match; its
    searches of them share one :class:`~milterd.patterns.SearchBudget`, past which it matches none, and
    end by the message's *deadline* (``time.monotonic()``)."""
    assert rule.regex is not None
    budget = SearchBudget(rule.name)
    for text in texts:
        left = min(budget.left(), deadline - time.monotonic())
        if left <= 0:
            return None
        match = rule.regex.search(text, left)
        if match:
            return text, match
    return None


#: The most seconds the custom rules of one message (header, body and link rules together) may spend searching:
#: each search gives up after 0.5 s and each rule after 1 s, but 40 slow body rules took 20 s of a worker for one
#: message (600 would have outlasted Postfix's milter_content_timeout).  Past it the rules not yet searched count
#: as no match, and the log says which.
MESSAGE_SEARCH_BUDGET = 5.0


#: How many metas may refer one to the next (META_A uses META_B, which uses META_C…).
MAX_META_CHAIN = 64


def max_text(services: "Services") -> int:
    """``[custom] max_text`` of the rule files: how much decoded text body rules see."""
    value: int = DEFAULT_MAX_TEXT
    for source in services.ruleset.section("custom"):
        if not isinstance(source.value, dict):
            raise ConfigError(source.file, "custom", "must be a table ([custom])")
        unknown = set(source.value) - {"max_text"}
        if unknown:
            raise ConfigError(source.file, f"custom.{sorted(unknown)[0]}", "unknown key (misspelt?)")
        if "max_text" in source.value:
            try:
                value = parse_size(source.value["max_text"])
            except ValueError as exc:
                raise ConfigError(source.file, "custom.max_text", str(exc)) from None
            except OverflowError:  # inf, or more digits than a float holds
                raise ConfigError(source.file, "custom.max_text", "too large") from None
            if value <= 0:
                raise ConfigError(source.file, "custom.max_text", "must be positive")
            if value > MAX_MAX_TEXT:
                raise ConfigError(source.file, "custom.max_text", f"at most 16M ({value} bytes): the text is read from a window of four times it in memory")
    return value


class CustomRules(Check):
    """Administrator's rules: header, body, URI and meta."""

    name: ClassVar[str] = "custom"
    description: ClassVar[str] = "Custom rules from rules/*.toml"
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol(TEXT_CUT, 0.0, "The message's text is longer than [custom] max_text (invisible characters not counted), or a part of it could not be "
                              "read: body rules searched only what was read (padding may hide a line from them)"),
    )
    rule_sections: ClassVar[tuple[str, ...]] = ("rule", "custom")
    order: ClassVar[int] = 500

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        self.rules = compile_rules(services)
        self.max_text = max_text(services)
        self.header_rules = [r for r in self.rules if r.kind == "header"]
        self.body_rules = [r for r in self.rules if r.kind == "body"]
        self.uri_rules = [r for r in self.rules if r.kind == "uri"]
        self.metas: list[Rule] = [r for r in self.rules if r.kind == "meta"]

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        """Only with a ``[[rule]]`` or a ``[custom]`` table in the rule files: with neither
        it has nothing to run, and would otherwise hook end of headers, end of message
        and the symbols stage of every message (#15's core row)."""
        return super().enabled(services) and bool(services.ruleset.section("rule") or services.ruleset.section("custom"))

    def dynamic_symbols(self) -> tuple[Symbol, ...]:
        return tuple(Symbol(r.name, r.score, r.description) for r in self.rules)

    def loaded(self) -> None:
        # Every check's dynamic symbols are known only now (checks after this one included).
        greylist = self.services.config.greylist
        # Added after the metas are evaluated: a meta naming one would never see it hit. In triplet
        # mode the greylist check emits GREYLIST* itself, at RCPT and DATA, where the metas see them, but
        # GREYLIST_DEFERRED (the recipients deferred, said at end of message once they are all known).
        late = AFTER_VERDICT_SYMBOLS + (UNSCORED,) + (SCORE_GREYLIST_SYMBOLS if greylist.enabled and greylist.mode == "score" else ("GREYLIST_DEFERRED",))
        self.metas = meta_order(self.rules, self.services.symbols, late)
        # A symbol of a check that is off is known (not refused) but never hits: "not SPF_PASS"
        # with SPF off is true of every message.  Said once a load, with the file and the rule.
        emitted = {s.name for check in self.services.checks for s in (*type(check).symbols, *check.dynamic_symbols())}
        for rule in self.metas:
            assert rule.meta is not None
            idle = sorted(names(rule.meta) - emitted)
            if idle:
                log.warning("%s: rule %s.meta: no enabled check emits %s (its check is off): it counts as never hit",
                            rule.file, rule.name, ", ".join(idle))

    def on_eoh(self, session: Session, envelope: Envelope) -> Hits:
        if not self.header_rules:
            return
        values: dict[str, list[str]] = {}
        for name, raw in envelope.headers:
            values.setdefault(name.lower(), []).append(_decoded(raw))
        for number, rule in enumerate(self.header_rules):
            left = self._left(envelope)
            if left <= 0:
                _unsearched(envelope, self.header_rules[number:])
                return
            started = time.monotonic()
            found = _first_match(rule, values.get(rule.header, ()), started + left)
            self._spend(envelope, time.monotonic() - started)
            if found:
                yield Hit(rule.name, detail=found[1].group(0)[:80])

    def eom_waits(self, envelope: Envelope) -> bool:
        """Never: it only reads the message's text (the pipeline runs it in its own thread)."""
        return False

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        if not (self.body_rules or self.uri_rules):
            return []
        # What the text extraction raises is the pipeline's (CHECK_ERROR, or 451 with on_check_error = tempfail):
        # a warning alone had the message judged without its body and URI rules, unsaid in its row.
        found = envelope.text(self.max_text)
        hits: list[Hit] = []
        lines = _lines(found.text) if self.body_rules else ""
        text = _visible(lines, self.max_text) if self.body_rules else ""
        # Cut where it was read (the budget, a bound of the reader) or as searched: NFKC writes some characters as
        # up to 18 (U+FDFA), and what the rules search is cut to max_text too: text read shorter than that reached it.
        if self.body_rules and (found.truncated or len(text) >= self.max_text > len(lines)):
            why = UNREAD_REASONS.get(found.unread, "") if found.unread != "links" else ""
            hits.append(Hit(TEXT_CUT, detail=why or f"text past {self.max_text} characters not searched"))
        links = _link_forms(found.uris) if self.uri_rules else {}
        rules = [*self.body_rules, *self.uri_rules]
        for number, rule in enumerate(rules):
            left = self._left(envelope)
            if left <= 0:
                _unsearched(envelope, rules[number:])
                break
            started = time.monotonic()
            if rule.kind == "body":
                assert rule.regex is not None
                match = rule.regex.search(text, left)
                if match:
                    hits.append(Hit(rule.name, detail=match.group(0)[:80]))
            elif linked := _first_match(rule, links, started + left):
                hits.append(Hit(rule.name, detail=links[linked[0]][:120]))
            self._spend(envelope, time.monotonic() - started)
        return hits

    def _left(self, envelope: Envelope) -> float:
        """Seconds of :data:`MESSAGE_SEARCH_BUDGET` the message's rules have not spent searching (only their own
        searches count: the body's arrival and other checks between end of headers and end of message do not)."""
        spent: float = envelope.check_state(self.name).get("spent", 0.0)
        return MESSAGE_SEARCH_BUDGET - spent

    def _spend(self, envelope: Envelope, seconds: float) -> None:
        state = envelope.check_state(self.name)
        state["spent"] = state.get("spent", 0.0) + seconds

    def symbols_on_symbols(self) -> frozenset[str]:
        return frozenset(rule.name for rule in self.metas)

    def metas_naming(self, symbols: AbstractSet[str]) -> frozenset[str]:
        """The meta rules whose expression names one of *symbols*, itself or through another meta rule:
        those whose value may change when *symbols* do (``rules whatif``: spamd's, when the tiers skip it)."""
        reached, found = set(symbols), set()
        for rule in self.metas:  # in evaluation order: a meta's own metas come before it
            assert rule.meta is not None
            if names(rule.meta) & reached:
                reached.add(rule.name)
                found.add(rule.name)
        return frozenset(found)

    def on_symbols(self, session: Session, envelope: Envelope, symbols: frozenset[str]) -> Hits:
        hit = set(symbols)
        for rule in self.metas:
            assert rule.meta is not None
            if evaluate(rule.meta, hit):
                hit.add(rule.name)
                yield Hit(rule.name, detail=" ".join(sorted(names(rule.meta) & hit))[:120])


def _link_forms(uris: Iterable[str]) -> dict[str, str]:
    """What ``uri`` rules search, each to the link it is of: each link, and after it its
    :func:`~milterd.checks.uribl.link_form` where that differs (``HTTPS://Evil.TOP.`` and ``https://evil.top/``)."""
    forms: dict[str, str] = {}
    for uri in uris:
        forms.setdefault(uri, uri)
        forms.setdefault(link_form(uri), uri)
    return forms


def _unsearched(envelope: Envelope, rules: list[Rule]) -> None:
    log.warning("%s: custom rules: %gs of searches spent on the message; %d rule(s) not searched, counted as no match: %s",
                envelope.queue_id or "NOQUEUE", MESSAGE_SEARCH_BUDGET, len(rules), ", ".join(rule.name for rule in rules[:10]))


#: The former name of :class:`CustomRules`.
HeaderRules = CustomRules


#: Text is normalised this many characters at a time when only its first *limit* characters are kept
#: (up to 18 characters each).
_CHUNK = 65536
#: An ASCII character: nothing before it changes with it under NFKC, so text may be normalised in pieces cut there.
_ASCII = re.compile(r"[\x00-\x7f]")


def _lines(text: str) -> str:
    """*text* with each line ended by "\\n" alone: a plain text part keeps the CRLF of SMTP (and may end a line with
    a CR alone), where ``$`` in a ``(?m)`` pattern matches only before a "\\n"."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _visible(text: str, limit: int | None = None) -> str:
    """*text* as a reader sees it, what custom rules search: without its invisible (default-ignorable)
    characters, in NFKC form (``cafe`` and a combining acute accent is ``café``; compatibility characters
    as the plain ones they show), each run of combining marks cut to :data:`MAX_MARKS` (at most *limit*
    characters of it)."""
    if text.isascii():
        return text
    text = without_invisible(text)
    if unicodedata.is_normalized("NFKC", text):
        return text
    text = _MARK_RUN.sub(_first_marks, text)
    if limit is None or len(text) <= _CHUNK:
        normal = unicodedata.normalize("NFKC", text)
        return normal if limit is None else normal[:limit]
    pieces: list[str] = []
    size = start = 0
    while start < len(text) and size < limit:  # one U+FDFA is 18 characters: no more than *limit* made
        end = _piece_end(text, start + _CHUNK)
        pieces.append(unicodedata.normalize("NFKC", text[start:end]))
        size += len(pieces[-1])
        start = end
    return "".join(pieces)[:limit]


def _piece_end(text: str, end: int) -> int:
    """Where to end a piece of *text* normalised alone, near *end*: before an ASCII character in the next
    :data:`_CHUNK` characters, else at *end* (a mark there may be left uncomposed: 64K characters of no ASCII)."""
    found = _ASCII.search(text, end, end + _CHUNK)
    return found.start() if found else min(end, len(text))


def _decoded(raw: bytes) -> str:
    """A header field's value as a reader sees it: unfolded, encoded-words decoded
    (:func:`milterd.content.headertext.decoded`), invisible characters dropped, and the blanks
    around it too, as SpamAssassin's header rules see it (``Subject:<TAB>WIN`` and a fold after the
    colon had dodged a rule anchored with ``^``)."""
    return _visible(decoded(raw.decode("utf-8", "replace"))).strip()


CHECKS = (CustomRules,)
