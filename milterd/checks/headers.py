"""Well-formed headers (RFC 5322), judged at end of headers.

From, Date and Message-ID present, single and parseable; To and Cc
parseable; no duplicate of a header RFC 5322 allows once; no raw 8-bit
bytes (unless the client said SMTPUTF8) or NUL bytes; encoded-words (RFC
2047) that decode.  Parsing uses the standard library's ``email`` package
with ``policy.default``; any exception while judging a header becomes
``HDR_PARSE_ERROR``, never a failed message.

Header limits (:func:`header_limit_hit`) are milterd's own, whatever
Postfix's: too many fields, one field or the whole section too large is
refused with a 5xx at the header that crosses the line (the adapter applies
them to every client, before the header is kept).
"""

from __future__ import annotations

import base64
import binascii
import codecs
import email.errors
import email.utils
import functools
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email import policy
from typing import ClassVar

from pydantic import Field

from ..content.headertext import python_charset, word_charset
from ..content.mimeparams import NOT_CHARSETS
from ..message.model import Action, Envelope, Hit, Session
from ..message.reply import Reply
from ..options import CheckSwitches, Duration
from . import Hits, Symbol
from .configured import ConfiguredCheck


class HeaderChecks(CheckSwitches):
    """Well-formed headers (RFC 5322): From, Date, Message-ID, single headers, raw bytes, encoded-words."""

    date_future: Duration = Field(12 * 3600.0, description="A Date further than this in the future scores HDR_DATE_FUTURE.")
    date_past: Duration = Field(7 * 86400.0, description="A Date further than this in the past scores HDR_DATE_PAST.")


#: Headers RFC 5322 §3.6 allows at most once (Resent-* aside).
SINGLE = ("Date", "From", "Sender", "Reply-To", "To", "Cc", "Bcc", "Message-ID", "In-Reply-To", "References", "Subject")
_SINGLE_BUT_FROM = tuple((name, name.lower()) for name in SINGLE if name != "From")  # HDR_FROM_MULTIPLE's
# msg-id is [CFWS] "<" id-left "@" id-right ">" [CFWS] (RFC 5322 §3.6.4): comments around it are allowed.
# id-left is dot-atom-text or, obsolete but sent by real mailers, any local-part (obs-id-left, §4.5.4):
# words joined by dots, a word being an atom or a quoted string ('<"a b"@host>').  No control character
# anywhere, even where the obsolete syntax would allow one.
_MSGID_QUOTED = r'"(?:[^"\\\x00-\x08\x0a-\x1f\x7f]|\\[^\x00-\x08\x0a-\x1f\x7f])*"'
_MSGID_WORD = rf'(?:[^<>\s@."\x00-\x1f\x7f]+|{_MSGID_QUOTED})'
_MSGID = re.compile(
    rf"^(?:\([^()]*\)\s*)*<(?:[^<>\s@\x00-\x1f\x7f]+|{_MSGID_WORD}(?:\.{_MSGID_WORD})*)"
    r"@(?:[^<>\s@\[\]\x00-\x1f\x7f]+|\[[^<>\s\[\]\x00-\x1f\x7f]+\])>(?:\s*\([^()]*\))*$"
)
# RFC 5322 §4.3's obsolete date forms that the stdlib refuses or misreads: comments anywhere, white
# space before the day-of-week's comma, two- and three-digit years.
_DATE_COMMENT = re.compile(r"\([^()]*\)")
#: How deep a Date's comments are undone (each level a pass over the value); deeper ones leave it invalid.
_COMMENT_DEPTH = 4
_DATE_DAY_COMMA = re.compile(r"^(\s*[A-Za-z]+)\s+,")
#: White space around a time's colons (obs-hour, obs-minute and obs-second allow CFWS, RFC 5322 §4.5.3).
_DATE_TIME_COLON = re.compile(r"(?<=\d)\s*:\s*(?=\d)")
#: An RFC 5322 date-time once :func:`current_date` has made its obsolete forms current (names in any case; an hour
#: of one digit let be, as mailers write it; a zone required: numeric, UT, UTC, GMT, a military letter, or a name
#: of two or three letters and a T, CET or JST, as SpamAssassin's INVALID_DATE lets them be; RFC 5322 §4.3 reads
#: those it does not know as -0000).
_RFC5322_DATE = re.compile(
    r"(?i)\s*(?:(?:mon|tue|wed|thu|fri|sat|sun)\s*,\s*)?\d{1,2}\s+(?:jan|feb|mar|apr|may|jun|jul|aug|sep|oct|nov|dec)\s+"
    r"\d{4}\s+\d{1,2}:\d{2}(?::\d{2})?\s+(?:[+-]\d{4}|utc?|gmt|[a-z]{2,3}t|[a-ik-z])\s*\Z"
)
_DATE_OBS_YEAR = re.compile(r"^((?:\s*[A-Za-z]+\s*,)?\s*\d{1,2}\s+[A-Za-z]+\s+)(\d{2,3})(?=\s|$)")
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([bBqQ])\?([^?\s]*)\?=")
_ENCODED_START = re.compile(r"=\?[^?\s]+\?[bBqQ]\?")
_FOLD = re.compile(r"\r?\n(?=[ \t])")
# The plain shapes nearly every address header has: dot-atom@dot-atom, bare or in <>, after a
# display name of plain words or a simple quoted string, comma-separated.  For these the stdlib's
# parser (about a third of the headers check's time) finds nothing to say; anything else goes to it.
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*"
_MAILBOX = rf"(?:{_ADDR_SPEC}|(?:(?:{_ATOM}(?: {_ATOM})*|\"[ !#-\[\]-~]*\") ?)?<{_ADDR_SPEC}>)"
_PLAIN_ADDRESS_LIST = re.compile(rf"{_MAILBOX}(?: *, *{_MAILBOX})*")


TOO_MANY_REPLY = Reply("554", "5.6.0", "Too many headers")
TOO_LARGE_REPLY = Reply("552", "5.3.4", "Message header too large")


@dataclass(frozen=True)
class HeaderLimits:
    """``[milter] max_headers``, ``max_header_size``, ``max_header_section``; 0 is no limit."""

    count: int = 0
    field_size: int = 0
    section_size: int = 0


def header_limit_hit(limits: HeaderLimits, count: int, section: int, name: str, size: int) -> Hit | None:
    """The refusal for the header field *name* of *size* bytes, the *count*-th, bringing the section to *section* bytes; None within the limits."""
    if limits.field_size and size > limits.field_size:
        return Hit("HDR_TOO_LARGE", detail=f"{name[:60]}: {size} bytes > max_header_size {limits.field_size}", action=Action.REJECT, reply=TOO_LARGE_REPLY)
    if limits.count and count > limits.count:
        return Hit("HDR_TOO_MANY", detail=f"more than max_headers {limits.count} header fields", action=Action.REJECT, reply=TOO_MANY_REPLY)
    if limits.section_size and section > limits.section_size:
        return Hit("HDR_TOO_LARGE", detail=f"header section over max_header_section {limits.section_size} bytes at {name[:60]}", action=Action.REJECT, reply=TOO_LARGE_REPLY)
    return None


def field_size(name: str, value: bytes) -> int:
    """The bytes of one header field as it travels: name, colon, value (folding included), CRLF."""
    return len(name) + 1 + len(value) + 2


def unfold(raw: bytes) -> str:
    """A header value as text: folded lines joined, bytes decoded as UTF-8 (bad bytes replaced)."""
    text = raw.decode("utf-8", "replace")
    return _FOLD.sub("", text).strip() if "\n" in text else text.strip()


def bad_encoded_words(value: str) -> str:
    """The first malformed RFC 2047 encoded-word of *value* (unknown charset, bad base64,
    undecodable bytes, unterminated), or "".

    The bytes of adjacent words of one charset (blanks between them aside) are decoded together, as
    Thunderbird and Python's ``decode_header`` read them: a character split between two words (RFC 2047
    §5 forbids it; long-word splitters do it) is no malformed word to a reader.
    """
    run: list[tuple[re.Match[str], bytes]] = []
    for match in _ENCODED_WORD.finditer(value):
        charset, encoding, text = python_charset(match.group(1).split("*", 1)[0]), match.group(2).upper(), match.group(3)
        try:
            known = codecs.lookup(charset).name not in NOT_CHARSETS
        except (LookupError, ValueError):  # ValueError: a NUL in the name
            known = False
        if not known:
            return match.group(0)
        try:
            if encoding == "B":
                # Without its "=" padding, as decode_header and Thunderbird read it; other bytes are still refused.
                data = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
            else:
                data = re.sub(r"=([0-9A-Fa-f]{2})", lambda m: chr(int(m.group(1), 16)), text.replace("_", " ")).encode("latin-1")
        except (binascii.Error, ValueError):
            return match.group(0)
        last = run[-1][0] if run else None
        if last is not None and not (word_charset(last) == word_charset(match) and not value[last.end():match.start()].strip(" \t")):
            if (bad := _undecodable(run)) is not None:
                return bad
            run = []
        run.append((match, data))
    if run and (bad := _undecodable(run)) is not None:
        return bad
    rest = _ENCODED_WORD.sub("", value)
    unterminated = _ENCODED_START.search(rest)
    return rest[unterminated.start():][:60] if unterminated else ""


def _undecodable(run: list[tuple[re.Match[str], bytes]]) -> str | None:
    """The word of the adjacent encoded-words *run* (each with its decoded bytes) where their bytes, taken
    together, stop being text in the run's charset; None when they are text."""
    try:
        b"".join(data for _, data in run).decode(python_charset(word_charset(run[0][0])))
    except UnicodeDecodeError as exc:
        end = 0
        for match, data in run:
            end += len(data)
            if exc.start < end:
                return match.group(0)
        return run[-1][0].group(0)  # the bytes end inside a character
    except (ValueError, UnicodeError, LookupError, RuntimeError):  # LookupError: a codec of no text ("base64");
        return run[0][0].group(0)  # RuntimeError: CPython's iso2022_jp_2 on some bytes
    return None


#: Values longer than this are judged afresh each time, so the caches below hold no huge hostile header.
_CACHED_VALUE_LENGTH = 512


def address_list_problem(name: str, value: str, budget: ParseBudget | None = None) -> str:
    """Why an address header does not parse, or "" when it does (groups such as "undisclosed-recipients:;" are fine,
    and so are local parts with repeated dots or a dot at their end, "a..b@docomo.ne.jp", "abc.@ezweb.ne.jp").
    With *budget* (the message's :class:`ParseBudget`), a value the stdlib's parser would read past it is not judged."""
    if budget is not None and len(value) <= _PARSED_LENGTH and not budget.allows(value):
        return ""
    if len(value) > _CACHED_VALUE_LENGTH:
        return _address_list_problem(name, value, budget)
    return _cached_address_list_problem(name, value)


#: The longest value, or address of a longer value, given to the stdlib's parser: it takes quadratic
#: time on some (32 KB of '"a' cost 8 s, of "(a)" a valid 6 s), so a longer value is judged address
#: by address (:func:`addresses`), and an address longer than this is a problem of its own.
_PARSED_LENGTH = 2048
#: Characters of From, To and Cc values judged per message at most (32 fields of 32 KB are legal).
_JUDGED_LENGTH = 64 * 1024
#: Characters of address values one message may have the stdlib's parser read (plain lists cost nothing):
#: within _JUDGED_LENGTH, From, To and Cc of addresses just under _PARSED_LENGTH, each padded with
#: comments, cost a worker 1.6 s of CPU a message (a review's; about 30 ms per 2 KB address).
_PARSE_BUDGET = 8 * 1024


class ParseBudget:
    """What is left of one message's :data:`_PARSE_BUDGET`."""

    __slots__ = ("left", "_allowed")

    def __init__(self, chars: int = _PARSE_BUDGET) -> None:
        self.left = chars
        self._allowed: set[str] = set()

    def allows(self, value: str) -> bool:
        """Whether *value* may be judged: a plain address list always (no parser reads it), one allowed before
        (the From's count of mailboxes after its judgement), another while the budget lasts (its length is spent)."""
        if value in self._allowed or ("=?" not in value and _PLAIN_ADDRESS_LIST.fullmatch(value)):
            return True
        if len(value) > self.left:
            self.left = 0  # a shorter value after it is not judged either: the order of fields decides nothing
            return False
        self.left -= len(value)
        self._allowed.add(value)
        return True


def _address_list_problem(name: str, value: str, budget: ParseBudget | None = None) -> str:
    if "=?" not in value and _PLAIN_ADDRESS_LIST.fullmatch(value):
        return ""
    if len(value) <= _PARSED_LENGTH:
        return parsed_address_list_problem(name, value)
    for address in addresses(value):
        if len(address) > _PARSED_LENGTH:
            return f"address of {len(address)} characters"
        problem = address_list_problem(name, address, budget) if address.strip() else ""
        if problem:
            return problem
    return ""


def _encoded_address(value: str) -> str:
    """The first word of an address list (outside quoted strings and comments) with both an "@" and an
    encoded-word, or "": RFC 2047 §5 forbids one in an addr-spec, and the stdlib and Thunderbird
    decode ``sec@=?utf-8?q?bank.test?=`` where it stands (sec@bank.test)."""
    text = _QUOTED_OR_COMMENT.sub(" ", value)
    # The stdlib takes blanks and comments on either side of the "@" and of a dot (sec@ (x) =?…?=, sec@bank .=?…?=).
    for special in "@.":
        if special in text:
            pieces = text.split(special)
            text = special.join([pieces[0].rstrip(), *(piece.strip() for piece in pieces[1:-1]), pieces[-1].lstrip()])
    for word in _ADDRESS_WORD_END.split(text):
        # An "@" only inside the encoded-word (=?utf-8?q?john@example.com?= <john@…>) is a display name's text.
        if "@" in word and _ENCODED_WORD.search(word) and "@" in _ENCODED_WORD.sub("", word):
            return word
    return ""


def addresses(value: str) -> list[str]:
    """*value* (an address list) cut into its addresses: at each comma (and a group's ":" and ";")
    not in a quoted string, a comment or angle brackets."""
    pieces: list[str] = []
    start = depth = 0
    quoted = angle = group = escaped = False
    for at, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or depth):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == "(":
            depth += 1
        elif depth:
            depth -= char == ")"
        elif char == '"':
            quoted = True
        elif char in "<>":
            angle = char == "<"
        elif char == ":" and not (angle or group):  # a group's name (a phrase) is left out
            group, start = True, at + 1
        elif (char == ";" and group or char == ",") and not angle:
            group = group and char != ";"
            pieces.append(value[start:at])
            start = at + 1
    pieces.append(value[start:])
    return pieces


# The answer depends on (name, value) alone, and the same From/To values come back message after
# message (a sender's own address, a list's); an exception is not cached, so it is raised each time.
_cached_address_list_problem = functools.lru_cache(maxsize=1024)(_address_list_problem)


#: A quoted string, a (not nested) comment or a domain literal, blanked before an encoded-word is looked for in the
#: addresses; an unclosed one runs to the end (else each '"' after it is a new start: quadratic).
_QUOTED_OR_COMMENT = re.compile(r'"(?:[^"\\]|\\.?)*"?|\((?:[^()\\]|\\.?)*\)?|\[(?:[^\[\]\\]|\\.?)*\]?')
#: What ends an address's word: a blank or a special of an address list.
_ADDRESS_WORD_END = re.compile(r'[\s<>,;:"]+')


#: The stdlib's complaints about RFC 2047 encoded-words in a display name.  The field is still good
#: RFC 5322 ('"=?utf-8?b?...?=" <a@b>' is a quoted string, '=?...?=<a@b>' a phrase and an angle-addr),
#: common in legitimate mail, and a malformed encoded-word is HDR_ENCODED_WORD_INVALID's.
_ENCODED_WORD_DEFECTS = frozenset({"encoded word inside quoted string", "missing trailing whitespace after encoded-word", "whitespace inside encoded word"})
#: The stdlib's complaints about a local part with repeated dots or a dot at its end ("a..b@docomo.ne.jp",
#: "abc.@ezweb.ne.jp"): RFC-invalid, but Japanese mobile carriers have handed such addresses out for
#: decades and Postfix, SpamAssassin and Rspamd take them.  The first is the stdlib's summary of any
#: invalid local part, so a list is excused only when every invalid defect is one of these three (a
#: space, a backslash or a leading dot adds its own).
_CARRIER_DOT_DEFECTS = frozenset({"local-part is not dot-atom, quoted-string, or obs-local-part", "invalid repeated '.'", "Invalid trailing '.' in local part"})


def parsed_address_list_problem(name: str, value: str) -> str:
    """:func:`address_list_problem` by the stdlib's parser alone (no shortcut for plain addresses)."""
    encoded = _encoded_address(value) if "=?" in value else ""
    if encoded:
        return f"encoded-word in the address {encoded[:80]!r}"
    try:
        header = policy.default.header_factory(name, value)
        addresses = header.addresses
    except Exception as exc:  # noqa: BLE001 - the stdlib parser raises on some malformed lists
        return f"unparseable ({type(exc).__name__})"
    invalid = [d for d in header.defects if isinstance(d, email.errors.InvalidHeaderDefect) and str(d) not in _ENCODED_WORD_DEFECTS]
    if invalid and not all(str(d) in _CARRIER_DOT_DEFECTS for d in invalid):
        return str(invalid[0])
    for address in addresses:
        if not address.domain:
            return f"no domain in {address.addr_spec or value!r}"
    return ""


def mailboxes(value: str, budget: ParseBudget | None = None) -> int:
    """How many mailboxes the address list *value* names (a group's members count, its name does not; a value
    the parser refuses, or one past *budget*: one per address it holds)."""
    if budget is not None and len(value) <= _PARSED_LENGTH and not budget.allows(value):
        return _mailboxes(value, parse=False)
    if len(value) > _CACHED_VALUE_LENGTH:
        return _mailboxes(value)
    return _cached_mailboxes(value)


def _mailboxes(value: str, parse: bool = True) -> int:
    if parse and len(value) <= _PARSED_LENGTH:
        try:
            return len(policy.default.header_factory("From", value).addresses)
        except Exception:  # noqa: BLE001 - the stdlib parser raises on some malformed lists (a problem said otherwise)
            pass
    return sum(1 for address in addresses(value) if "@" in address)


_cached_mailboxes = functools.lru_cache(maxsize=1024)(_mailboxes)


def date_problem(value: str, now: datetime, future: float, past: float) -> str:
    """ "invalid", "future", "past" or "" for a Date header value."""
    when = parsed_date(value) if len(value) <= _CACHED_VALUE_LENGTH else _parse_date(value)
    if when is None:
        return "invalid"
    delta = (when - now).total_seconds()
    if delta > future:
        return "future"
    if -delta > past:
        return "past"
    return ""


def current_date(value: str) -> str:
    """A Date header value with RFC 5322 §4.3's obsolete forms made current: comments dropped, no space
    before the comma or around the time's colons, a two-digit year 00-49 as 20xx and 50-99 as 19xx, a
    three-digit one plus 1900."""
    for _ in range(_COMMENT_DEPTH):  # innermost first: "(x (y) z)" nests, as RFC 5322 §3.2.2 allows
        if "(" not in value:
            break
        value = _DATE_COMMENT.sub(" ", value)
    value = _DATE_DAY_COMMA.sub(r"\1,", value)
    value = _DATE_TIME_COLON.sub(":", value)
    match = _DATE_OBS_YEAR.match(value)
    if match:
        year = int(match.group(2))
        year += 2000 if len(match.group(2)) == 2 and year < 50 else 1900
        value = f"{match.group(1)}{year}{value[match.end():]}"
    return value


def _parse_date(value: str) -> datetime | None:
    """The moment a Date header value names, or None when it is no RFC 5322 date-time (§3.3, with §4.3's obsolete
    forms: no day of week, a two-digit year, the old zone names) or does not name a moment.

    The stdlib's parser guesses at anything ("Sunday, December 6, 2026 1:26 PM", asctime's "Sun Dec 6 13:26:39
    2026", no zone at all): as SpamAssassin's INVALID_DATE, such text is invalid (in the training folders of the
    Apache SpamAssassin corpus, 25 of 500 spam Date fields and none of 2,625 ham).  A leap second (second 60)
    is taken as second 59: ``datetime`` has no 60.
    """
    current = current_date(value)
    if not _RFC5322_DATE.match(current):
        return None
    try:
        parsed = email.utils.parsedate_tz(current)
        if parsed is None:
            return None
        year, month, day, hour, minute, second = parsed[:6]
        offset = timezone(timedelta(seconds=parsed[9] or 0))  # no zone ("-0000" or none at all) is UTC
        return datetime(year, month, day, hour, minute, 59 if second == 60 else second, tzinfo=offset)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


# Only the parse is cached, never the comparison with now: a cached datetime is the same
# answer for the same text at any time (datetimes are immutable), "future"/"past" are not.
parsed_date = functools.lru_cache(maxsize=1024)(_parse_date)


class _Fields:
    """The header fields of one message grouped by lower-cased name in one pass (the judges ask for a few names each).

    ``on_eoh`` makes one for all its judges; a judge called alone makes its own.
    """

    __slots__ = ("headers", "by_name", "_joined", "budget")

    def __init__(self, headers: list[tuple[str, bytes]]) -> None:
        self.headers = headers
        self.budget = ParseBudget()  # the message's, for every address field its judges parse
        by_name: dict[str, list[bytes]] = {}
        for name, value in headers:
            key = name.lower()
            values = by_name.get(key)
            if values is None:
                by_name[key] = [value]
            else:
                values.append(value)
        self.by_name = by_name
        self._joined: bytes | None = None

    def count(self, lowered: str) -> int:
        """How many fields are called *lowered* (any case)."""
        return len(self.by_name.get(lowered, ()))

    def raw(self, lowered: str) -> list[bytes]:
        """The raw values of the fields called *lowered*, in order."""
        return self.by_name.get(lowered, [])

    def joined(self) -> bytes:
        """Every value run together: one C scan tells whether any has a NUL, an 8-bit byte or "=?" (the
        last may also straddle two values, so a hit is looked at value by value)."""
        if self._joined is None:
            self._joined = b"".join([value for _, value in self.headers])
        return self._joined


class Headers(ConfiguredCheck[HeaderChecks]):
    """RFC 5322 well-formedness of the header section."""

    name: ClassVar[str] = "headers"
    description: ClassVar[str] = "Well-formed headers: From, Date, Message-ID, single headers, raw bytes, encoded-words"
    order: ClassVar[int] = 60
    symbols: ClassVar[tuple[Symbol, ...]] = (
        Symbol("HDR_FROM_MISSING", 2.0, "No From header"),
        Symbol("HDR_FROM_MULTIPLE", 2.0, "More than one From header, or several mailboxes in one without a Sender header"),
        Symbol("HDR_FROM_INVALID", 2.0, "The From header does not parse or has an address without a domain"),
        Symbol("HDR_DATE_MISSING", 1.0, "No Date header"),
        Symbol("HDR_DATE_INVALID", 1.0, "The Date header is no RFC 5322 date-time (obsolete forms allowed; a zone required) or names no moment"),
        Symbol("HDR_DATE_FUTURE", 1.5, "The Date is far in the future ([checks.headers] date_future)"),
        Symbol("HDR_DATE_PAST", 1.0, "The Date is far in the past ([checks.headers] date_past)"),
        Symbol("HDR_MSGID_MISSING", 1.0, "No Message-ID header"),
        Symbol("HDR_MSGID_INVALID", 1.0, "The Message-ID is not <left@right>"),
        Symbol("HDR_TO_INVALID", 1.0, "A To or Cc header does not parse"),
        Symbol("HDR_DUPLICATE", 1.5, "A header allowed once (Subject, Date, Message-ID, Sender, To, …) appears several times"),
        Symbol("HDR_8BIT", 0.5, "Raw 8-bit bytes in a header without SMTPUTF8"),
        Symbol("HDR_NUL", 3.0, "A NUL byte in a header (Postfix cuts a header at its NUL: seen in milterd check and from other MTAs)"),
        Symbol("HDR_ENCODED_WORD_INVALID", 1.0, "A malformed RFC 2047 encoded-word (unknown charset, bad base64, unterminated)"),
        Symbol("HDR_PARSE_ERROR", 0.5, "A header broke the parser"),
        Symbol("HDR_TOO_MANY", 0.0, "More header fields than [milter] max_headers: refused with 554 5.6.0 (whatever the score)"),
        Symbol("HDR_TOO_LARGE", 0.0, "A header field over [milter] max_header_size, or the header section over max_header_section: refused with 552 5.3.4 (whatever the score)"),
    )

    def on_eoh(self, session: Session, envelope: Envelope) -> Hits:
        hits: list[Hit] = []
        fields = _Fields(envelope.headers)
        for judge in (self._counts, self._from, self._date, self._message_id, self._recipients, self._bytes, self._encoded_words):
            try:
                hits.extend(judge(envelope, fields))
            except Exception as exc:  # noqa: BLE001 - hostile headers must not cost the message
                hits.append(Hit("HDR_PARSE_ERROR", detail=f"{judge.__name__.strip('_')}: {type(exc).__name__}"))
        return hits

    def _counts(self, envelope: Envelope, fields: _Fields | None = None) -> list[Hit]:
        fields = fields or _Fields(envelope.headers)
        hits = []
        froms = fields.count("from")
        if froms == 0:
            hits.append(Hit("HDR_FROM_MISSING"))
        elif froms > 1:
            hits.append(Hit("HDR_FROM_MULTIPLE", detail=str(froms)))
        repeated = {name for name, values in fields.by_name.items() if len(values) > 1}  # usually none
        duplicates = [name for name, lowered in _SINGLE_BUT_FROM if lowered in repeated] if repeated else []
        if duplicates:
            hits.append(Hit("HDR_DUPLICATE", detail=", ".join(duplicates)))
        if fields.count("date") == 0:
            hits.append(Hit("HDR_DATE_MISSING"))
        if fields.count("message-id") == 0:
            hits.append(Hit("HDR_MSGID_MISSING"))
        return hits

    def _from(self, envelope: Envelope, fields: _Fields | None = None) -> list[Hit]:
        fields = fields or _Fields(envelope.headers)
        size = 0
        for raw in fields.raw("from"):
            size += len(raw)
            if size > _JUDGED_LENGTH and size > len(raw):  # the first is judged whatever its size
                break
            value = unfold(raw)
            problem = address_list_problem("From", value, fields.budget)
            count = mailboxes(value, fields.budget) if not problem else 1
            if not problem and count == 0:
                # A group of no member ("service@paypal.com":;) shows its name where the address goes, and DMARC
                # finds no domain to judge: DMARC_NONE, nothing scored (an "@" anywhere in it passed it).
                problem = "no address"
            if problem:
                return [Hit("HDR_FROM_INVALID", detail=f"{value[:80]}: {problem}"[:160])]
            if count > 1 and not fields.count("sender"):
                # RFC 5322 §3.6.2: a From of several mailboxes needs a Sender (Rspamd's MULTIPLE_FROM).
                return [Hit("HDR_FROM_MULTIPLE", detail=f"{count} mailboxes in one From, no Sender")]
        return []

    def _date(self, envelope: Envelope, fields: _Fields | None = None) -> list[Hit]:
        fields = fields or _Fields(envelope.headers)
        values = fields.raw("date")
        if not values:
            return []
        value = unfold(values[0])  # the first Date is judged (a second one is HDR_DUPLICATE's)
        problem = date_problem(value, datetime.now(timezone.utc), self.options.date_future, self.options.date_past)
        if problem:
            return [Hit(f"HDR_DATE_{problem.upper()}", detail=value[:80])]
        return []

    def _message_id(self, envelope: Envelope, fields: _Fields | None = None) -> list[Hit]:
        fields = fields or _Fields(envelope.headers)
        values = fields.raw("message-id")
        if values:
            value = unfold(values[0])
            if not _MSGID.match(value.strip()):
                return [Hit("HDR_MSGID_INVALID", detail=value[:80])]
        return []

    def _recipients(self, envelope: Envelope, fields: _Fields | None = None) -> list[Hit]:
        fields = fields or _Fields(envelope.headers)
        size = 0
        for name in ("To", "Cc"):
            for raw in fields.raw(name.lower()):
                size += len(raw)
                if size > _JUDGED_LENGTH and size > len(raw):  # the first is judged whatever its size
                    return []
                problem = address_list_problem(name, unfold(raw), fields.budget)
                if problem:
                    return [Hit("HDR_TO_INVALID", detail=f"{name}: {problem}"[:160])]
        return []

    def _bytes(self, envelope: Envelope, fields: _Fields | None = None) -> list[Hit]:
        fields = fields or _Fields(envelope.headers)
        joined = fields.joined()
        if joined.isascii() and b"\x00" not in joined:  # the usual case: nothing to name
            return []
        hits = []
        nul = [name for name, value in envelope.headers if b"\x00" in value]
        if nul:
            hits.append(Hit("HDR_NUL", detail=", ".join(nul[:5])))
        raw = [name for name, value in envelope.headers if not value.isascii()]  # a byte >= 0x80
        if raw and not envelope.smtputf8:
            hits.append(Hit("HDR_8BIT", detail=", ".join(raw[:5])))
        return hits

    def _encoded_words(self, envelope: Envelope, fields: _Fields | None = None) -> list[Hit]:
        fields = fields or _Fields(envelope.headers)
        if b"=?" not in fields.joined():
            return []
        for name, value in envelope.headers:
            if b"=?" not in value:
                continue
            bad = bad_encoded_words(unfold(value))
            if bad:
                return [Hit("HDR_ENCODED_WORD_INVALID", detail=f"{name}: {bad}"[:120])]
        return []


CHECKS = (Headers,)
