"""DNS block lists and allow lists, looked up at connect.

Zones are declared in rule files, one ``[[dnsbl]]`` (or ``[[dnswl]]``) table
each::

    [[dnsbl]]
    name = "SPAMHAUS"                 # symbols DNSBL_SPAMHAUS, DNSBL_SPAMHAUS_<CODE>
    zone = "zen.spamhaus.org"
    score = 3.0                       # an answer no code below names
    action = "score"                  # or "reject": 554 5.7.1 at MAIL FROM
    ipv4 = true                       # look IPv4 clients up (reversed octets)
    ipv6 = true                       # look IPv6 clients up (nibbles)
    refused = ["127.255.255.*"]       # answers that mean "query refused", not "listed"
    codes = [
      { name = "SBL", answers = ["127.0.0.2", "127.0.0.9"], score = 4.0, action = "reject" },
      { name = "PBL", answers = ["127.0.0.10-127.0.0.11"], score = 1.5 },
    ]

An answer pattern is an address, a range ``A-B``, a network ``A/N`` or a
pattern with ``*`` octets (``127.0.*.3``).  Answers outside 127.0.0.0/8 are
ignored (a hijacked or wildcarded zone).  ``[[dnswl]]`` takes the same keys
but no action; its symbols start with ``DNSWL_`` (greylisting skips clients
they name) and score negative by default.

Every zone of a client is queried concurrently as soon as it connects; the
answers are collected at MAIL FROM, once SMTP AUTH is known, so an
authenticated client is exempt (``[checks.dnsbl] skip_authenticated``).
With ``[milter] delay_reject = false`` they are collected at connect.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, cast

from ..dns import Answer, dnsbl_name
from ..message.model import Action, Envelope, Hit, Session
from ..message.reply import Reply
from ..options import CheckSwitches, ConfigError
from . import Hits, Symbol
from .configured import ConfiguredCheck

if TYPE_CHECKING:
    from ..services import Services


class DnsblChecks(CheckSwitches):
    """DNS block and allow lists at connect; the zones are [[dnsbl]] and [[dnswl]] in rules/."""


_NAME = re.compile(r"^[A-Z][A-Z0-9_]{0,47}$")
_ZONE = re.compile(r"^(?=.{1,200}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+[A-Za-z0-9_-]{1,63}\.?$")
_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_STATE = "dnsbl"


@dataclass(frozen=True)
class Code:
    """Return codes of a zone that mean one list."""

    symbol: str
    answers: tuple[str, ...]
    score: float
    reject: bool
    description: str


@dataclass(frozen=True)
class Zone:
    """One DNS list."""

    kind: str  # "dnsbl" or "dnswl"
    symbol: str
    zone: str
    score: float
    reject: bool
    ipv4: bool
    ipv6: bool
    codes: tuple[Code, ...]
    refused: tuple[str, ...]
    description: str


def answer_matches(pattern: str, answer: str) -> bool:
    """Whether DNS-list *answer* (an IPv4 address) matches *pattern* (address, A-B, A/N or 127.0.*.2)."""
    try:
        address = ipaddress.IPv4Address(answer)
    except ValueError:
        return False
    if "-" in pattern:
        low, high = (ipaddress.IPv4Address(p.strip()) for p in pattern.split("-", 1))
        return low <= address <= high
    if "/" in pattern:
        return address in ipaddress.IPv4Network(pattern, strict=False)
    if "*" in pattern:
        return fnmatch.fnmatchcase(answer, pattern)
    return address == ipaddress.IPv4Address(pattern)


def _valid_pattern(pattern: Any) -> bool:
    if not isinstance(pattern, str) or not pattern:
        return False
    try:
        if "-" in pattern:
            low, high = (ipaddress.IPv4Address(p.strip()) for p in pattern.split("-", 1))
            return low <= high
        if "/" in pattern:
            ipaddress.IPv4Network(pattern, strict=False)
            return True
        if "*" in pattern:
            parts = pattern.split(".")
            return len(parts) == 4 and all(p == "*" or (p.isdigit() and int(p) < 256) for p in parts)
        ipaddress.IPv4Address(pattern)
        return True
    except ValueError:
        return False


def parse_zones(services: "Services") -> list[Zone]:
    """Every ``[[dnsbl]]`` and ``[[dnswl]]`` of rules/, validated; ConfigError on the first bad one."""
    zones: list[Zone] = []
    seen: set[str] = set()
    for kind in ("dnsbl", "dnswl"):
        for source in services.ruleset.section(kind):
            entries = source.value if isinstance(source.value, list) else [source.value]
            for position, entry in enumerate(entries):
                zone = parse_zone(kind, source.file, position, entry)
                symbols = {zone.symbol, *(c.symbol for c in zone.codes)}
                clash = symbols & seen
                if clash:
                    raise ConfigError(source.file, f"{kind} {zone.symbol}", f"symbol {sorted(clash)[0]} is already defined by another zone")
                seen |= symbols
                zones.append(zone)
    return zones


def parse_zone(kind: str, file: Any, position: int, entry: Any) -> Zone:
    """One zone table; ConfigError naming the file, the zone and the key otherwise."""
    prefix = "DNSBL_" if kind == "dnsbl" else "DNSWL_"
    if not isinstance(entry, dict):
        raise ConfigError(file, f"{kind}[{position}]", f"must be a table ([[{kind}]])")
    name = entry.get("name")
    where = f"{kind} {name}" if isinstance(name, str) else f"{kind}[{position}]"
    allowed = {"name", "zone", "score", "action", "ipv4", "ipv6", "codes", "refused", "description"}
    if kind == "dnswl":
        allowed.discard("action")
    unknown = set(entry) - allowed
    if unknown:
        raise ConfigError(file, f"{where}.{sorted(unknown)[0]}", "unknown key" + (" (a DNSWL cannot reject)" if "action" in unknown else ""))
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(file, f"{where}.name", "must be an upper-case name such as SPAMHAUS (the symbol is " + prefix + "NAME)")
    zone = entry.get("zone")
    if not isinstance(zone, str) or not _ZONE.match(zone):
        raise ConfigError(file, f"{where}.zone", "must be a DNS zone such as \"zen.spamhaus.org\"")
    default_score = 2.0 if kind == "dnsbl" else -2.0
    score = _number(file, f"{where}.score", entry.get("score", default_score))
    reject = _action(file, f"{where}.action", entry.get("action", "score"))
    ipv4 = _bool(file, f"{where}.ipv4", entry.get("ipv4", True))
    ipv6 = _bool(file, f"{where}.ipv6", entry.get("ipv6", True))
    refused = entry.get("refused", [])
    if not isinstance(refused, list) or not all(_valid_pattern(p) for p in refused):
        raise ConfigError(file, f"{where}.refused", "must be a list of answers such as [\"127.255.255.*\"]")
    description = entry.get("description", f"Client listed in {zone}")
    if not isinstance(description, str):
        raise ConfigError(file, f"{where}.description", "must be a string")
    codes_value = entry.get("codes", [])
    if not isinstance(codes_value, list):
        raise ConfigError(file, f"{where}.codes", "must be a list of { name, answers, score } tables")
    codes = []
    for index, code in enumerate(codes_value):
        codes.append(_parse_code(kind, file, f"{where}.codes[{index}]", code, prefix + name, score, reject, zone))
    return Zone(kind, prefix + name, zone.strip(".").lower(), score, reject, ipv4, ipv6, tuple(codes), tuple(refused), description)


def _parse_code(kind: str, file: Any, where: str, code: Any, base: str, score: float, reject: bool, zone: str) -> Code:
    if not isinstance(code, dict):
        raise ConfigError(file, where, "must be a table { name, answers, score }")
    allowed = {"name", "answers", "score", "action", "description"} - ({"action"} if kind == "dnswl" else set())
    unknown = set(code) - allowed
    if unknown:
        raise ConfigError(file, f"{where}.{sorted(unknown)[0]}", "unknown key")
    name = code.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ConfigError(file, f"{where}.name", "must be an upper-case name such as SBL")
    answers = code.get("answers")
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not answers or not all(_valid_pattern(a) for a in answers):
        raise ConfigError(file, f"{where}.answers", "must list answers: \"127.0.0.2\", \"127.0.0.4-127.0.0.7\", \"127.0.0.0/30\" or \"127.0.*.3\"")
    description = code.get("description", f"Client listed in {zone} ({name})")
    if not isinstance(description, str):
        raise ConfigError(file, f"{where}.description", "must be a string")
    return Code(
        symbol=f"{base}_{name}",
        answers=tuple(answers),
        score=_number(file, f"{where}.score", code.get("score", score)),
        reject=_action(file, f"{where}.action", code.get("action", "reject" if reject else "score")),
        description=description,
    )


def _number(file: Any, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(file, key, "must be a number")
    return float(value)


def _bool(file: Any, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(file, key, "must be true or false")
    return value


def _action(file: Any, key: str, value: object) -> bool:
    if value not in ("score", "reject"):
        raise ConfigError(file, key, "must be \"score\" or \"reject\"")
    return value == "reject"


@dataclass(frozen=True)
class Listing:
    """What one zone said about a client."""

    zone: Zone
    symbols: tuple[tuple[str, bool], ...]  # (symbol, reject) for each list that matched
    answers: tuple[str, ...]


def classify(zone: Zone, answer: Answer) -> Listing | str | None:
    """A zone's A answer → a :class:`Listing`, ``"error"``/``"refused"``, or None (not listed)."""
    if answer.failed:
        return "error"
    if not answer.ok:
        return None
    answers = tuple(a for a in answer.records if _in_loopback(a))
    if not answers:
        return None  # not a DNS-list answer: a wildcard or hijacked zone
    if all(any(answer_matches(p, a) for p in zone.refused) for a in answers):
        return "refused"
    answers = tuple(a for a in answers if not any(answer_matches(p, a) for p in zone.refused))
    found: dict[str, bool] = {}
    for a in answers:
        codes = [c for c in zone.codes if any(answer_matches(p, a) for p in c.answers)]
        for code in codes:
            found[code.symbol] = found.get(code.symbol, False) or code.reject
        if not codes:
            found[zone.symbol] = found.get(zone.symbol, False) or zone.reject
    return Listing(zone, tuple(found.items()), answers)


def _in_loopback(answer: str) -> bool:
    try:
        return ipaddress.IPv4Address(answer) in _LOOPBACK
    except ValueError:
        return False


def reject_reply(ip: str, zone: str, reason: str) -> Reply:
    """The SMTP reply for a client a zone set to reject lists."""
    reason = " ".join(reason.split())[:300] or "listed"
    return Reply("554", "5.7.1", f"Service unavailable; client [{ip}] blocked using {zone}; {reason}")


class DnsLists(ConfiguredCheck):
    """DNSBL and DNSWL lookups of the client address."""

    name: ClassVar[str] = "dnsbl"
    options_name: ClassVar[str] = "dnsbl"
    description: ClassVar[str] = "DNS block lists and allow lists of the client address ([[dnsbl]], [[dnswl]] in rules/)"
    rule_sections: ClassVar[tuple[str, ...]] = ("dnsbl", "dnswl")
    order: ClassVar[int] = 10
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("DNSBL_TEMPFAIL", 0.0, "A DNS list could not be asked (timeout, SERVFAIL): counted as not listed"),
        Symbol("DNSBL_REFUSED", 0.0, "A DNS list refused the query (public resolver, over quota, key needed): counted as not listed"),
    )

    def __init__(self, services: "Services") -> None:
        super().__init__(services)
        self.zones = parse_zones(services)

    @classmethod
    def enabled(cls, services: "Services") -> bool:
        return super().enabled(services) and bool(services.ruleset.section("dnsbl") or services.ruleset.section("dnswl"))

    def dynamic_symbols(self) -> tuple[Symbol, ...]:
        found: list[Symbol] = []
        for zone in self.zones:
            found.append(Symbol(zone.symbol, zone.score, zone.description))
            found.extend(Symbol(c.symbol, c.score, c.description) for c in zone.codes)
        return tuple(found)

    def _zones_for(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> list[Zone]:
        v4 = isinstance(ip, ipaddress.IPv4Address) or ip.ipv4_mapped is not None
        return [z for z in self.zones if (z.ipv4 if v4 else z.ipv6)]

    def on_connect(self, session: Session) -> Hits:
        session.check_state(_STATE).clear()
        ip = session.ip
        if ip is None or not self.zones:
            return ()
        resolver = self.services.resolver
        deadline = resolver.stage_deadline(session.dns_deadlines, "connect")
        queries = [(dnsbl_name(session.client_addr, z.zone) or "", "A") for z in self._zones_for(ip)]
        futures = [resolver.submit(name, rdtype, deadline) for name, rdtype in queries]
        session.check_state(_STATE).update({"zones": self._zones_for(ip), "queries": queries, "futures": futures})
        if not self.services.config.milter.delay_reject:
            return self._hits(session, deadline)
        return ()

    def on_mail(self, session: Session, envelope: Envelope) -> Hits:
        if not session.check_state(_STATE):
            return ()
        return self._hits(session, self.services.resolver.stage_deadline(envelope.dns_deadlines, "mail"))

    def _hits(self, session: Session, deadline: float) -> list[Hit]:
        state = session.check_state(_STATE)
        if "hits" in state:
            return cast("list[Hit]", state["hits"])
        resolver = self.services.resolver
        answers = resolver.collect(state.pop("futures"), state["queries"], deadline)
        hits: list[Hit] = []
        failed: list[str] = []
        refused: list[str] = []
        listings: list[Listing] = []
        for zone, answer in zip(state["zones"], answers, strict=False):
            outcome = classify(zone, answer)
            if outcome == "error":
                failed.append(zone.zone)
            elif outcome == "refused":
                refused.append(zone.zone)
            elif isinstance(outcome, Listing):
                listings.append(outcome)
        if failed:
            hits.append(Hit("DNSBL_TEMPFAIL", detail=", ".join(failed)))
        if refused:
            hits.append(Hit("DNSBL_REFUSED", detail=", ".join(refused)))
        reasons = self._reasons(session.client_addr, listings, deadline)
        for listing in listings:
            reason = reasons.get(listing.zone.zone, "")
            detail = f"{listing.zone.zone} {','.join(listing.answers)}" + (f": {reason}" if reason else "")
            for symbol, reject in listing.symbols:
                if reject and listing.zone.kind == "dnsbl":
                    reply = reject_reply(session.client_addr, listing.zone.zone, reason or f"listed ({','.join(listing.answers)})")
                    hits.append(Hit(symbol, detail=detail[:200], action=Action.REJECT, reply=reply))
                    # The forced hit does not reach the score; log the listing too.
                    hits.append(Hit(symbol, detail=detail[:200]))
                else:
                    hits.append(Hit(symbol, detail=detail[:200]))
        state["hits"] = hits
        return hits

    def _reasons(self, ip: str, listings: list[Listing], deadline: float) -> dict[str, str]:
        """The TXT record of each listing (the zone's reason), asked for concurrently."""
        if not listings:
            return {}
        queries = [(dnsbl_name(ip, listing.zone.zone) or "", "TXT") for listing in listings]
        answers = self.services.resolver.query_many(queries, deadline)
        return {listing.zone.zone: (answer.records[0] if answer.ok else "") for listing, answer in zip(listings, answers, strict=False)}


CHECKS = (DnsLists,)
