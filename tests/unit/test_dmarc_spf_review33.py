"""Review 33: a From byte that is not UTF-8 escaped DMARC, and SPF ran past its deadline.

DMARC read raw From bytes as UTF-8 with U+FFFD for the bad ones and cut the domain there: ``sec@bank\\xad.test``
(a soft hyphen in windows-1252, invisible and ignored by IDNA) was judged as the domain "bank", and bank.test's
p=reject never applied.  SPF gave each pyspf lookup a fresh timeout and pyspf counted only the answered ones
against its querytime: ten ``ptr:`` terms over ten PTR names that never answer held MAIL FROM 199 s with a 2 s budget.
"""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Iterator

import dns.name
import pytest
import spf

from milterd.checks.dmarc import Dmarc, envelope_from_domains
from milterd.checks.headers import bad_encoded_words
from milterd.checks.localdomains import LocalSpoof
from milterd.checks.spf import SpfResults, evaluate
from milterd.config import Config, DnsSection
from milterd.content import mimeparams
from milterd.content.headertext import raw_readings
from milterd.dns import Answer, Resolver, a_label, use_for_spf
from milterd.message.model import Action, Envelope, Hit, Session, Spool
from milterd.services import Services
from tests.unit.test_dmarc_review28 import Records

# --- DMARC ---------------------------------------------------------------------------------------------------


def envelope(author: bytes, content_type: bytes = b"text/plain; charset=windows-1252") -> Envelope:
    found = Envelope(spool=Spool(1 << 20))
    found.headers += [("From", author), ("Content-Type", content_type)]
    found.check_state("dkim")["result"] = []
    return found


def judged(author: bytes, txt: dict[str, str] | None = None) -> tuple[list[Hit], Envelope]:
    config = Config.model_validate({})
    message = envelope(author)
    resolver = Records(txt if txt is not None else {"_dmarc.bank.test": "v=DMARC1; p=reject"})
    check = Dmarc(SimpleNamespace(config=config, resolver=resolver))  # type: ignore[arg-type]
    return list(check.on_eom(Session(client_addr="203.0.113.9"), message)), message


@pytest.mark.parametrize("author", [b"Security <security@bank\xad.test>", b"Security <security@\xadbank.test>",
                                    b"security@bank.te\xadst", b"Security <security@bank\x81.test>"])
def test_a_byte_that_is_not_utf8_in_the_from_domain_does_not_escape_p_reject(author: bytes) -> None:
    [hit], message = judged(author)
    # Judged as the domain "bank" (or none at all): DMARC_NONE, delivered to a reader who sees security@bank.test.
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)
    assert message.check_state("dmarc")["result"].domain == "bank.test"


def test_a_latin1_from_domain_is_judged_as_the_idn_a_client_shows() -> None:
    [hit], _ = judged(b"Security <security@b\xe4nk.test>", {f"_dmarc.{a_label('bänk.test')}": "v=DMARC1; p=reject"})
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)


def test_the_messages_declared_charset_is_a_reading_too() -> None:
    # "банк" in KOI8-R; windows-1252 reads the same bytes as ÂÁÎË.
    message = envelope(b"sec@\xc2\xc1\xce\xcb.test", b"text/plain; charset=\"koi8-r\"")
    assert a_label("банк.test") in envelope_from_domains(message)


def test_a_from_no_reading_of_which_names_a_domain_is_held_not_passed_as_none() -> None:
    [hit], message = judged(b"Security <security@\x81\x8d>")
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_QUARANTINE", Action.QUARANTINE)
    assert message.check_state("dmarc")["result"].result == "fail"
    # An ASCII or UTF-8 From without a domain reads the same to every client: no domain, DMARC_NONE as before.
    for author in (b"undisclosed-recipients:;", "Jörg".encode()):
        assert [hit.symbol for hit in judged(author)[0]] == ["DMARC_NONE"], author


def test_local_from_spoof_reads_the_domains_dmarc_reads() -> None:
    services = Services(config=Config().with_changes({"milter.hostname": "mx.test", "milter.local_domains": ["example.org"]}))
    message = envelope(b"CEO <ceo@example\xad.org>")
    message.sender = "x@evil.example"
    hits = LocalSpoof(services).on_eoh(Session(client_addr="198.51.100.7", family="inet"), message)
    assert [hit.symbol for hit in hits] == ["LOCAL_FROM_SPOOF"]


# --- SPF -----------------------------------------------------------------------------------------------------


class Clock:
    """time.monotonic, moved by hand (a lookup that never answers moves it by what it waited)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Wire:
    """The upstream: a TXT and a PTR table; a name under stall.test never answers; counts the questions."""

    def __init__(self, clock: Clock, txt: dict[str, str]) -> None:
        self.clock, self.txt = clock, txt
        self.asked: list[tuple[str, str]] = []

    def resolve(self, name: str, rdtype: str, lifetime: float) -> Answer:
        self.asked.append((name, rdtype))
        if name.endswith("stall.test"):
            self.clock.now += lifetime
            return Answer(name, rdtype, "error", error="timeout")
        if rdtype == "PTR" and name == "9.113.0.203.in-addr.arpa":
            names = tuple(f"n{n}.stall.test." for n in range(10))
            return Answer(name, rdtype, "ok", names, tuple(SimpleNamespace(target=dns.name.from_text(n)) for n in names), 300.0)
        if rdtype == "TXT" and name in self.txt:
            return Answer(name, rdtype, "ok", (self.txt[name],), (SimpleNamespace(strings=(self.txt[name].encode(),)),), 300.0)
        return Answer(name, rdtype, "nxdomain", ttl=60.0)


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Iterator[Wire]:
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    ptrs = " ".join(f"ptr:p{n}.test" for n in range(10))
    upstream = Wire(clock, {"slow.test": f"v=spf1 {ptrs} -all", "late.test": "v=spf1 ptr:p0.test include:other.test -all",
                            "other.test": "v=spf1 +all"})
    resolver = Resolver(DnsSection(nameservers=["127.0.0.1:1"], timeout=1.0))  # each lookup waits 1 s at most
    monkeypatch.setattr(resolver, "_servers", [])  # every question to the fake upstream
    monkeypatch.setattr(resolver, "_resolve", upstream.resolve)
    monkeypatch.setattr(spf, "DNSLookup", spf.DNSLookup)  # given back after the test
    use_for_spf(lambda: resolver)
    yield upstream


def test_ptr_names_that_never_answer_do_not_hold_spf_past_its_deadline(wire: Wire) -> None:
    start = wire.clock.now
    result, _ = evaluate("203.0.113.9", "x@slow.test", "h.test", 2.0, SpfResults())
    # 100 address lookups (ten names for each of ten terms), each given a fresh second: 100 s of a 2 s budget.
    assert wire.clock.now - start <= 2.0
    assert [name for name, _ in wire.asked if name.endswith("stall.test")] == ["n0.stall.test", "n1.stall.test"]
    # The client's own names did not validate (RFC 7208 §5.5): the ptr terms do not match, as before.
    assert result == "fail"


def test_a_lookup_after_the_deadline_is_a_temperror_at_once(wire: Wire) -> None:
    result, _ = evaluate("203.0.113.9", "x@late.test", "h.test", 2.0, SpfResults())
    # The PTR names spent the budget: include:other.test is not asked (it was, with a fresh timeout, and passed).
    assert ("other.test", "TXT") not in wire.asked
    assert result == "temperror"


# --- a second look: a charset no reading tries, and bytes outside the domain -----------------------------------------
@pytest.mark.parametrize("author", [b"Security <sec@bank\x810\x852.test>", b"Security <sec@bank\x816\xa47.test>", b"Security <sec@bank\xfe.test>"])
def test_bytes_in_a_domain_no_reading_explains_are_failed_not_passed_as_none(author: bytes) -> None:
    """GB18030's soft hyphen (81 30 85 32), zero-width space, windows-1256's RLM (FE): with no charset declared (a
    multipart message), a Chinese or Arabic locale's client shows sec@bank.test, judged here as other domains."""
    config = Config.model_validate({})
    message = envelope(author, b"multipart/mixed; boundary=x")
    check = Dmarc(SimpleNamespace(config=config, resolver=Records({"_dmarc.bank.test": "v=DMARC1; p=reject"})))  # type: ignore[arg-type]
    [hit] = check.on_eom(Session(client_addr="203.0.113.9"), message)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_QUARANTINE", Action.QUARANTINE)


@pytest.mark.parametrize("author", [b'"M\xfcller, J\xfcrgen" <juergen>', b"M\xfcller", b'"M\xfcller" <m@example.org>'])
def test_bytes_in_a_display_name_are_no_matter(author: bytes) -> None:
    """Taken for an unreadable From, an 8-bit display name of an address without a domain was quarantined."""
    assert [hit.symbol for hit in judged(author)[0]] == ["DMARC_NONE"]


@pytest.mark.parametrize("author", [
    b"\x8eR\x93c\x81@\x91\xbe\x98Y <taro@example.jp>",  # 山田　太郎 in Shift_JIS: the full-width space is 81 40
    b"\xb3\xaf\xa4@\xa9\xfa <chen@example.tw>",  # 陳一明 in Big5: 一 is A4 40
    b"\x81@\xcf\xc8\xc9\xfa <x@example.cn>",  # GBK
])
def test_a_double_byte_display_name_with_a_trail_byte_at_is_no_hidden_domain(author: bytes) -> None:
    """A second look: read as UTF-8, such a name looked like an address whose domain held bytes, and the message
    was quarantined whatever its real From domain published."""
    assert [hit.symbol for hit in judged(author, {})[0]] == ["DMARC_NONE"]


def test_the_hidden_domain_failure_says_why() -> None:
    config = Config.model_validate({})
    check = Dmarc(SimpleNamespace(config=config, resolver=Records({})))  # type: ignore[arg-type]
    [hit] = check.on_eom(Session(client_addr="203.0.113.9"), envelope(b"sec@bank\xfe.test", b"multipart/mixed; boundary=x"))
    assert hit.symbol == "DMARC_FAIL_QUARANTINE" and "not UTF-8" in hit.detail


@pytest.mark.parametrize("author", [b"sec\xfe@bank\xfe.test", b"Security <sec@bank\x810\x852.test>", b"sec\x81@bank\xad\xfe.test"])
def test_a_trail_byte_before_the_at_does_not_excuse_a_domain_with_bytes(author: bytes) -> None:
    """windows-1256 shows FE as an invisible RLM: sec@bank.test to its readers, whatever byte precedes the "@"."""
    config = Config.model_validate({})
    check = Dmarc(SimpleNamespace(config=config, resolver=Records({})))  # type: ignore[arg-type]
    [hit] = check.on_eom(Session(client_addr="203.0.113.9"), envelope(author, b"multipart/mixed; boundary=x"))
    assert hit.symbol == "DMARC_FAIL_QUARANTINE"


def test_a_trail_backslash_cannot_make_a_decoy_address_excuse_the_real_one() -> None:
    """A third look: Shift_JIS reads 81 5C as one character, so a quoted name ended early there and showed the
    decoy <z@ok.test>; windows-1256 shows sec@bank.test (FE an invisible RLM)."""
    config = Config.model_validate({})
    check = Dmarc(SimpleNamespace(config=config, resolver=Records({})))  # type: ignore[arg-type]
    author = b'"A\x81\\", <z@ok.test> x" <sec@ban\xfek.test>'
    [hit] = check.on_eom(Session(client_addr="203.0.113.9"), envelope(author, b"multipart/mixed; boundary=x"))
    assert hit.symbol == "DMARC_FAIL_QUARANTINE"


@pytest.mark.parametrize("name", ["山田太郎", "山田"])
def test_a_raw_iso_2022_jp_display_name_does_not_hide_the_address(name: str) -> None:
    """ISO-2022-JP written raw (7-bit, as Japanese mailers long did): its escapes hold "@", "$" and "(", and the
    address parser read the name as an address of domain "o" or none: bank.test's p=reject was never applied."""
    [hit], _ = judged(name.encode("iso-2022-jp") + b" <sec@bank.test>")
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)


@pytest.mark.parametrize("author", [
    b"Bank \x1b.J\x1bNA <sec@bank.test>",  # CPython's iso2022_jp_2 raised RuntimeError on these ("replace" or not)
    b"\x1b$B;3E\x1b(B <sec@bank.test>",  # a pair cut short: the codec read the rest of the field as kanji
    b"Yamada \x1b$B;\x1b(B sec@bank.test",
])
def test_hostile_iso_2022_jp_neither_crashes_the_check_nor_hides_the_address(author: bytes) -> None:
    """A quick look at the ISO-2022-JP reading: each escape takes effect on its own, as the WHATWG decoder has it."""
    [hit], _ = judged(author)
    assert (hit.symbol, hit.action) == ("DMARC_FAIL_REJECT", Action.REJECT)


def test_a_declared_charset_whose_codec_fails_is_no_reading_and_no_crash() -> None:
    assert any("sec@bank.test" in text for text in raw_readings(b"Bank \x1b.J\x1bNA \xad <sec@bank.test>", "iso-2022-jp-2"))


def test_iso_2022_jp_2_s_internal_error_is_no_crash_of_the_content_readers() -> None:
    """CPython's iso2022_jp_2 raises RuntimeError on ESC . J ESC N A, "replace" or not: a body or an encoded-word
    labelled so made the reader fail (a check error, the message accepted under on_check_error's default)."""
    assert mimeparams.decode_bytes(b"\x1b.J\x1bNA", "iso-2022-jp-2")
    assert not mimeparams._decodes(b"\x1b.J\x1bNA", "iso-2022-jp-2")
    assert bad_encoded_words("=?iso-2022-jp-2?q?=1B.J=1BNA?=")
