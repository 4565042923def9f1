"""dkimpy's message parse, b= removal and header unfolding (milterd/dkimfast.py): dkimpy's output for every input."""

from __future__ import annotations

import random
from typing import Any, Callable

import dkim
import dkim.canonicalization
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from milterd import dkimfast
from milterd.checks.dkim import DnsRecorder, verify_all
from milterd.dns import Answer

PIECES = [
    b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r", b"\r\n\r\n", b"\n\n", b" ", b"\t", b":", b"a", b"Subject", b"From ", b"From:",
    b"X-H: v", b"\x00", b"\xe9\xff", b"\x7f", b"b=", b";", b"  x", b"\tcont", b"body line", b"=\r\n",
]
HOSTILE = [
    b"", b"\r", b"\n", b"\r\n", b"\n\n", b"\r\n\r\n", b"\r\r\n", b"\n\r\n", b"\r\n\n", b":", b"a:", b"a:\r\n", b"a:\r", b"a:\r\r",
    b"a: b\r\n\r\n", b"a: b\n\nbody\nmore\r\nend", b"a: b\r\n\r\nbody\rlone cr\r\r\nx\n", b"a: b\r\n", b"a: b\n",
    b" continued first\r\na: b\r\n\r\n", b"\tcontinued\r\n", b"From alice Sat Nov 28\r\na: b\r\n\r\nbody\r\n",
    b"From alice\r\n\tcont\r\n\r\n", b"no colon here\r\n\r\nbody", b"a: b\r\n\x00bad\r\n\r\n", b"\x00: v\r\n\r\n",
    b"a: b\r\n c\r\n\td\r\n\r\n\r\n\r\n", b"a: b\r\n\r\n\r\n", b"a: \xe9\xff\r\n\r\n\xe9\n\xff\r", b"a:b\r\r\n\r\nx",
    b"a:b\r\n\r\r\nx", b"a:b\n\r\rx", b"::\r\n\r\n", b"a b: c\r\n\r\n", b"a: b\r\nFrom x\r\n\r\n", b"\r\na: b\r\n",
    b"\na: b\n", b"a: b\r\n\r", b"a: b\r\n\n\r\n", b"a: b\n\r\n\n",
]


def outcome(function: Callable[[Any], Any], argument: Any) -> Any:
    try:
        return function(argument)
    except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
        return (type(exc), str(exc))


def assert_same_parse(message: bytes) -> None:
    assert outcome(dkimfast.rfc822_parse, message) == outcome(dkimfast.PURE_RFC822_PARSE, message), message


def test_the_parse_is_dkimpys_on_hostile_messages() -> None:
    for message in HOSTILE:
        assert_same_parse(message)
    assert isinstance(outcome(dkimfast.rfc822_parse, b" first\r\n"), tuple) and outcome(dkimfast.rfc822_parse, b" first\r\n")[0] is IndexError
    assert outcome(dkimfast.rfc822_parse, b"bad line\r\n")[0] is dkim.MessageFormatError


def test_the_parse_is_dkimpys_on_random_messages() -> None:
    rnd = random.Random(822)
    for _ in range(40000):
        message = b"".join(rnd.choice(PIECES) for _ in range(rnd.randint(0, 20)))
        assert_same_parse(message)
    for _ in range(30000):
        message = bytes(rnd.choice(b"\r\n\r\n \t:aF\x00\xff") for _ in range(rnd.randint(0, 14)))
        assert_same_parse(message)


def test_the_parse_is_dkimpys_on_mail_like_messages() -> None:
    rnd = random.Random(5322)
    ends = [b"\r\n"] * 8 + [b"\n", b"\r\r\n", b"\r"]
    for _ in range(3000):
        headers = [rnd.choice([b"From: a@b", b"Subject: hi", b" folded", b"\tmore", b"X-Y:z", b"From x", b"DKIM-Signature: v=1; b=AB\r\n C"])]
        headers += [rnd.choice([b"To: c@d", b" folded", b"Received: from x", b"x:\xe9"]) for _ in range(rnd.randint(0, 6))]
        body = [rnd.choice([b"", b"line", b" x ", b"\x00", b"\xff\xfe", b"From me", b"."]) for _ in range(rnd.randint(0, 8))]
        message = b"".join(h + rnd.choice(ends) for h in headers) + rnd.choice([b"\r\n", b"\n", b""]) + b"".join(b + rnd.choice(ends) for b in body)
        assert_same_parse(message)


def test_a_crlf_body_is_returned_as_it_is_and_a_bare_lf_one_rewritten() -> None:
    body = b"Hello,\r\n\r\nline\r\n" * 100
    headers, parsed = dkimfast.rfc822_parse(b"From: a@b\r\nSubject: x\r\n\r\n" + body)
    assert headers == [[b"From", b" a@b\r\n"], [b"Subject", b" x\r\n"]] and parsed == body
    assert dkimfast.rfc822_parse(b"From: a@b\n\nx\ny\r\nz\r\r\nw\r")[1] == b"x\r\ny\r\nz\r\r\nw\r"
    assert dkimfast.rfc822_parse(bytearray(b"a: b\n\nc\n")) == dkimfast.PURE_RFC822_PARSE(bytearray(b"a: b\n\nc\n"))  # not bytes: dkimpy's


def btag_cases(rnd: random.Random) -> list[bytes]:
    pieces = [b" b=", b";b=", b"\tb =", b"b=", b" b\r\n =", b" b \r\n\t=", b"AB+/", b"==", b" ", b"\t", b"\r\n", b"\n", b"\r", b"\r\n ", b";", b"bh=", b"x", b"\x0b", b"\x0c", b"\x00"]
    return [b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 14))) for _ in range(40000)]


def test_the_btag_pattern_removes_what_dkimpys_removes() -> None:
    rnd = random.Random(6376)
    for value in btag_cases(rnd):
        assert dkimfast.RE_BTAG.sub(b"\\1", value) == dkimfast.PURE_RE_BTAG.sub(b"\\1", value), value
        fast, pure = dkimfast.RE_BTAG.search(value), dkimfast.PURE_RE_BTAG.search(value)
        assert (fast and (fast.span(), fast.groups())) == (pure and (pure.span(), pure.groups())), value
    signature = b" v=1; a=rsa-sha256; d=example.org;\r\n bh=PXN4NM/5WSd9=;\r\n b=EypIBLHK/29+A\r\n T1p6yBQ\r\n 2Kh20==\r\n"
    assert dkimfast.RE_BTAG.sub(b"\\1", signature) == dkimfast.PURE_RE_BTAG.sub(b"\\1", signature) == signature.split(b" b=")[0] + b" b="


def test_unfolding_is_dkimpys() -> None:
    rnd = random.Random(4)
    pieces = [b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r", b" ", b"\t", b"a", b"\x00"]
    for _ in range(30000):
        value = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))
        assert dkimfast.unfold_header_value(value) == dkimfast.PURE_UNFOLD(value), value


def test_install_puts_the_parse_pattern_and_unfolding_in_place() -> None:
    dkimfast.install()
    assert dkim.rfc822_parse is dkimfast.rfc822_parse and dkim.RE_BTAG is dkimfast.RE_BTAG
    assert dkim.canonicalization.unfold_header_value is dkimfast.unfold_header_value
    assert dkimfast.PURE_RFC822_PARSE.__module__ == "dkim" and dkimfast.PURE_UNFOLD.__module__ == "dkim.canonicalization"


def test_relaxed_header_canonicalisation_is_dkimpys() -> None:
    rnd = random.Random(6376_342)
    pieces = [b"\r\n", b"\n", b"\r", b" ", b"\t", b"  ", b"a", b"B", b"\x00", b"\xe9", b"\x0b", b"\x0c", b"\r\n\t", b":"]
    for _ in range(3000):
        headers = [
            [b"".join(rnd.choice([b"Subject", b"X-A ", b"FROM\t", b"dkim-Signature", b"\xc9"]) for _ in range(rnd.randint(1, 2))), b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))]
            for _ in range(rnd.randint(0, 5))
        ]
        assert dkimfast.relaxed_headers(headers) == dkimfast.PURE_RELAXED_HEADERS(headers), headers
    assert outcome(lambda h: dkimfast.relaxed_headers(h), [(b"A", "text")]) == outcome(lambda h: dkimfast.PURE_RELAXED_HEADERS(h), [(b"A", "text")])


def test_tag_value_parse_is_dkimpys() -> None:
    rnd = random.Random(32)
    pieces = [b"a", b"Z", b"1", b"_", b"=", b";", b" ", b"\t", b"\r\n ", b"v=1", b"b=", b"\xe9", b"\x00", b"-", b"=="]
    for _ in range(40000):
        tag_list = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))
        assert outcome(dkimfast.parse_tag_value, tag_list) == outcome(dkimfast.PURE_PARSE_TAG_VALUE, tag_list), tag_list
    for odd in (b"", b";", b" ; ", b"a=1;a=2", b"1a=2", b"=x", b"a", b"\xe9=1", b"_a=1", b"a_1=x;", "v=1; a=b", bytearray(b"a=1")):
        assert outcome(dkimfast.parse_tag_value, odd) == outcome(dkimfast.PURE_PARSE_TAG_VALUE, odd), odd


def dkimpys_own(m: pytest.MonkeyPatch) -> None:
    """Every function dkimfast replaces back to dkimpy's, and install() a no-op (as with a dkimpy
    release dkimfast was not checked against)."""
    m.setattr(dkimfast, "checked_release", lambda: False)
    m.setattr(dkim, "RSASSA_PKCS1_v1_5_verify", dkimfast.PURE_PYTHON)
    m.setattr(dkim.canonicalization, "compress_whitespace", dkimfast.PURE_COMPRESS)
    m.setattr(dkim.canonicalization, "strip_trailing_whitespace", dkimfast.PURE_STRIP)
    m.setattr(dkim.canonicalization, "unfold_header_value", dkimfast.PURE_UNFOLD)
    m.setattr(dkim.canonicalization.Relaxed, "canonicalize_headers", staticmethod(dkimfast.PURE_RELAXED_HEADERS))
    m.setattr(dkim, "evaluate_pk", dkimfast.PURE_EVALUATE_PK)
    m.setattr(dkim, "rfc822_parse", dkimfast.PURE_RFC822_PARSE)
    m.setattr(dkim, "RE_BTAG", dkimfast.PURE_RE_BTAG)
    m.setattr(dkim, "parse_tag_value", dkimfast.PURE_PARSE_TAG_VALUE)
    m.setattr(dkim.DKIM, "verify_sig_process", dkimfast.PURE_VERIFY_SIG_PROCESS)
    m.setattr(dkim.DKIM, "verify_headerprep", dkimfast.PURE_VERIFY_HEADERPREP)
    m.setattr(dkim, "select_headers", dkimfast.PURE_SELECT_HEADERS)


class Txt:
    def __init__(self, text: bytes) -> None:
        rdata = type("Rdata", (), {"strings": (text,)})()
        self.answer = Answer("sel._domainkey.example.org", "TXT", "ok", (text.decode(),), (rdata,), 60.0)

    def txt(self, name: str, deadline: float) -> Answer:
        return self.answer if name == "sel._domainkey.example.org" else Answer(name, "TXT", "nxdomain")


def test_verdicts_are_dkimpys_on_changed_signed_messages(monkeypatch: pytest.MonkeyPatch) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    resolver = Txt(b"v=DKIM1; k=rsa; p=" + __import__("base64").b64encode(public))
    message = (
        b"From: A <a@example.org>\r\nTo: b@example.com\r\nSubject: a  folded\r\n\t subject \r\nDate: today\r\n"
        b"X-Tag: one\r\nX-Tag: two\r\n\r\nHello \t there  \r\n\r\nbody\r\n\r\n"
    )
    rnd = random.Random(1)
    raws = []
    for canon in ((b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple")):
        for include in (None, [b"from", b"to", b"subject", b"x-tag", b"x-tag", b"x-tag", b"cc"]):
            raws.append(dkim.sign(message, b"sel", b"example.org", private, canonicalize=canon, include_headers=include) + message)
    raws.append(dkim.sign(message, b"sel", b"example.org", private, length=True) + message + b"appended\r\n")
    changes = [
        lambda r: r, lambda r: r.replace(b"\r\n", b"\n"), lambda r: r.replace(b"Subject: a  folded", b"Subject: a folded"),
        lambda r: r.replace(b"there  ", b"there"), lambda r: r.replace(b"there", b"there\r"), lambda r: b"From: x@evil.test\r\n" + r,
        lambda r: r + b"\n\n", lambda r: r.replace(b"X-Tag: two", b"X-Tag: three"), lambda r: r.replace(b"\r\n\r\n", b"\r\n \r\n", 1),
        lambda r: r.replace(b"b=", b"b =", 1), lambda r: r.replace(b"; b=", b";b=", 1), lambda r: b"From someone\r\n" + r,
        lambda r: r.replace(b"Date: today\r\n", b"Date: today\r\nCc: new\r\n"), lambda r: r[: rnd.randrange(len(r))],
    ]
    seen: set[str] = set()
    for raw in raws:
        for change in changes:
            changed = change(raw)
            with monkeypatch.context() as m:
                dkimpys_own(m)
                pure = [(r.result, r.reason) for r in verify_all(changed, DnsRecorder(resolver, 1e18), 5, 1024)]
            dkimfast.install()
            fast = [(r.result, r.reason) for r in verify_all(changed, DnsRecorder(resolver, 1e18), 5, 1024)]
            assert fast == pure, changed
            seen.update(result for result, _ in fast)
    assert [r.result for r in verify_all(raws[0], DnsRecorder(resolver, 1e18), 5, 1024)] == ["pass"]
    assert seen == {"pass", "fail", "permerror"}
    verdicts = {r.result for raw in raws[:6] for r in verify_all(raw, DnsRecorder(resolver, 1e18), 5, 1024)}
    assert verdicts == {"pass"}
