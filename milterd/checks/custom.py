"""Custom rules from rules/*.toml: regular expressions over headers.

A rule is an array-of-tables entry ``[[rule]]``::

    [[rule]]
    name = "SUBJ_LOTTERY"                 # the symbol it emits
    header = "Subject"                    # the header it looks at (decoded)
    regex = '(?i)\\blottery\\b'           # Python syntax, searched, not matched
    score = 3.0
    description = "Subject talks about a lottery"

Rules are compiled once when the rules are loaded; a broken regular
expression is refused then, with the file and the rule's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.header import decode_header, make_header
from typing import TYPE_CHECKING, Any, ClassVar

from ..config import ConfigError
from ..model import Envelope, Hit, Session
from . import Check, Hits, Symbol

if TYPE_CHECKING:
    from ..services import Services

_NAME = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")


@dataclass(frozen=True)
class HeaderRule:
    """One compiled header rule."""

    name: str
    header: str
    regex: re.Pattern[str]
    score: float
    description: str


def compile_rules(services: "Services") -> list[HeaderRule]:
    """Every ``[[rule]]`` of the rules directory, compiled; ConfigError on the first bad one."""
    rules: list[HeaderRule] = []
    seen: set[str] = set()
    for source in services.ruleset.section("rule"):
        entries = source.value if isinstance(source.value, list) else [source.value]
        for position, entry in enumerate(entries):
            rules.append(_compile(source.file, position, entry, seen))
    return rules


def _compile(file: Any, position: int, entry: Any, seen: set[str]) -> HeaderRule:
    if not isinstance(entry, dict):
        raise ConfigError(file, f"rule[{position}]", "must be a table ([[rule]])")
    name = entry.get("name")
    where = f"rule {name}" if isinstance(name, str) else f"rule[{position}]"
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(file, where, "name must be an upper-case symbol name such as SUBJ_LOTTERY")
    if name in seen:
        raise ConfigError(file, where, "a rule of that name is already defined")
    unknown = set(entry) - {"name", "header", "regex", "score", "description"}
    if unknown:
        raise ConfigError(file, where, f"unknown key {sorted(unknown)[0]!r}")
    header, pattern = entry.get("header"), entry.get("regex")
    if not isinstance(header, str) or not header:
        raise ConfigError(file, where, "needs header = \"Name\"")
    if not isinstance(pattern, str):
        raise ConfigError(file, where, "needs regex = '…'")
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise ConfigError(file, f"{where}.regex", f"bad regular expression: {exc}") from None
    score = entry.get("score", 1.0)
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise ConfigError(file, f"{where}.score", "must be a number")
    seen.add(name)
    return HeaderRule(name, header.lower(), regex, float(score), str(entry.get("description", "")))


class HeaderRules(Check):
    """Administrator's header rules."""

    name: ClassVar[str] = "custom"
    description: ClassVar[str] = "Custom rules from rules/*.toml"
    rule_sections: ClassVar[tuple[str, ...]] = ("rule",)
    order: ClassVar[int] = 500

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        self.rules = compile_rules(services)

    def dynamic_symbols(self) -> tuple[Symbol, ...]:
        return tuple(Symbol(r.name, r.score, r.description) for r in self.rules)

    def on_eoh(self, session: Session, envelope: Envelope) -> Hits:
        values: dict[str, list[str]] = {}
        for name, raw in envelope.headers:
            values.setdefault(name.lower(), []).append(_decoded(raw))
        for rule in self.rules:
            for value in values.get(rule.header, ()):
                match = rule.regex.search(value)
                if match:
                    yield Hit(rule.name, detail=match.group(0)[:80])
                    break


def _decoded(raw: bytes) -> str:
    text = raw.decode("utf-8", "replace")
    try:
        return str(make_header(decode_header(text)))
    except Exception:  # noqa: BLE001 - broken encoded-words: match the raw text
        return text


CHECKS = (HeaderRules,)
