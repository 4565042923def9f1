"""The CPU cuts of the headers, rdns, helo and sender checks change no verdict (issue #14/#15).

Each cut check is run next to a copy of its code before the cut (the reference below), over many
generated and hostile inputs; every hit, symbol and detail alike, must be the same.
"""

from __future__ import annotations

import email.policy
import email.utils
import ipaddress
import random
import re
from collections import Counter
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from milterd.checks import headers as headers_module
from milterd.checks.headers import SINGLE, Headers, address_list_problem, date_problem, parsed_date, unfold
from milterd.checks.helo import same_address
from milterd.checks.rdns import ReverseDns, _has_address, looks_generic
from milterd.checks.sender import address_problem
from milterd.config import Config
from milterd.dns import Answer
from milterd.message.model import Envelope, Hit, Session, Spool
from milterd.services import Services

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=timezone.utc)


# --- the headers check before the cut ------------------------------------------------------------
class OldHeaders(Headers):
    """Headers' judges as they were: Counter, one scan of every header per name, every value unfolded."""

    def on_eoh(self, session: Session, envelope: Envelope) -> list[Hit]:
        hits: list[Hit] = []
        for judge in (self._counts, self._from, self._date, self._message_id, self._recipients, self._bytes, self._encoded_words):
            try:
                hits.extend(judge(envelope))
            except Exception as exc:  # noqa: BLE001
                hits.append(Hit("HDR_PARSE_ERROR", detail=f"{judge.__name__.strip('_')}: {type(exc).__name__}"))
        return hits

    def _counts(self, envelope: Envelope) -> list[Hit]:  # type: ignore[override]
        hits = []
        counts = Counter(name.lower() for name, _ in envelope.headers)
        if counts["from"] == 0:
            hits.append(Hit("HDR_FROM_MISSING"))
        elif counts["from"] > 1:
            hits.append(Hit("HDR_FROM_MULTIPLE", detail=str(counts["from"])))
        duplicates = [name for name in SINGLE if name != "From" and counts[name.lower()] > 1]
        if duplicates:
            hits.append(Hit("HDR_DUPLICATE", detail=", ".join(duplicates)))
        if counts["date"] == 0:
            hits.append(Hit("HDR_DATE_MISSING"))
        if counts["message-id"] == 0:
            hits.append(Hit("HDR_MSGID_MISSING"))
        return hits

    def _values(self, envelope: Envelope, name: str) -> list[str]:
        wanted = name.lower()
        return [unfold(value) for hname, value in envelope.headers if hname.lower() == wanted]

    def _from(self, envelope: Envelope) -> list[Hit]:  # type: ignore[override]
        for value in self._values(envelope, "From"):
            problem = old_address_list_problem("From", value)
            # Since the thirtieth session: mailboxes counted (a group of none is no address; several need a Sender).
            count = 1 if problem else len(email.policy.default.header_factory("From", value).addresses)
            if not problem and count == 0:
                problem = "no address"
            if problem:
                return [Hit("HDR_FROM_INVALID", detail=f"{value[:80]}: {problem}"[:160])]
            if count > 1 and not self._values(envelope, "Sender"):
                return [Hit("HDR_FROM_MULTIPLE", detail=f"{count} mailboxes in one From, no Sender")]
        return []

    def _date(self, envelope: Envelope) -> list[Hit]:  # type: ignore[override]
        values = self._values(envelope, "Date")
        if not values:
            return []
        problem = old_date_problem(values[0], NOW, self.options.date_future, self.options.date_past)
        if problem:
            return [Hit(f"HDR_DATE_{problem.upper()}", detail=values[0][:80])]
        return []

    def _message_id(self, envelope: Envelope) -> list[Hit]:  # type: ignore[override]
        values = self._values(envelope, "Message-ID")
        if values and not headers_module._MSGID.match(values[0].strip()):
            return [Hit("HDR_MSGID_INVALID", detail=values[0][:80])]
        return []

    def _recipients(self, envelope: Envelope) -> list[Hit]:  # type: ignore[override]
        for name in ("To", "Cc"):
            for value in self._values(envelope, name):
                problem = old_address_list_problem(name, value)
                if problem:
                    return [Hit("HDR_TO_INVALID", detail=f"{name}: {problem}"[:160])]
        return []

    def _bytes(self, envelope: Envelope) -> list[Hit]:  # type: ignore[override]
        hits = []
        nul = [name for name, value in envelope.headers if b"\x00" in value]
        if nul:
            hits.append(Hit("HDR_NUL", detail=", ".join(nul[:5])))
        utf8_allowed = any(key.upper() == "SMTPUTF8" for key in envelope.mail_args)
        raw = [name for name, value in envelope.headers if not value.isascii()]
        if raw and not utf8_allowed:
            hits.append(Hit("HDR_8BIT", detail=", ".join(raw[:5])))
        return hits

    def _encoded_words(self, envelope: Envelope) -> list[Hit]:  # type: ignore[override]
        for name, value in envelope.headers:
            if b"=?" not in value:
                continue
            bad = headers_module.bad_encoded_words(unfold(value))
            if bad:
                return [Hit("HDR_ENCODED_WORD_INVALID", detail=f"{name}: {bad}"[:120])]
        return []


def old_address_list_problem(name: str, value: str) -> str:
    if "=?" not in value and headers_module._PLAIN_ADDRESS_LIST.fullmatch(value):
        return ""
    return headers_module.parsed_address_list_problem(name, value)


def old_date_problem(value: str, now: datetime, future: float, past: float) -> str:
    if not headers_module._RFC5322_DATE.match(headers_module.current_date(value)):
        return "invalid"  # since the thirtieth session: no RFC 5322 date-time (asctime's, no zone…) is invalid
    value = re.sub(r"(\d:\d\d):60(?=\s|$)", r"\1:59", value)  # a leap second is valid since (test_headers_leftovers.py)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return "invalid"
    if when is None:
        return "invalid"
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    delta = (when - now).total_seconds()
    if delta > future:
        return "future"
    if -delta > past:
        return "past"
    return ""


class _FrozenDatetime(datetime):
    """``datetime`` whose now() is NOW, so the old and the new check judge Dates against the same moment."""

    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return NOW


FROMS = [b"Alice <alice@example.org>", b"alice@example.org", b"\"Smith, A\" <a@example.org>", b"=?utf-8?q?Alic=C3=A9?= <a@example.org>",
         b"Alice <alice>", b"no address at all", b"<<>>", b"a@", b"@b", b"J\xf6rg <j@example.org>", b"undisclosed-recipients:;",
         b"Alice\r\n <alice@example.org>", b"a@b.c,\r\n\t b@c.d", b"", b"\x00nul@example.org", b"Alice <alice@[192.0.2.1]>",
         b"=?bogus?q?x?= <a@example.org>", b"(comment) a@example.org", b"a@example.org (Alice)", b"\"unterminated <a@example.org>",
         b"Alice <a@example.org", b"a b c <d@e.f>", b"a@b@c", b"group: a@b.c, d@e.f;", b"A" * 2000 + b" <a@example.org>"]
DATES = [b"Sat, 28 Nov 2026 09:51:17 +0000", b"Wed, 02 Dec 2026 11:59:00 -0800", b"2 Dec 2026 12:00:00 GMT", b"Thu, 1 Jan 2099 00:00:00 +0000",
         b"Mon, 1 Jan 1999 00:00:00 +0000", b"Wed, 25 Nov 2026 12:00:01 +0000", b"Wed, 25 Nov 2026 11:59:59 +0000", b"Thu, 03 Dec 2026 00:00:01 +0000",
         b"Thu, 03 Dec 2026 00:00:00 +0000", b"yesterday", b"", b"Sat, 28 Nov 2026 25:00:00 +0000", b"Sat, 32 Nov 2026 09:51:17 +0000",
         b"Sat, 28 Nov 2026 09:51:17 +9999", b"Sat, 28 Nov 2026 09:51:17 -0000", b"Sat, 28 Nov 26 09:51:17 +0000", b"Sat, 28 Nov 2026\r\n 09:51:17 +0000",
         b"Sat, 28 Nov 2026 09:51:17", b"28 Nov 2026 09:51 EST", b"Sat, 28 Nov 99999999999 09:51:17 +0000", b"\xff\xfe", b"Sat, 28 Nov 2026 09:51:17 +0000\x00",
         b"Sat, 28 Nov 2026 09:51:60 +0000", b"1 2 3 4 5", b"Sat, 28 Nov 2026 09:51:17 +0000 (UTC)", b"D" * 3000]
MSGIDS = [b"<abc@example.org>", b"abc@example.org", b"<abc>", b"<a b@example.org>", b"<abc@[192.0.2.1]>", b" <abc@example.org> ", b"",
          b"<abc@example.org>\r\n (comment)", b"<\xc3\xa9@example.org>", b"<\x00@example.org>"]
TOS = [b"<rcpt@example.com>", b"Bob <bob@example.com>, undisclosed-recipients:;", b"bob", b"bob@", b"=?utf-8?b?Qm9i?= <bob@example.com>",
       b"a@b.c, , d@e.f", b"\"x\" <y@z.w>", b"<>", b"b\xc3\xb6b@example.com", b"x@y.z,\r\n y@z.w", b"a@b.c;", b"::::"]
OTHERS = [("Subject", b"=?utf-8?q?caf=C3=A9?="), ("Subject", b"=?utf-8?b?!!!?="), ("Subject", b"=?nope?q?x?="), ("Subject", b"=?utf-8?q?unterminated"),
          ("Subject", b"plain"), ("Subject", b"=?utf-8?q?=FF?="), ("Subject", b"=?iso-8859-1*en?q?caf=E9?="), ("X-Mixed", b"=?utf-8?q?a?= and =?utf-8?Q?b_c?="),
          ("Received", b"from a by b;\r\n\tSat, 28 Nov 2026 09:51:17 +0000"), ("DKIM-Signature", b"v=1; a=rsa-sha256; b=" + b"Q" * 300),
          ("X-Eight", b"caf\xe9"), ("X-Nul", b"a\x00b"), ("X-CR", b"lone\rcr"), ("X-LF", b"lone\nlf"), ("X-Empty", b""), ("X-Ends", b"ends with ="),
          ("X-Starts", b"?= starts"), ("Sender", b"s@example.org"), ("Reply-To", b"r@example.org"), ("Bcc", b"b@example.org"),
          ("In-Reply-To", b"<x@y>"), ("References", b"<x@y> <z@w>"), ("Cc", b"c@example.org")]
NAMES = {"From": ["From", "FROM", "from", "fRoM"], "Date": ["Date", "DATE", "date"], "Message-ID": ["Message-ID", "Message-Id", "MESSAGE-ID"],
         "To": ["To", "TO", "to"], "Cc": ["Cc", "CC"]}


def random_headers(rng: random.Random) -> list[tuple[str, bytes]]:
    """A header list drawn at random: each of From/Date/Message-ID/To/Cc missing, once or repeated, plus others."""
    headers: list[tuple[str, bytes]] = []
    for name, pool in (("From", FROMS), ("Date", DATES), ("Message-ID", MSGIDS), ("To", TOS), ("Cc", TOS)):
        for _ in range(rng.choice((0, 1, 1, 1, 1, 2, 3))):
            headers.append((rng.choice(NAMES[name]), rng.choice(pool)))
    headers += rng.sample(OTHERS, rng.randint(0, 8))
    rng.shuffle(headers)
    return headers


HOSTILE = [
    [],
    [("From", b"a@b.c")] * 600 + [("Date", DATES[0])] * 300 + [("Received", b"x")] * 2000,  # huge counts
    [("X-A", b"ends ="), ("X-B", b"? starts")],  # "=?" only across two values
    [("Subject", b"=?utf-8?q?a?=")] * 12 + [("X", b"\x00")] * 7 + [("Y", b"\x80")] * 9,  # details cut at five names
    [("From", b"a@b.c\x00"), ("Date", b"\x00"), ("Message-ID", b"\x00")],
    [("From", b"\r\n"), ("Date", b"\r"), ("Message-ID", b"\n"), ("To", b"\r\n\t")],
    [("", b""), (" ", b" "), ("From:", b"x@y.z")],
    [("From", bytes(range(256)))],
]


@pytest.fixture()
def frozen_now(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(headers_module, "datetime", _FrozenDatetime)


def both(headers: list[tuple[str, bytes]], mail_args: dict[str, str | None]) -> tuple[list[Hit], list[Hit]]:
    services = Services(config=Config())
    old = OldHeaders(services).on_eoh(Session(), Envelope(spool=Spool(1024), headers=headers, mail_args=mail_args))
    new = Headers(services).on_eoh(Session(), Envelope(spool=Spool(1024), headers=headers, mail_args=mail_args))
    return list(old), list(new)


@pytest.mark.usefixtures("frozen_now")
@pytest.mark.parametrize("mail_args", [{}, {"SMTPUTF8": None}, {"smtputf8": None, "BODY": "8BITMIME"}])
def test_headers_hostile_lists_same_hits(mail_args: dict[str, str | None]) -> None:
    for headers in HOSTILE:
        old, new = both(headers, mail_args)
        assert new == old, headers[:5]


@pytest.mark.usefixtures("frozen_now")
def test_headers_random_lists_same_hits() -> None:
    rng = random.Random(14)
    symbols: set[str] = set()
    for _ in range(3000):  # twice over the same values: the second pass answers from the caches
        headers = random_headers(rng)
        mail_args: dict[str, str | None] = {"SMTPUTF8": None} if rng.random() < 0.5 else {}
        old, new = both(headers, mail_args)
        assert new == old, headers
        symbols.update(hit.symbol for hit in new)
    # The inputs reach every symbol of the judges (the limits' two are the adapter's).
    assert symbols >= {s.name for s in Headers.symbols} - {"HDR_TOO_MANY", "HDR_TOO_LARGE", "HDR_PARSE_ERROR"}


def test_date_problem_cache_keeps_the_clock() -> None:
    """The parse is cached, the comparison with now is not: the same text changes verdict as time goes by."""
    value = "Wed, 02 Dec 2026 12:00:00 +0000"
    day = 86400.0
    assert date_problem(value, NOW, day, day) == ""
    assert date_problem(value, NOW + timedelta(days=2), day, day) == "past"
    assert date_problem(value, NOW - timedelta(days=2), day, day) == "future"
    assert date_problem(value, NOW, day, day) == ""
    for raw in DATES:
        text = unfold(raw)
        for now in (NOW, NOW + timedelta(days=400), NOW - timedelta(days=9000)):
            for future, past in ((12 * 3600.0, 7 * day), (0.0, 0.0), (1e12, 1e12)):
                assert date_problem(text, now, future, past) == old_date_problem(text, now, future, past), text


#: Date values and the moment each names (None: it does not parse), written out rather than computed by the code under test.
PARSED_DATES = {
    "Sat, 28 Nov 2026 09:51:17 +0000": datetime(2026, 11, 28, 9, 51, 17, tzinfo=timezone.utc),
    "Wed, 02 Dec 2026 11:59:00 -0800": datetime(2026, 12, 2, 19, 59, 0, tzinfo=timezone.utc),
    "28 Nov 2026 09:51 EST": datetime(2026, 11, 28, 14, 51, 0, tzinfo=timezone.utc),
    "Sat, 28 Nov 26 09:51:17 +0000": datetime(2026, 11, 28, 9, 51, 17, tzinfo=timezone.utc),  # obsolete two-digit year
    "Sat, 28 Nov 2026 09:51:17": None,  # no zone: invalid since the thirtieth session (RFC 5322 requires one; it was taken as UTC)
    "Sat, 28 Nov 2026 09:51:60 +0000": datetime(2026, 11, 28, 9, 51, 59, tzinfo=timezone.utc),  # a leap second
    "Sat, 28 Nov 2026 09:51:17 +0000 (UTC)": datetime(2026, 11, 28, 9, 51, 17, tzinfo=timezone.utc),
    "yesterday": None,
    "": None,
    "Sat, 32 Nov 2026 09:51:17 +0000": None,
    "Sat, 28 Nov 2026 25:00:00 +0000": None,
    "Sat, 28 Nov 2026 09:51:17 +9999": None,
}
#: Address header values and whether each has a problem, for From, To and Cc alike.
ADDRESS_PROBLEMS = {
    "Alice <alice@example.org>": False, "alice@example.org": False, '"Smith, A" <a@example.org>': False,
    "=?utf-8?q?Alic=C3=A9?= <a@example.org>": False, "undisclosed-recipients:;": False, "group: a@b.c, d@e.f;": False,
    "Bob <bob@example.com>, undisclosed-recipients:;": False, "a@b.c, , d@e.f": False, "a@example.org (Alice)": False,
    "Alice <alice>": True, "no address at all": True, "<<>>": True, "a@": True, "@b": True, "<>": True, "a@b@c": True,
    "Alice <a@example.org": True, '"unterminated <a@example.org>': True, "a@b.c;": True, "::::": True,
}


def test_cached_parses_give_the_right_answers_again() -> None:
    """The parses are memoised: a second pass answers from the cache, and both passes give the answers above."""
    parsed_date.cache_clear()
    headers_module._cached_address_list_problem.cache_clear()  # noqa: SLF001
    for _ in range(2):
        assert {text: parsed_date(text) for text in PARSED_DATES} == PARSED_DATES
        for name in ("From", "To", "Cc"):
            assert {text: bool(address_list_problem(name, text)) for text in ADDRESS_PROBLEMS} == ADDRESS_PROBLEMS, name
    assert parsed_date.cache_info().hits >= len(PARSED_DATES)
    assert headers_module._cached_address_list_problem.cache_info().hits >= 3 * len(ADDRESS_PROBLEMS)  # noqa: SLF001


# --- the rdns check before the cut ---------------------------------------------------------------
def old_looks_generic(name: str, ip: str, patterns: list[re.Pattern[str]]) -> bool:
    lowered = name.lower()
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        address = None
    if isinstance(address, ipaddress.IPv4Address):
        octets = str(address).split(".")
        if re.search(rf"(^|\D){octets[2]}\D{octets[3]}(\D|$)|(^|\D){octets[3]}\D{octets[2]}(\D|$)", lowered):
            return True
    return any(p.search(lowered) for p in patterns)


def old_has_address(ip: str, records: tuple[str, ...]) -> bool:
    try:
        wanted = ipaddress.ip_address(ip)
        return any(ipaddress.ip_address(r) == wanted for r in records)
    except ValueError:
        return False


class OldReverseDns(ReverseDns):
    """ReverseDns's connect and judgement as they were: the address parsed and its PTR name built at each use."""

    def on_connect(self, session: Session) -> tuple[()]:
        session.check_state("rdns").clear()
        if session.ip is None:
            return ()
        if self.options.use_postfix_name and old_verified(session):
            return ()
        resolver = self.services.resolver
        deadline = resolver.stage_deadline(session.dns_deadlines, "connect")
        session.check_state("rdns").update({"ptr": resolver.submit(session.ip.reverse_pointer, "PTR", deadline)})
        return ()

    def _judge(self, session: Session, state: dict[str, Any], deadline: float) -> list[Hit]:
        ip = session.client_addr
        name = old_verified(session) if self.options.use_postfix_name else ""
        if not name:
            resolver = self.services.resolver
            query = (session.ip.reverse_pointer if session.ip else ip, "PTR")
            future = state.pop("ptr", None) or resolver.submit(*query, deadline)
            ptr = resolver.collect([future], [query], deadline)[0]
            if ptr.failed:
                return [Hit("RDNS_TEMPFAIL", detail=ptr.error)]
            if not ptr.ok:
                return [Hit("RDNS_NONE", detail=ip)]
            names = list(ptr.records[:10])
            forwards = resolver.query_many([(n, t) for n in names for t in ("A", "AAAA")], deadline)
            confirmed = [n for i, n in enumerate(names) if old_has_address(ip, forwards[2 * i].records + forwards[2 * i + 1].records)]
            if not confirmed:
                if any(f.failed for f in forwards):
                    return [Hit("RDNS_TEMPFAIL", detail=f"forward lookup of {names[0]}")]
                return [Hit("RDNS_NOT_FCRDNS", detail=f"{ip} -> {names[0]}")]
            name = confirmed[0]
        if old_looks_generic(name, ip, list(self.patterns)):
            return [Hit("RDNS_DYNAMIC", detail=name)]
        return []


def old_verified(session: Session) -> str:
    name = (session.client_name or "").strip().rstrip(".")
    if not name or name.lower() == "unknown" or name.startswith("["):
        return ""
    return name


ADDRESSES = ["192.0.2.10", "198.51.100.3", "10.2.0.192", "127.0.0.1", "203.0.113.255", "0.0.0.0", "2001:db8::1", "2001:db8::a:b",
             "::ffff:192.0.2.10", "::1", "fe80::1%eth0", "not-an-ip", "", "192.0.2.010", "1.2.3"]
PTR_NAMES = ["mail.example.org", "mx2.example.org", "192-0-2-10.dyn.example.net", "host10-2.example.net", "host2-10.example.net", "adsl-pool7.isp.example",
             "DHCP-42.ISP.EXAMPLE", "cpe-1-2-3-4.cable.example", "10.2.0.192.in-addr.example", "x3-255.example", "dynamic.example", "dyn.example",
             "localhost", "customer.example", "a102.example", "1.0.0.127", "ppp", "", "xn--caf-dma.example", "0-0.example"]


def test_looks_generic_same_answers() -> None:
    patterns = [re.compile(p) for p in Config().checks.rdns.generic_patterns]
    custom = [re.compile(r"(?i)\bmail\b"), re.compile(r"^x")]
    for pats in (patterns, custom, []):
        for _ in range(2):  # the second round from the cache
            for name in PTR_NAMES:
                for ip in ADDRESSES:
                    assert looks_generic(name, ip, pats) == old_looks_generic(name, ip, pats), (name, ip)


def test_has_address_same_answers() -> None:
    rng = random.Random(15)
    pool = [*ADDRESSES, "192.000.2.10", "::ffff:c000:20a", "2001:DB8::1", "0:0:0:0:0:0:0:1"]
    for _ in range(3000):
        ip = rng.choice(pool)
        records = tuple(rng.sample(pool, rng.randint(0, 3)))
        assert _has_address(ip, records) == old_has_address(ip, records), (ip, records)


class FakeResolver:
    """Answers from a table; anything else is NXDOMAIN."""

    def __init__(self, table: dict[tuple[str, str], Answer]) -> None:
        self.table = table

    def stage_deadline(self, deadlines: dict[str, float], stage: str) -> float:
        return deadlines.setdefault(stage, 1e18)

    def answer(self, name: str, rdtype: str) -> Answer:
        return self.table.get((name.lower().rstrip("."), rdtype), Answer(name, rdtype, "nxdomain"))

    def submit(self, name: str, rdtype: str, deadline: float | None = None) -> Answer:
        return self.answer(name, rdtype)

    def collect(self, pending: list[Answer], queries: Any, deadline: float) -> list[Answer]:
        return list(pending)

    def query_many(self, queries: list[tuple[str, str]], deadline: float | None = None) -> list[Answer]:
        return [self.answer(n, t) for n, t in queries]


def random_dns(rng: random.Random, ip: str) -> dict[tuple[str, str], Answer]:
    """PTR names for *ip* (or none, or an error) and forward answers that do or do not lead back to it."""
    table: dict[tuple[str, str], Answer] = {}
    try:
        pointer = ipaddress.ip_address(ip).reverse_pointer
    except ValueError:
        pointer = ip
    kind = rng.choice(("ok", "ok", "ok", "nxdomain", "error"))
    if kind == "error":
        table[(pointer, "PTR")] = Answer(pointer, "PTR", "error", error="timeout")
        return table
    if kind == "nxdomain":
        return table
    names = rng.sample(PTR_NAMES[:-3], rng.randint(1, 3))
    table[(pointer, "PTR")] = Answer(pointer, "PTR", "ok", tuple(names))
    for name in names:
        for rdtype, own in (("A", "192.0.2.10"), ("AAAA", "2001:db8::1")):
            choice = rng.choice(("self", "other", "none", "error", "mapped"))
            if choice == "self":
                table[(name, rdtype)] = Answer(name, rdtype, "ok", (ip,) if ip else (own,))
            elif choice == "other":
                table[(name, rdtype)] = Answer(name, rdtype, "ok", (own, "198.51.100.9"))
            elif choice == "mapped":
                table[(name, rdtype)] = Answer(name, rdtype, "ok", ("::ffff:" + ip if "." in ip else ip,))
            elif choice == "error":
                table[(name, rdtype)] = Answer(name, rdtype, "error", error="SERVFAIL")
    return table


@pytest.mark.parametrize("use_postfix_name", [True, False])
def test_rdns_sessions_same_hits(use_postfix_name: bool) -> None:
    rng = random.Random(16)
    config = Config.model_validate({"checks": {"rdns": {"use_postfix_name": use_postfix_name}}})
    seen: set[str] = set()
    for _ in range(3000):
        ip = rng.choice(ADDRESSES)
        client_name = rng.choice(["unknown", "", "[192.0.2.10]", "mail.example.org.", "192-0-2-10.dyn.example.net", " Unknown ", "host2-10.example.net"])
        services = Services(config=config)
        services._resolver = FakeResolver(random_dns(rng, ip))
        if "%" in ip:
            # A scoped IPv6 client (fe80::1%eth0): the old code raised ValueError (CPython's
            # reverse_pointer); the check now asks the address's name without the zone.
            session = Session(client_addr=ip, client_name=client_name)
            check = ReverseDns(services)
            check.on_connect(session)
            hits = list(check.on_mail(session, Envelope(spool=Spool(1024))))
            assert all(isinstance(hit, Hit) for hit in hits)
            continue
        results: list[list[Hit] | str] = []
        for check in (OldReverseDns(services), ReverseDns(services)):
            session = Session(client_addr=ip, client_name=client_name)
            try:
                check.on_connect(session)
                results.append(list(check.on_mail(session, Envelope(spool=Spool(1024)))))
            except ValueError as exc:
                results.append(f"{type(exc).__name__}: {exc}")
        assert results[1] == results[0], (ip, client_name, services.resolver.table)
        if isinstance(results[1], list):
            seen.update(hit.symbol for hit in results[1])
    assert seen == {s.name for s in ReverseDns.symbols}


# --- helo and sender: their pure judgements are now remembered ------------------------------------
def test_cached_helo_and_sender_judgements() -> None:
    """Both are memoised: a second pass answers from the cache, and both passes give the answers written here."""
    same = {
        ("192.0.2.10", "192.0.2.10"): True, ("192.0.2.10", "::ffff:192.0.2.10"): True, ("::ffff:198.51.100.3", "198.51.100.3"): True,
        ("2001:db8::1", "2001:DB8:0::1"): True, ("192.0.2.10", "198.51.100.3"): False, ("2001:db8::1", "2001:db8::a:b"): False,
        ("[192.0.2.10]", "192.0.2.10"): False, ("not-an-ip", "not-an-ip"): False, ("", ""): False, ("192.0.2.010", "192.0.2.10"): False,
    }
    problems = {
        "alice@example.org": "", "user@[1.2.3.4]": "ip_literal", "tom@example": "no_dot", "no-at-sign": "invalid", "a b@example.org": "invalid",
        '"a b"@example.org': "", "@example.org": "invalid", "alice@exa_mple..org": "invalid", "jörg@exämple.org": "", "x@-bad-.org": "invalid",
        # A forwarder's SRS address passes RFC 5321's 64 octets (a floor servers must take): it scored MAIL_FROM_INVALID.
        "SRS0=abcd=TT=amazonses.com=0100018e7a1b2c3d-4e5f6a7b-8c9d-0e1f-2a3b-4c5d6e7f8a9b-000000@fwd.example": "",
        "a" * 257 + "@example.org": "invalid", "a" * 256 + "@example.org": "", "a@" + "b." * 130 + "org": "invalid", "a@b.c.": "",
        "a..b@docomo.ne.jp": "", ".a@b.c": "invalid", "a\x00@b.c": "invalid", "": "invalid",
    }
    same_address.cache_clear()
    address_problem.cache_clear()
    for _ in range(2):
        assert {pair: same_address(*pair) for pair in same} == same
        assert {sender: address_problem(sender) for sender in problems} == problems
    assert same_address.cache_info().hits >= len(same) and address_problem.cache_info().hits >= len(problems)


def test_a_scoped_ipv6_client_is_looked_up_without_its_zone() -> None:
    from milterd.dns import dnsbl_name, reverse_pointer

    assert reverse_pointer(ipaddress.ip_address("fe80::1%eth0")) == reverse_pointer(ipaddress.ip_address("fe80::1"))
    assert reverse_pointer("fe80::1%eth0") == reverse_pointer("fe80::1")
    assert reverse_pointer(ipaddress.ip_address("fe80::1%eth0")).endswith(".8.e.f.ip6.arpa")
    assert dnsbl_name("fe80::1%eth0", "zen.example") == dnsbl_name("fe80::1", "zen.example") is not None
