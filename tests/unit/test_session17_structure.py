"""Session 17 structure cleanups: one DNS form of a domain (:func:`milterd.dns.domain_name`), the
charset of a part read through ``mimeparams.safely``, and the ARC-sealed copy built from the
delivered header fields (:func:`milterd.checks.dkim.fields_as_delivered`) instead of re-splitting
the header section."""

from __future__ import annotations

import email.message
from typing import Any

import pytest

from milterd import dkimsign
from milterd.checks.arc import message_for_seal
from milterd.checks.dkim import fields_as_delivered, header_section_as_delivered
from milterd.checks.dmarc import _shown_domains, aligned, from_domains, org_domain
from milterd.checks.localdomains import LocalSpoof
from milterd.config import Config
from milterd.content.mimetext import decode_part
from milterd.dns import a_label, cache_key, domain_name, fold_case
from milterd.message.model import Envelope, HeaderEdit, Session, Spool
from milterd.services import Services

#: Names of every kind: ASCII with capitals and a trailing dot, U-labels, a capital final Sigma,
#: the IDNA deviations, and names IDNA refuses (a label too long once encoded, a lone surrogate).
NAMES = [
    "Example.ORG.", "example.org", "", ".", "Bücher.Example.", "faß.example", "example.ΤΕΣΤΣ", "ΤΕΣΤΣ-1.example", "τεστς.example",
    "x" * 70 + "ü.example", "\udcff.example", "xn--bcher-kva.example.", "ﬀ.example", "bank\u200d.example",
]


# --- 1. domain_name -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_domain_name_is_the_normalisation_the_call_sites_wrote_out(name: str) -> None:
    assert domain_name(name) == a_label(fold_case(name).rstrip("."))


def test_domain_name_examples() -> None:
    assert domain_name("Bücher.Example.") == "xn--bcher-kva.example"
    assert domain_name("EXAMPLE.org.") == "example.org"
    assert domain_name("faß.example") == "xn--fa-hia.example"  # IDNA2008, not IDNA2003's fass.example
    # A capital final Sigma folds to σ (as UTS #46 maps it), not str.lower()'s ς: another domain.
    assert "example.ΤΕΣΤΣ".lower() == "example.τεστς"
    assert domain_name("example.ΤΕΣΤΣ") == domain_name("example.τεστσ") != domain_name("example.τεστς")
    assert domain_name("x" * 70 + "ü.example") is None
    assert domain_name("\udcff.example") is None


@pytest.mark.parametrize("name", NAMES)
def test_cache_key_unchanged(name: str) -> None:
    old = fold_case(name).rstrip(".")
    if not old.isascii():
        old = a_label(old) or old
    assert cache_key(name, "mx") == (old, "MX")


@pytest.mark.parametrize("domain", NAMES)
@pytest.mark.parametrize("from_domain", ["example.org", "Bücher.example", "xn--bcher-kva.example", "\udcff.example", "τεστσ.example"])
def test_aligned_unchanged(domain: str, from_domain: str) -> None:
    def old(a: str, b: str, mode: str) -> bool:
        a, b = fold_case(a).rstrip("."), fold_case(b).rstrip(".")
        a, b = a_label(a) or a, a_label(b) or b
        if not a or not b:
            return False
        return a == b or (mode != "s" and org_domain(a) == org_domain(b))

    for mode in ("s", "r"):
        assert aligned(domain, from_domain, mode) == old(domain, from_domain, mode)


@pytest.mark.parametrize("text", ["Bank.Example.", "bank.example\x7f", "BANK.example!", "example.ΤΕΣΤΣ", " bücher.example ", "\udcff", "İx.example>"])
def test_shown_domain_unchanged(text: str) -> None:
    import unicodedata

    from milterd.checks.dmarc import _DOMAIN, _DOMAIN_HEAD

    def old(text: str) -> str | None:
        domain = a_label(fold_case(text.strip()).rstrip("."))
        if domain and _DOMAIN.fullmatch(domain):
            return domain
        shown = fold_case("".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cf")).strip())
        head = _DOMAIN_HEAD.match(shown)
        domain = a_label(head.group().rstrip(".")) if head else None
        return domain if domain and _DOMAIN.fullmatch(domain) else None

    expected = old(text)
    assert _shown_domains(text) == ((expected,) if expected else ())  # no look-alike among these: one reading


def test_keys_for_finds_the_a_label_domain_of_a_folded_u_label_name() -> None:
    key = dkimsign.SigningKey("xn--bcher-kva.example", "sel", "rsa", b"")
    assert dkimsign.keys_for([key], "Mail.BÜCHER.example.") == [key]
    assert dkimsign.keys_for([key], "\udcff.example") == []


def local_spoof(domains: list[str]) -> LocalSpoof:
    config = Config().with_changes({"milter.hostname": "mx.test", "dns.nameservers": ["127.0.0.1:9"], "milter.local_domains": domains})
    return LocalSpoof(Services(config=config))


def from_hits(check: LocalSpoof, value: str) -> list[str]:
    envelope = Envelope(spool=Spool(1024), headers=[("From", value.encode())])
    envelope.sender = "x@evil.example"
    return [hit.symbol for hit in check.on_eoh(Session(client_addr="198.51.100.7", family="inet"), envelope)]


@pytest.mark.parametrize("domain", ["example.ΤΕΣΤΣ", "ΤΕΣΤΣ-1.example"])
def test_local_domain_with_a_capital_final_sigma_is_folded_as_from_domains_fold_it(domain: str) -> None:
    """Fixed: local_domains were lower-cased with str.lower() before a_label, which writes a final Σ
    as ς ("example.ΤΕΣΤΣ" became example.τεστς's A-labels), while from_domains folds a From domain
    letter by letter (example.τεστσ's): the local domain written as configured was not recognised
    in From, and the other domain, with ς, was."""
    check = local_spoof([domain])
    folded, lowered = fold_case(domain), domain.lower()
    assert "σ" in folded and "ς" in lowered  # the case the fix is about
    assert from_domains([f"ceo@{domain}"]) == (domain_name(folded),)
    assert from_hits(check, f"CEO <ceo@{domain}>") == ["LOCAL_FROM_SPOOF"]
    assert from_hits(check, f"ceo@{folded}") == ["LOCAL_FROM_SPOOF"]
    assert from_hits(check, f"ceo@{lowered}") == []


def test_local_domains_in_any_form_match_their_a_label_from() -> None:
    check = local_spoof(["Example.ORG.", "BÜCHER.example", "x" * 70 + "ü.example"])
    assert check.a_label_domains == {"example.org", "xn--bcher-kva.example"}  # a name IDNA refuses matches no From
    for value in ("a@example.org", "a@bücher.example", "a@xn--bcher-kva.example"):
        assert from_hits(check, value) == ["LOCAL_FROM_SPOOF"], value
    assert from_hits(check, "a@example.net") == []


# --- 2. decode_part reads the charset through safely --------------------------------------------


class RaisingCharset(email.message.Message):
    def get_content_charset(self, failobj: Any = None) -> Any:
        raise ValueError("a NUL in the charset name")


@pytest.mark.parametrize(("payload", "text"), [("é".encode(), "é"), (b"\xe9t\xe9", "été")])
def test_decode_part_reads_a_charset_that_raises_as_none(payload: bytes, text: str) -> None:
    part = RaisingCharset()
    part.set_payload(payload)
    assert decode_part(part) == text  # UTF-8, else Latin-1


def test_decode_part_uses_the_charset() -> None:
    part = email.message.Message()
    part["Content-Type"] = 'text/plain; charset="iso-8859-7"'
    part.set_payload("\xe1\xe2".encode("latin-1"))
    assert decode_part(part) == "αβ"


# --- 3. the sealed copy from fields_as_delivered --------------------------------------------------


def raw_envelope(fields: list[tuple[str, bytes]], body: bytes = b"body\r\n") -> Envelope:
    """As the adapter keeps headers with HDR_LEADSPC: name, colon, the value as Postfix passes it (LF folds)."""
    envelope = Envelope(spool=Spool(1 << 20))
    for name, raw in fields:
        envelope.raw_headers.append(name.encode() + b":" + raw)
        envelope.headers.append((name, raw[1:] if raw.startswith(b" ") else raw))
    envelope.spool.write(body)
    return envelope


def plain_envelope(fields: list[tuple[str, bytes]], body: bytes = b"body\r\n") -> Envelope:
    envelope = Envelope(spool=Spool(1 << 20))
    envelope.headers.extend(fields)
    envelope.spool.write(body)
    return envelope


FOLDED = [
    ("From", b" Alice <alice@example.org>"), ("Subject", b" a long\n\tsubject"),
    ("Authentication-Results", b" mx.test;\n\tspf=pass smtp.mailfrom=example.org"),  # forged, our id: dropped
    ("Authentication-Results", b" other.example; spf=pass"),
    ("AUTHENTICATION-RESULTS ", b" MX.TEST; dkim=pass"),  # forged too, the name in capitals with a space before the colon
    ("Received", b" from a\n by b\n\twith c"), ("X-Empty", b""),
]
PLAIN = [("From", b"a@example.org"), ("Authentication-Results", b"mx.test; none"), ("Subject", b"hi\r\n there"), ("X-Utf8", "é\n\tü".encode())]


def cases() -> dict[str, tuple[Envelope, list[HeaderEdit]]]:
    return {
        "folded_forged_no_edit": (raw_envelope(FOLDED), []),
        "folded_forged_subject_change": (raw_envelope(FOLDED), [HeaderEdit("change", "Subject", "[SPAM] a long\n\tsubject", 1)]),
        "subject_add_bare_break": (raw_envelope(FOLDED[:1]), [HeaderEdit("add", "Subject", "[SPAM] a\nb")]),
        "second_subject_change": (raw_envelope([("Subject", b" one"), ("Subject", b" two"), ("To", b" b@example.org")]),
                                  [HeaderEdit("change", "Subject", "[SPAM] two", 2), HeaderEdit("change", "Subject", "nope", 3)]),
        "plain_no_edit": (plain_envelope(PLAIN), []),
        "plain_subject_change": (plain_envelope(PLAIN), [HeaderEdit("change", "Subject", "[SPAM] hi\n there", 1)]),
        "no_headers": (plain_envelope([]), []),
    }


OURS = b"Authentication-Results: X-Test; spf=pass\r\n\tdkim=none\r\n"

#: (message_for_seal, header_section_as_delivered) of each case, as computed by the code before this
#: change (message_for_seal re-split header_section_as_delivered's bytes with a regex); since the 32nd
#: review, what is sealed leaves out every Authentication-Results but ours (no seal covers one).
EXPECTED = {
    "folded_forged_no_edit": (
        OURS + b"From: Alice <alice@example.org>\r\nSubject: a long\r\n\tsubject\r\n"
        b"Received: from a\r\n by b\r\n\twith c\r\nX-Empty:\r\n\r\nbody\r\n",
        b"From: Alice <alice@example.org>\r\nSubject: a long\r\n\tsubject\r\nAuthentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=example.org\r\n"
        b"Authentication-Results: other.example; spf=pass\r\nAUTHENTICATION-RESULTS : MX.TEST; dkim=pass\r\nReceived: from a\r\n by b\r\n\twith c\r\nX-Empty:\r\n\r\n"),
    "folded_forged_subject_change": (
        OURS + b"From: Alice <alice@example.org>\r\nSubject: [SPAM] a long\r\n\tsubject\r\n"
        b"Received: from a\r\n by b\r\n\twith c\r\nX-Empty:\r\n\r\nbody\r\n",
        b"From: Alice <alice@example.org>\r\nSubject: [SPAM] a long\r\n\tsubject\r\nAuthentication-Results: mx.test;\r\n\tspf=pass smtp.mailfrom=example.org\r\n"
        b"Authentication-Results: other.example; spf=pass\r\nAUTHENTICATION-RESULTS : MX.TEST; dkim=pass\r\nReceived: from a\r\n by b\r\n\twith c\r\nX-Empty:\r\n\r\n"),
    "subject_add_bare_break": (
        OURS + b"From: Alice <alice@example.org>\r\nSubject: [SPAM] a\r\n\tb\r\n\r\nbody\r\n",
        b"From: Alice <alice@example.org>\r\nSubject: [SPAM] a\r\n\tb\r\n\r\n"),
    "second_subject_change": (
        OURS + b"Subject: one\r\nSubject: [SPAM] two\r\nTo: b@example.org\r\n\r\nbody\r\n",
        b"Subject: one\r\nSubject: [SPAM] two\r\nTo: b@example.org\r\n\r\n"),
    "plain_no_edit": (
        OURS + b"From: a@example.org\r\nSubject: hi\r\n there\r\nX-Utf8: \xc3\xa9\r\n\t\xc3\xbc\r\n\r\nbody\r\n",
        b"From: a@example.org\r\nAuthentication-Results: mx.test; none\r\nSubject: hi\r\n there\r\nX-Utf8: \xc3\xa9\r\n\t\xc3\xbc\r\n\r\n"),
    "plain_subject_change": (
        OURS + b"From: a@example.org\r\nSubject: [SPAM] hi\r\n there\r\nX-Utf8: \xc3\xa9\r\n\t\xc3\xbc\r\n\r\nbody\r\n",
        b"From: a@example.org\r\nAuthentication-Results: mx.test; none\r\nSubject: [SPAM] hi\r\n there\r\nX-Utf8: \xc3\xa9\r\n\t\xc3\xbc\r\n\r\n"),
    "no_headers": (OURS + b"\r\nbody\r\n", b"\r\n"),
}


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_message_for_seal_is_byte_identical_to_the_re_split_section(case: str) -> None:
    envelope, edits = cases()[case]
    sealed, section = EXPECTED[case]
    assert message_for_seal(envelope, "mx.test", "X-Test; spf=pass\n\tdkim=none", edits) == sealed
    assert header_section_as_delivered(envelope, edits) == section
    # The fields are the section's, each without its CRLF; without edits, those of header_bytes.
    assert b"".join(field + b"\r\n" for field in fields_as_delivered(envelope, edits)) + b"\r\n" == section
    if not edits:
        assert section == envelope.header_bytes
