"""The auth row's per-message cuts (issue #15): the same answers, computed less often."""

from __future__ import annotations

import random
import re
import threading
from pathlib import Path
from typing import Any, ClassVar, Iterator

import pytest

import milterd.checks.dmarc as dmarc
import milterd.message.model as model
from milterd.checks import Check, Hits
from milterd.config import load_config
from milterd.content import mimetext
from milterd.content.mimeparts import attachments
from milterd.content.mimetext import extract, uris_in_text
from milterd.message.model import Envelope, Hit, Session, Spool
from milterd.message.pipeline import Pipeline
from milterd.services import build
from tests.harness.messages import envelope_of

# The links uris_in_text gives (session 38): Thunderbird's readings, and those of the pattern applied with finditer
# over the whole text before (a scheme not preceded by an ASCII letter or digit since session 17, no longer \b:
# "_https://", "请https://" are links), where they differ.
NOT_LINK = r"""\s<>"`{}\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"""
REFERENCE = re.compile(r"""(?i)(?:(?<!(?-i:[A-Za-z0-9]))(?:https?|ftp)://|\bwww\.)[^\s<>"'()\[\]{}]{2,2000}""")
# Two characters that end no link follow the prefix ("http://()" and "http://[]" are not read: no host).
THUNDERBIRD_START = re.compile(rf"""(?i)(?:(?<!(?-i:[A-Za-z0-9]))(?:https?|ftp)://|\bwww\.)(?=(?:[^{NOT_LINK}\[)\]]|(?<=//)\[){{2}})""")
NOT_LINK_CHARS = re.compile(rf"[{NOT_LINK}]")


def thunderbird_length(body: str) -> int:
    """FindURLEnd's loop over the text after a link's prefix, character by character: where a link character
    ends, a ")" or "]" closes nothing opened, or a "[" stands anywhere but right after "//"."""
    parenthesis = square = False
    for index, char in enumerate(body):
        if NOT_LINK_CHARS.match(char) or (char == ")" and not parenthesis) or (char == "]" and not square):
            return index
        if char == "[" and body[index - 2:index] != "//":
            return index
        parenthesis = parenthesis or char == "("
        square = square or char == "["
    return len(body)


def thunderbird_links(text: str) -> list[tuple[int, str]]:
    found, pos = [], 0
    while (match := THUNDERBIRD_START.search(text, pos)) is not None:
        body = text[match.end():match.end() + 2000]
        # "[" right after the prefix's "//": the loop above sees the prefix's slashes in front of it.
        length = thunderbird_length(("//" if match.group(0).endswith("//") else "") + body) - (2 if match.group(0).endswith("//") else 0)
        if length >= 2:
            found.append((match.start(), text[match.start():match.end() + length]))
            pos = match.end() + length
        else:
            pos = match.start() + 1
    return found


def host(link: str) -> str:
    """The host of a written-out link: after its scheme's "//" and any more slashes or backslashes (or from
    "www."), up to "/", "\\", "?" or "#", without userinfo, lower-cased."""
    rest = link.partition("//")[2].lstrip("/\\") if not link.lower().startswith("www.") else link
    return re.split(r"[/\\?#]", rest)[0].rpartition("@")[2].lower()


def reference_links(text: str) -> list[str]:
    """Thunderbird's links and, merged by start, the pattern's, but one that starts where Thunderbird's does and
    has the same host (not none)."""
    ours = thunderbird_links(text)
    theirs = [(m.start(), m.group(0)) for m in REFERENCE.finditer(text)]
    merged = []
    for start, link in theirs:
        if not any(at == start and host(other) and host(link) == host(other) for at, other in ours):
            merged.append((start, 1, link))
    merged += [(start, 0, link) for start, link in ours]
    return [link for _, _, link in sorted(merged, key=lambda item: (item[0], item[1]))]


def reference_uris(text: str) -> list[str]:
    found = []
    for link in reference_links(text):
        uri = link.rstrip(".,;:!?-'")
        found.append("http://" + uri if uri.lower().startswith("www.") else uri)
    return found[: mimetext.MAX_URIS]


PIECES = list("hHtTpPsSfFwW:/. x\n<\"é_1()[]'`@\u200e") + ["ſ", "İ", "ẞ", "K", "://", "http://", "https://", "ftp://", "www.", "WwW.", "httpſ://", "a.b"]


def test_links_are_those_of_the_whole_text_pattern() -> None:
    rnd = random.Random(15)
    for _ in range(20000):
        text = "".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 40)))
        assert uris_in_text(text) == reference_uris(text), text
    long = ("x" * 1000 + "see http://" + "a" * 3000 + " and www.example.org. ") * 3
    assert uris_in_text(long) == reference_uris(long)


def chunks_read(raw: bytes, size: int) -> tuple[list[str], list[int]]:
    """The attachment names in *raw* and which of its *size*-byte chunks were read."""
    read: list[int] = []

    def chunks() -> Iterator[bytes]:
        for index, start in enumerate(range(0, len(raw), size)):
            read.append(index)
            yield raw[start : start + size]

    return [a.filename for a in attachments(chunks())], read


def test_a_single_part_text_message_is_not_read_past_its_headers() -> None:
    raw = b"From: a@example.org\r\nContent-Type: text/plain\r\n\r\n" + b"line of text\r\n" * 20000
    names, read = chunks_read(raw, 4096)
    assert names == []
    assert read == [0]  # the headers are in the first chunk; the body's lines cannot hold an attachment


def test_an_epilogue_is_not_read() -> None:
    part = b"--b\r\nContent-Type: application/pdf; name=\"x.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n--b--\r\n"
    raw = b"Content-Type: multipart/mixed; boundary=b\r\n\r\n" + part + b"epilogue\r\n" * 20000
    names, read = chunks_read(raw, 4096)
    assert names == ["x.pdf"]
    assert read == [0]


def test_a_single_part_attachment_is_still_decoded_to_its_end() -> None:
    body = b"A" * 40000
    raw = b"Content-Type: application/octet-stream; name=\"a.bin\"\r\n\r\n" + body
    found = [(a.filename, a.data.read()) for a in attachments([raw[i : i + 1000] for i in range(0, len(raw), 1000)])]
    assert found == [("a.bin", body)]


MESSAGE = b"From: a@example.org\r\nSubject: hi\r\n\r\nSee http://one.example/x and www.two.example today.\r\n"


def test_the_message_text_is_extracted_once_per_envelope_and_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []

    def counting(raw: bytes, limit: int = 1024 * 1024) -> mimetext.MessageText:
        calls.append(limit)
        return extract(raw, limit)

    def counting_large(window: bytes, source: Any, room: int, limit: int = 1024 * 1024) -> mimetext.MessageText:
        calls.append(limit)  # a body past 4 x limit: read without its parts of no text too
        return mimetext.extract_large(window, source, room, limit)

    monkeypatch.setattr(model, "extract", counting)
    monkeypatch.setattr(model, "extract_large", counting_large)
    envelope = envelope_of(MESSAGE)
    results: list[mimetext.MessageText] = []
    threads = [threading.Thread(target=lambda: results.append(envelope.text(1024 * 1024))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert calls == [1024 * 1024]
    assert all(r is results[0] for r in results)
    assert results[0] == extract(envelope.header_bytes + envelope.spool.read(), 1024 * 1024)
    assert results[0].uris == ["http://one.example/x", "http://www.two.example"]
    assert envelope.text(10).text == extract(envelope.header_bytes + envelope.spool.read(40), 10).text
    assert calls == [1024 * 1024, 10]
    envelope.close()


def count_ip_parses(monkeypatch: pytest.MonkeyPatch, ipaddress_module: Any) -> list[str]:
    """Make *ipaddress_module*.ip_address record every value it parses; the list it returns fills as they come."""
    parsed: list[str] = []
    real = ipaddress_module.ip_address

    def counting(value: str) -> Any:
        parsed.append(value)
        return real(value)

    monkeypatch.setattr(ipaddress_module, "ip_address", counting)
    return parsed


def test_session_ip_is_parsed_once_per_address(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed = count_ip_parses(monkeypatch, model.ipaddress)
    session = Session(client_addr="192.0.2.7")
    assert [str(session.ip) for _ in range(3)] == ["192.0.2.7"] * 3
    session.client_addr = "2001:db8::1"
    assert str(session.ip) == "2001:db8::1"
    session.client_addr = "unix:/socket"
    assert session.ip is None and session.ip is None
    assert parsed == ["192.0.2.7", "2001:db8::1", "unix:/socket"]


def test_from_domain_parses_each_value_once(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real = dmarc.addresses

    def counting(value: str) -> list[tuple[str, str]]:
        parsed.append(value)
        return real(value)

    monkeypatch.setattr(dmarc, "addresses", counting)
    value = f"Alice <alice@{random.randrange(10**9)}.example.org>"
    assert dmarc.from_domain(value) == dmarc.from_domain(value) == value.split("@")[1].rstrip(">")
    assert len(parsed) == 1
    number = random.randrange(10**9)
    long = "A" * 2000 + f" <a@{number}.example.org>"
    size = dmarc._from_domain.cache_info().currsize
    assert dmarc.from_domain(long) == dmarc.from_domain(long) == f"{number}.example.org"
    assert len(parsed) == 3  # a long value is parsed each time: it is not kept
    assert dmarc._from_domain.cache_info().currsize == size
    assert dmarc.from_domain("a@x.example, b@y.example") is None


def test_memoised_dmarc_helpers_answer_as_before() -> None:
    # Twice: the second answer comes from the memo (a long record is parsed each time, not kept).
    for text in ("v=DMARC1; p=reject; pct=50", "v=DMARC1; p=reject; pct=50; rua=mailto:" + "r" * 2000 + "@example.org"):
        assert dmarc.parse_record(text) == dmarc.parse_record(text) == dmarc.Record("reject", "reject", 50)
    assert dmarc.parse_record("v=DMARC1; p=bogus") is None
    assert dmarc.org_domain("A.B.Example.CO.UK.") == "example.co.uk"
    assert dmarc.org_domain("x" * 2000 + ".example.org") == "example.org"


class Probe(Check):
    """Records the thread its end-of-message hook ran in."""

    name: ClassVar[str] = "probe"
    ran: ClassVar[dict[str, str]] = {}

    def __init__(self, services: Any, label: str, waits: bool) -> None:
        super().__init__(services)
        self.label = label
        self.waits = waits

    def eom_waits(self, envelope: Envelope) -> bool:
        return self.waits

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        Probe.ran[self.label] = threading.current_thread().name
        return [Hit(self.label)]


def test_only_waiting_checks_go_to_the_pool_and_hits_keep_their_order(tmp_path: Path) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n')
    services = build(load_config(conf))
    probes = [Probe(services, "W1", True), Probe(services, "C1", False), Probe(services, "W2", True), Probe(services, "C2", False), Probe(services, "W3", True)]
    services.checks = list(probes)
    pipeline = Pipeline(services, keep_log=False)
    try:
        envelope = envelope_of(MESSAGE)
        hits = pipeline._eom_tier(Session(client_addr="192.0.2.7"), envelope, probes)
    finally:
        pipeline.shutdown()
    here = threading.current_thread().name
    assert Probe.ran["C1"] == Probe.ran["C2"] == Probe.ran["W3"] == here
    assert Probe.ran["W1"] != here and Probe.ran["W2"] != here
    # As when every check but the last ran in the pool: the others' hits in reverse order, the last one's last.
    assert [h.symbol for h in hits] == ["C2", "W2", "C1", "W1", "W3"]


def test_header_bytes_are_built_once_until_a_header_arrives(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[bytes] = []
    real = model._crlf

    def counting(text: bytes) -> bytes:
        built.append(text)
        return real(text)

    monkeypatch.setattr(model, "_crlf", counting)
    envelope = Envelope(spool=Spool(1024))
    envelope.headers.append(("Subject", b"hi"))
    envelope.raw_headers.append(b"Subject: hi")
    first = envelope.header_bytes
    assert envelope.header_bytes is first and envelope.size == len(first)
    assert len(built) == 1
    envelope.headers.append(("X-Folded", b"a\n b"))
    envelope.raw_headers.append(b"X-Folded: a\n b")
    assert envelope.header_bytes == b"Subject: hi\r\nX-Folded: a\r\n b\r\n\r\n"
    envelope.headers.append(("To", b"c@example.org"))  # no verbatim copy: built from the parsed headers
    assert envelope.header_bytes == b"Subject: hi\r\nX-Folded: a\r\n b\r\nTo: c@example.org\r\n\r\n"


def test_dkim_and_arc_wait_only_for_a_signature_or_a_chain(tmp_path: Path) -> None:
    conf = tmp_path / "milter.conf"
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "local.toml").write_text("[[rule]]\nname = \"BODY_X\"\nbody = 'x'\n")  # custom rules run only with a rule
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n[rules]\ndir = "{tmp_path}/rules"\n')
    services = build(load_config(conf))
    checks = {c.name: c for c in services.checks}
    pipeline = Pipeline(services, keep_log=False)
    try:
        plain = envelope_of(MESSAGE)
        signed = envelope_of(b"DKIM-Signature: v=1; d=example.org\r\nARC-Seal: i=1\r\n" + MESSAGE)
        assert [pipeline._waits(checks[n], plain) for n in ("dkim", "arc", "attachments", "custom", "uribl")] == [False, False, False, False, True]
        assert [pipeline._waits(checks[n], signed) for n in ("dkim", "arc", "attachments", "custom", "uribl")] == [True, True, False, False, True]
    finally:
        pipeline.shutdown()


# A body that holds an attachment for any reading that takes the message as multipart (boundary "b").
EXE_BODY = b"--b\r\nContent-Type: application/octet-stream; name=\"a.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAA=\r\n--b--\r\n"
TYPES = [
    None, b"text/plain", b"text/plain; charset=us-ascii", b"TEXT/HTML;\r\n\tcharset=\"utf-8\"", b"text/plain; charset=utf-8;",
    b"text/plain; name=\"a.exe\"", b"text/plain; charset=us-ascii; name=a.exe", b"multipart/mixed; boundary=b", b"application/octet-stream; name=a.exe",
    b"text/plain; name*=us-ascii''a.exe", b"message/rfc822", b"text", b"text/plain; charset=us-ascii (comment) ; name=a.exe",
]
DISPOSITIONS = [None, b"attachment; filename=a.exe", b"inline", b"attachment"]


def headers_and_raw(ctypes: list[bytes | None], disposition: bytes | None, body: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    headers: list[tuple[str, bytes]] = [("From", b"a@example.org"), ("Subject", b"hi")]
    headers += [("Content-Type", c) for c in ctypes if c is not None]
    if disposition is not None:
        headers.append(("Content-Disposition", disposition))
    return headers, b"".join(n.encode() + b": " + v + b"\r\n" for n, v in headers) + b"\r\n" + body


def test_a_single_plain_text_part_is_judged_without_parsing_and_finds_what_parsing_finds() -> None:
    from milterd.checks.attachments import single_plain_text

    fast = 0
    for first in TYPES:
        for second in (None, *TYPES[1:4]):
            for disposition in DISPOSITIONS:
                for body in (EXE_BODY, b"TVqQAAMAAAA=\r\n"):
                    headers, raw = headers_and_raw([first, second], disposition, body)
                    if single_plain_text(headers):
                        fast += 1
                        assert [a.filename for a in attachments([raw])] == [], raw
    assert fast == 2 * (1 + 3 + 4)  # no Content-Disposition and no type, or one plain text type (first or second), either body
    assert not single_plain_text([("Content-Type", b"text/plain"), ("content-type", b"text/plain")])
    assert not single_plain_text([("Content-Type", b"text/plain; name=\"invoice.pdf.exe\"")])
    assert not single_plain_text([("CONTENT-DISPOSITION", b"inline")])
    assert single_plain_text([("Content-Type", b" text/plain;\n\tcharset=\"iso-8859-1\"")])


def test_the_attachment_check_still_flags_a_named_single_part(tmp_path: Path) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n')
    services = build(load_config(conf))
    check = next(c for c in services.checks if c.name == "attachments")
    plain = envelope_of(b"From: a@example.org\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nTVqQAAMAAAA=\r\n")
    named = envelope_of(b"From: a@example.org\r\nContent-Type: text/plain; name=\"a.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAA=\r\n")
    assert list(check.on_eom(Session(client_addr="192.0.2.7"), plain)) == []
    assert [h.symbol for h in check.on_eom(Session(client_addr="192.0.2.7"), named)] == ["ATTACH_BANNED"]


def test_header_counts_and_raw_bytes_are_judged_as_before(tmp_path: Path) -> None:
    from milterd.checks.headers import SINGLE

    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n')
    services = build(load_config(conf))
    check: Any = next(c for c in services.checks if c.name == "headers")

    def before(envelope: Envelope) -> list[Hit]:
        # The two judges as they were: header_count once per name, a generator over every byte.
        hits = []
        if envelope.header_count("From") == 0:
            hits.append(Hit("HDR_FROM_MISSING"))
        elif envelope.header_count("From") > 1:
            hits.append(Hit("HDR_FROM_MULTIPLE", detail=str(envelope.header_count("From"))))
        duplicates = [name for name in SINGLE if name != "From" and envelope.header_count(name) > 1]
        if duplicates:
            hits.append(Hit("HDR_DUPLICATE", detail=", ".join(duplicates)))
        if envelope.header_count("Date") == 0:
            hits.append(Hit("HDR_DATE_MISSING"))
        if envelope.header_count("Message-ID") == 0:
            hits.append(Hit("HDR_MSGID_MISSING"))
        raw = [name for name, value in envelope.headers if any(byte >= 0x80 for byte in value)]
        if raw and not any(key.upper() == "SMTPUTF8" for key in envelope.mail_args):
            hits.append(Hit("HDR_8BIT", detail=", ".join(raw[:5])))
        return hits

    rnd = random.Random(5322)
    names = ["From", "FROM", "to", "Cc", "Date", "date", "Message-ID", "message-id", "Subject", "Received", "X-Thing", "Reply-To", "References"]
    values = [b"a@example.org", b"caf\xc3\xa9", b"\x7f plain", b"\x80", b"", b"x\xff y"]
    flagged = 0
    for _ in range(3000):
        envelope = Envelope(spool=Spool(1024))
        envelope.headers.extend((rnd.choice(names), rnd.choice(values)) for _ in range(rnd.randint(0, 12)))
        envelope.mail_args = {"SMTPUTF8": ""} if rnd.random() < 0.2 else {}
        after = check._counts(envelope) + [h for h in check._bytes(envelope) if h.symbol != "HDR_NUL"]
        assert after == before(envelope)
        flagged += bool(after)
    assert flagged > 1000


def test_a_client_address_is_reversed_once_for_every_dns_list(monkeypatch: pytest.MonkeyPatch) -> None:
    import milterd.dns as dns

    parsed = count_ip_parses(monkeypatch, dns.ipaddress)
    ip = f"198.51.{random.randrange(256)}.{random.randrange(256)}"
    a, b, c, d = ip.split(".")
    assert [dns.dnsbl_name(ip, z) for z in ("zen.example.", "bl.example", ".x.example")] == [f"{d}.{c}.{b}.{a}.{z}" for z in ("zen.example", "bl.example", "x.example")]
    assert parsed == [ip]
    assert dns.dnsbl_name("::ffff:" + ip, "bl.example") == f"{d}.{c}.{b}.{a}.bl.example"
    assert dns.dnsbl_name("not an address", "bl.example") is None
    assert dns.dnsbl_name("1" * 100, "bl.example") is None  # too long to be kept, still answered
    size = dns._reversed_address.cache_info().currsize
    dns.dnsbl_name("2" * 100, "bl.example")
    assert dns._reversed_address.cache_info().currsize == size


def test_uribl_waits_only_for_lookups_not_in_the_cache(tmp_path: Path) -> None:
    from milterd.checks.uribl import query_name
    from milterd.dns import Answer

    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n')
    services = build(load_config(conf))
    uribl = next(c for c in services.checks if c.name == "uribl")
    pipeline = Pipeline(services, keep_log=False)
    try:
        envelope = envelope_of(MESSAGE)
        names = [query_name(target, zone) for zone, target in uribl._queries(envelope)]
        assert names[0] == "one.example.dbl.spamhaus.org" and "two.example.dbl.spamhaus.org" in names
        assert pipeline._waits(uribl, envelope)  # nothing cached yet
        for name in names[:-1]:
            services.resolver.cache.put((name, "A"), Answer(name, "A", "nxdomain", ttl=60.0))
        assert pipeline._waits(uribl, envelope_of(MESSAGE))  # one lookup left
        services.resolver.cache.put((names[-1], "A"), Answer(names[-1], "A", "nxdomain", ttl=60.0))
        fresh = envelope_of(MESSAGE)
        assert not pipeline._waits(uribl, fresh)
        assert list(uribl.on_eom(Session(client_addr="192.0.2.7"), fresh)) == []  # answered from the cache
        listed = names[0]
        services.resolver.cache.put((listed, "A"), Answer(listed, "A", "ok", ("127.0.1.2",), ttl=60.0))
        hits = list(uribl.on_eom(Session(client_addr="192.0.2.7"), envelope_of(MESSAGE)))
        assert [(h.symbol, h.detail) for h in hits] == [("URIBL_DBL_SPAM", "one.example (127.0.1.2)")]
        assert not pipeline._waits(uribl, envelope_of(b"From: a@example.org\r\n\r\nno links here\r\n"))
    finally:
        pipeline.shutdown()


def test_dkim_waits_only_for_keys_not_in_the_cache(tmp_path: Path) -> None:
    from milterd.checks.dkim import key_names
    from milterd.dns import Answer

    headers = [("DKIM-Signature", b"v=1; a=rsa-sha256; d=Example.ORG;\r\n\ts=sel\r\n 1; b=AAAA"), ("Subject", b"x"), ("dkim-signature", b"v=1; d=other.example; s=k2; b=BB")]
    assert key_names(headers, 5) == ["sel1._domainkey.Example.ORG", "k2._domainkey.other.example"]
    assert key_names(headers, 1) == ["sel1._domainkey.Example.ORG"]
    assert key_names([("DKIM-Signature", b"v=1; d=example.org")], 5) is None  # no s=: the pool, as before
    assert key_names([("DKIM-Signature", "v=1; d=ex\u00e4mple.org; s=a".encode())], 5) is None
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n')
    services = build(load_config(conf))
    dkim_check = next(c for c in services.checks if c.name == "dkim")
    pipeline = Pipeline(services, keep_log=False)
    try:
        signed = envelope_of(b"DKIM-Signature: v=1; d=example.org; s=sel; b=AAAA\r\nDKIM-Signature: v=1; d=example.net; s=k; b=BB\r\n" + MESSAGE)
        assert pipeline._waits(dkim_check, signed)
        services.resolver.cache.put(("sel._domainkey.example.org", "TXT"), Answer("sel._domainkey.example.org", "TXT", "ok", ("v=DKIM1; p=x",), ttl=60.0))
        assert pipeline._waits(dkim_check, signed)  # the second key is not cached
        services.resolver.cache.put(("k._domainkey.example.net", "TXT"), Answer("k._domainkey.example.net", "TXT", "nxdomain", ttl=60.0))
        assert not pipeline._waits(dkim_check, signed)
        assert not pipeline._waits(dkim_check, envelope_of(MESSAGE))  # unsigned
    finally:
        pipeline.shutdown()
