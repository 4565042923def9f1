"""What the DNS lists of the rule files share.

``[[dnsbl]]`` and ``[[dnswl]]`` (client addresses) and ``[[uribl]]`` (the
domains of links) take the same keys, the same answer patterns and read an
answer the same way; :class:`ListKind` holds what differs between them.  This
module defines no check itself.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Collection, Iterable, Protocol, Sequence, TypeVar

from ..dns import Answer
from ..options import ConfigError, finite

if TYPE_CHECKING:
    from ..ruleset import Ruleset



class _Named(Protocol):
    @property
    def symbol(self) -> str: ...


N = TypeVar("N", bound=_Named)
L = TypeVar("L")

NAME = re.compile(r"[A-Z][A-Z0-9_]{0,47}\Z")  # \Z: "$" also matched before a final newline (a zone "….net\n" was asked)
ZONE = re.compile(r"(?=.{1,200}\Z)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\.)+[A-Za-z0-9_-]{1,63}\.?\Z")
LOOPBACK = ipaddress.IPv4Network("127.0.0.0/8")
#: A list's ``refused`` when its table has none: the range Spamhaus answers for a query it will not
#: answer (252: a typing error, 254: a public resolver, 255: too many queries), as other lists do.
DEFAULT_REFUSED = ("127.255.255.*",)


@dataclass(frozen=True)
class ListKind:
    """What differs between the kinds of DNS list tables (keys, defaults, examples in errors)."""

    key: str  # the rule-file key: "dnsbl", "dnswl" or "uribl"
    prefix: str  # of the symbols: "DNSBL_"
    keys: frozenset[str]
    code_keys: frozenset[str]
    default_score: float
    name_example: str
    zone_example: str
    code_example: str
    answers_example: str
    listed: str  # the default description: "<listed> <zone> (<code>)"
    codes_shape: str = "{ name, answers, score }"
    unknown_action: str = ""  # said when a table has an "action" it may not have


@dataclass(frozen=True)
class Code:
    """Answers of a list that mean one list (return codes, or bits of the last octet)."""

    symbol: str
    answers: tuple[str, ...]
    score: float
    reject: bool
    description: str
    mask: int = 0

    def matches(self, answer: str) -> bool:
        """Whether this code names *answer*."""
        if any(answer_matches(p, answer) for p in self.answers):
            return True
        return bool(self.mask) and answer.startswith("127.0.0.") and int(answer.rsplit(".", 1)[-1]) & self.mask != 0


@dataclass(frozen=True)
class DnsList:
    """One DNS list: the keys every list table shares, validated."""

    symbol: str
    zone: str  # lower-case, without the trailing dot
    score: float
    reject: bool
    codes: tuple[Code, ...]
    refused: tuple[str, ...]
    description: str
    #: The zone as SMTP replies name it (``reply_zone``; by default :func:`public_zone`): a reply goes to the client.
    reply_zone: str = ""

    @property
    def shown_zone(self) -> str:
        """The zone as an SMTP reply may name it: never an access key (:func:`public_zone`)."""
        return self.reply_zone or public_zone(self.zone)


#: A zone's first label that is an access key (Spamhaus DQS: 26 letters and digits; Abusix's: 32), not a list's
#: name: no list names its zone's first label with 16 characters or more (a list's long one-label name, combined-abuse-list, is taken for a key).
_ACCESS_KEY = re.compile(r"[a-z0-9_-]{16,}\Z")


def public_zone(zone: str) -> str:
    """*zone* without a leading access key (``KEY.zen.dq.spamhaus.net`` → ``zen.dq.spamhaus.net``).

    Replies go to the client; a keyed zone in one gave every rejected client the subscription key,
    which the list's terms ask to keep secret (as Postfix's ``rbl_reply_maps`` is used to hide it)."""
    first, dot, rest = zone.partition(".")
    return rest if dot and "." in rest and _ACCESS_KEY.match(first.lower()) else zone


def hide_access_key(text: str, zone: str) -> str:
    """*text* (a zone, a name asked in it, a line naming them) with *zone*'s access key written ``KEY``
    (:func:`public_zone`): what ``config show`` and ``doctor`` print is pasted into tickets and forums."""
    if public_zone(zone) == zone:
        return text
    return re.sub(re.escape(zone.partition(".")[0]), "KEY", text, flags=re.IGNORECASE)  # a resolver's names are lower-cased


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


def valid_pattern(pattern: Any) -> bool:
    """Whether *pattern* is an answer pattern :func:`answer_matches` understands, of answers in
    127.0.0.0/8 only: the others are never looked at (:func:`listing_answers`), so a pattern
    naming one would never match, silently."""
    if not isinstance(pattern, str) or not pattern:
        return False
    try:
        if "-" in pattern:
            low, high = (ipaddress.IPv4Address(p.strip()) for p in pattern.split("-", 1))
            return low <= high and low in LOOPBACK and high in LOOPBACK
        if "/" in pattern:
            return ipaddress.IPv4Network(pattern, strict=False).subnet_of(LOOPBACK)
        if "*" in pattern:
            # Each octet as the answer writes it (fnmatch compares text): "02" or a full-width digit never matches.
            parts = pattern.split(".")
            return len(parts) == 4 and parts[0] == "127" and all(p == "*" or (p.isascii() and p.isdigit() and str(int(p)) == p and int(p) < 256) for p in parts)
        return ipaddress.IPv4Address(pattern) in LOOPBACK
    except ValueError:
        return False


def parse_tables(ruleset: "Ruleset", kind: str, parse: Callable[[Any, int, Any], N], symbols_of: Callable[[N], set[str]], seen: set[str], noun: str,
                 builtin: Collection[str] = ()) -> list[N]:
    """Every ``[[kind]]`` table of the rule files, parsed; ConfigError on the first bad
    one, on one with a symbol already in *seen* (which takes the symbols of each), or on one
    naming a *builtin* symbol (``name = "TEMPFAIL"`` made DNSBL_TEMPFAIL, 0 by design, a listing)."""
    parsed: list[N] = []
    for file, position, entry in ruleset.tables(kind):
        item = parse(file, position, entry)
        symbols = symbols_of(item)
        taken = sorted(symbols.intersection(builtin))
        if taken:
            raise ConfigError(file, f"{kind} {item.symbol}", f"symbol {taken[0]} is one of milterd's own: name the {noun} otherwise")
        clash = symbols & seen
        if clash:
            raise ConfigError(file, f"{kind} {item.symbol}", f"symbol {sorted(clash)[0]} is already defined by another {noun}")
        seen |= symbols
        parsed.append(item)
    return parsed


def parse_list_table(kind: ListKind, file: Any, position: int, entry: Any) -> tuple[str, DnsList]:
    """The shared keys of one list table, and where it is (for the keys of its own
    kind); ConfigError naming the file, the list and the key otherwise."""
    if not isinstance(entry, dict):
        raise ConfigError(file, f"{kind.key}[{position}]", f"must be a table ([[{kind.key}]])")
    name = entry.get("name")
    where = f"{kind.key} {name}" if isinstance(name, str) else f"{kind.key}[{position}]"
    unknown = set(entry) - kind.keys
    if unknown:
        raise ConfigError(file, f"{where}.{sorted(unknown)[0]}", "unknown key" + (kind.unknown_action if "action" in unknown else ""))
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(file, f"{where}.name", f"must be an upper-case name such as {kind.name_example} (the symbol is {kind.prefix}NAME)")
    zone = entry.get("zone")
    if not isinstance(zone, str) or not ZONE.match(zone):
        raise ConfigError(file, f"{where}.zone", f"must be a DNS zone such as \"{kind.zone_example}\"")
    score = number(file, f"{where}.score", entry.get("score", kind.default_score))
    reject = action(file, f"{where}.action", entry.get("action", "score"))
    # Without the key, the error range lists answer (Spamhaus: a public resolver, too many queries) is not a listing:
    # a table written without it rejected, or allow-listed, every client a public resolver asked for.
    refused = entry.get("refused", list(DEFAULT_REFUSED))
    if not isinstance(refused, list) or not all(valid_pattern(p) for p in refused):
        raise ConfigError(file, f"{where}.refused", "must be a list of answers in 127.0.0.0/8 such as [\"127.255.255.*\"]")
    description = entry.get("description", f"{kind.listed} {hide_access_key(zone, zone)}")
    if not isinstance(description, str):
        raise ConfigError(file, f"{where}.description", "must be a string")
    codes_value = entry.get("codes", [])
    if not isinstance(codes_value, list):
        raise ConfigError(file, f"{where}.codes", f"must be a list of {kind.codes_shape} tables")
    reply_zone = entry.get("reply_zone", "")
    if not isinstance(reply_zone, str) or (reply_zone and not ZONE.match(reply_zone)):
        raise ConfigError(file, f"{where}.reply_zone", f"must be a DNS zone such as \"{kind.zone_example}\" (named in SMTP replies instead of zone)")
    symbol = kind.prefix + name
    codes = tuple(parse_code(kind, file, f"{where}.codes[{i}]", code, symbol, score, reject, zone) for i, code in enumerate(codes_value))
    for i, code in enumerate(codes):
        if any(other.symbol == code.symbol for other in codes[:i]):
            # One symbol for two codes: the second's score and action applied to the first's answers.
            raise ConfigError(file, f"{where}.codes[{i}].name", f"{code.symbol[len(symbol) + 1:]} names another code of this list already")
    return where, DnsList(symbol, zone.strip(".").lower(), score, reject, codes, tuple(refused), description, reply_zone.strip(".").lower())


def parse_code(kind: ListKind, file: Any, where: str, code: Any, base: str, score: float, reject: bool, zone: str) -> Code:
    """One table of a list's ``codes``; it takes the list's score and action unless it sets its own."""
    if not isinstance(code, dict):
        raise ConfigError(file, where, f"must be a table {kind.codes_shape}")
    unknown = set(code) - kind.code_keys
    if unknown:
        raise ConfigError(file, f"{where}.{sorted(unknown)[0]}", "unknown key")
    name = code.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ConfigError(file, f"{where}.name", f"must be an upper-case name such as {kind.code_example}")
    masks = "mask" in kind.code_keys
    answers = code.get("answers", [] if masks else None)
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, list) or not (answers or masks) or not all(valid_pattern(a) for a in answers):
        raise ConfigError(file, f"{where}.answers", f"must list answers in 127.0.0.0/8: {kind.answers_example}")
    mask = code.get("mask", 0)
    if isinstance(mask, bool) or not isinstance(mask, int) or not 0 <= mask <= 255:
        raise ConfigError(file, f"{where}.mask", "must be a number from 1 to 255 (bits of the answer's last octet)")
    if not answers and not mask:
        raise ConfigError(file, where, "needs answers or a mask")
    description = code.get("description", f"{kind.listed} {hide_access_key(zone, zone)} ({name})")
    if not isinstance(description, str):
        raise ConfigError(file, f"{where}.description", "must be a string")
    return Code(
        symbol=f"{base}_{name}",
        answers=tuple(answers),
        score=number(file, f"{where}.score", code.get("score", score)),
        reject=action(file, f"{where}.action", code.get("action", "reject" if reject else "score")),
        description=description,
        mask=mask,
    )


def number(file: Any, key: str, value: Any) -> float:
    """A number of a rule table; ConfigError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(file, key, "must be a number")
    try:
        return finite(value)
    except ValueError as exc:
        raise ConfigError(file, key, str(exc)) from None


def boolean(file: Any, key: str, value: Any) -> bool:
    """A true/false of a rule table; ConfigError otherwise."""
    if not isinstance(value, bool):
        raise ConfigError(file, key, "must be true or false")
    return value


def action(file: Any, key: str, value: object) -> bool:
    """Whether an ``action`` of a rule table rejects; ConfigError unless "score" or "reject"."""
    if value not in ("score", "reject"):
        raise ConfigError(file, key, "must be \"score\" or \"reject\"")
    return value == "reject"


def listing_answers(answer: Answer, refused: Sequence[str]) -> tuple[str, ...] | str | None:
    """The answers of a list's A answer that say "listed", ``"error"``/``"refused"``, or None (not listed).

    Answers outside 127.0.0.0/8 are left out (a wildcard or hijacked zone), and
    so are those *refused* names, unless every answer is one ("refused").
    """
    if answer.failed:
        return "error"
    if not answer.ok:
        return None
    answers = tuple(a for a in answer.records if in_loopback(a))
    if not answers:
        return None
    if all(any(answer_matches(p, a) for p in refused) for a in answers):
        return "refused"
    return tuple(a for a in answers if not any(answer_matches(p, a) for p in refused))


def listed_symbols(answers: Sequence[str], codes: Sequence[Code], fallback: tuple[str, bool] | None) -> tuple[tuple[str, bool], ...]:
    """(symbol, reject) for every code naming one of *answers*; *fallback* for an answer no code names."""
    found: dict[str, bool] = {}
    for a in answers:
        named = [c for c in codes if c.matches(a)]
        for code in named:
            found[code.symbol] = found.get(code.symbol, False) or code.reject
        if not named and fallback is not None:
            found[fallback[0]] = found.get(fallback[0], False) or fallback[1]
    return tuple(found.items())


def sort_outcomes(outcomes: Iterable[tuple[str, L | str | None]]) -> tuple[list[L], list[str], list[str]]:
    """The listings among (zone, outcome of ``classify``) pairs, and the zones that failed and that refused."""
    listings: list[L] = []
    failed: list[str] = []
    refused: list[str] = []
    for zone, outcome in outcomes:
        if outcome == "error":
            failed.append(zone)
        elif outcome == "refused":
            refused.append(zone)
        elif outcome is not None and not isinstance(outcome, str):
            listings.append(outcome)
    return listings, failed, refused


def in_loopback(answer: str) -> bool:
    """Whether *answer* is an IPv4 address in 127.0.0.0/8."""
    try:
        return ipaddress.IPv4Address(answer) in LOOPBACK
    except ValueError:
        return False
