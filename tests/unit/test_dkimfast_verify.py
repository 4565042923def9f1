"""dkimpy's signature verification steps as milterd/dkimfast.py runs them: dkimpy's verdicts and hashed bytes."""

from __future__ import annotations

import base64
import hashlib
import random
from typing import Any, Iterator

import dkim
import dkim.canonicalization
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from milterd import dkimfast
from milterd.checks.dkim import QUIET, DnsRecorder, verify_all

from .test_dkimfast_parse import Txt, dkimpys_own, outcome


class Recording(dkim.HashThrough):
    """dkimpy's HashThrough, keeping every byte hashed (body and headers) in :data:`HASHED`."""

    def update(self, data: bytes) -> None:
        HASHED.append(data)
        super().update(data)


HASHED: list[bytes] = []


@pytest.fixture(scope="module")
def key() -> Iterator[tuple[bytes, Txt]]:
    private = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption())
    der = private.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    yield pem, Txt(b"v=DKIM1; k=rsa; p=" + base64.b64encode(der))


def run(raw: bytes, resolver: Txt, fast: bool, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Each signature's outcome (result or exception, signed headers, tags) and every byte hashed, fast or dkimpy's own."""
    with monkeypatch.context() as m:
        m.setattr(dkim, "HashThrough", Recording)
        if fast:
            dkimfast.install()
        else:
            dkimpys_own(m)
            m.setattr(dkim.DKIM, "verify_sig_process", dkimfast.PURE_VERIFY_SIG_PROCESS)
            m.setattr(dkim.DKIM, "verify_headerprep", dkimfast.PURE_VERIFY_HEADERPREP)
        assert dkimfast.installed() is fast
        found: list[Any] = []
        try:
            verifier = dkim.DKIM(raw, logger=QUIET, minkey=1024)
        except Exception as exc:  # noqa: BLE001 - the exception is the outcome compared
            return [(type(exc), str(exc))]
        for index in range(4):
            HASHED.clear()
            verifier.signed_headers = verifier.include_headers = verifier.domain = verifier.selector = None
            result = outcome(lambda i: verifier.verify(i, dnsfunc=DnsRecorder(resolver, 1e18)), index)
            signed = [tuple(h) for h in verifier.signed_headers] if verifier.signed_headers is not None else None
            found.append((result, signed, b"".join(HASHED), getattr(verifier, "include_headers", None), verifier.domain, verifier.selector))
        return found


def assert_same(raw: bytes, resolver: Txt, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    pure = run(raw, resolver, False, monkeypatch)
    fast = run(raw, resolver, True, monkeypatch)
    assert fast == pure, raw
    return fast


HEADERS = [
    b"From: A <a@example.org>", b"FROM:\tb@example.org", b"To: c@example.com", b"to:x", b"Subject: a  folded\r\n\t subject \t",
    b"Subject:", b"Date: today", b"X-Tag: one", b"x-tag: two\r\n  more", b"X-Tag:\xe9\xff 8-bit", b"Received: from x\r\n\tby y",
    b"Message-ID: <1@example.org>", b"Cc: d@e", b"X-Empty:", b"X-Lone: a\rb", b"X-Nul: \x00", b"Reply-To: r@s",
]
BODY_LINES = [b"", b"line", b" x ", b"\ttab\t", b"trailing \t ", b"\x00", b"\xe9\xff", b"  ", b"From me", b".", b"a  b\t\tc", b"x\ry"]
INCLUDES = [b"from", b"to", b"subject", b"x-tag", b"cc", b"date", b"absent", b"message-id", b"x-empty", b"reply-to", b"x-lone"]


def random_message(rnd: random.Random) -> bytes:
    headers = [rnd.choice(HEADERS[:2])] + [rnd.choice(HEADERS) for _ in range(rnd.randint(0, 8))]
    rnd.shuffle(headers)
    body = b"".join(rnd.choice(BODY_LINES) + rnd.choice([b"\r\n"] * 6 + [b"\n", b"\r\r\n"]) for _ in range(rnd.randint(0, 10)))
    return b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body + rnd.choice([b"", b"\r\n\r\n", b"tail", b" \r\n"])


def sign(rnd: random.Random, message: bytes, pem: bytes) -> bytes:
    canon = rnd.choice([(b"relaxed", b"relaxed"), (b"simple", b"simple"), (b"relaxed", b"simple"), (b"simple", b"relaxed")])
    include = [b"from"] + [rnd.choice(INCLUDES) for _ in range(rnd.randint(0, 8))]  # repeated and absent names: over-signing
    signature: bytes = dkim.sign(message, b"sel", b"example.org", pem, canonicalize=canon, include_headers=include, length=rnd.random() < 0.3)
    if rnd.random() < 0.5:
        signature = signature.replace(b"\r\n", b"\n")
    return signature


SIGNATURE_CHANGES = [
    lambda s: s, lambda s: s.replace(b"h=", b"h = ", 1), lambda s: s.replace(b"h=from", b"h=From : x-absent : from", 1), lambda s: s.replace(b"h=", b"h=received:RECEIVED:", 1),
    lambda s: s.replace(b"c=", b"c=bogus/", 1), lambda s: s.replace(b"a=rsa-sha256", b"a=rsa-sha1", 1), lambda s: s.replace(b"; b=", b"; b=A", 1),
    lambda s: s.replace(b"bh=", b"bh=AA", 1), lambda s: s.replace(b"l=", b"l=x", 1), lambda s: s.replace(b"t=", b"t=9", 1),
    lambda s: s.replace(b"; h=", b"; x=1; h=", 1), lambda s: s.replace(b"v=1", b"v=2", 1), lambda s: s.replace(b"d=example.org", b"d=ex@mple.org", 1),
    lambda s: s.replace(b"i=@example.org", b"i=@other.org", 1), lambda s: s.replace(b"s=sel", b"s=none", 1), lambda s: s.replace(b"bh=", b"bH=", 1),
    lambda s: s.replace(b"q=dns/txt", b"q=dns", 1), lambda s: s.replace(b"; s=sel", b"", 1), lambda s: s.replace(b"c=", b"cv=fail; c=", 1),
    lambda s: s.replace(b"i=@example.org", b"i=example.org", 1), lambda s: s.replace(b"c=simple/", b"c=relaxed/", 1),
    lambda s: s.replace(b"DKIM-Signature:", b"dkim-signature :", 1),
]
MESSAGE_CHANGES = [
    lambda r: r, lambda r: r.replace(b"\r\n", b"\n"), lambda r: r + b"appended\r\n", lambda r: b"From: x@evil.test\r\n" + r,
    lambda r: b"X-Tag: new\r\nSubject: new\r\n" + r, lambda r: r.replace(b"  ", b" "), lambda r: r.replace(b"\r\n\r\n", b"\r\nCc: added\r\n\r\n", 1),
    lambda r: r.replace(b"\t", b" "), lambda r: r.replace(b"e", b"E", 1),
]


def test_verification_is_dkimpys_on_random_signed_messages(key: tuple[bytes, Txt], monkeypatch: pytest.MonkeyPatch) -> None:
    pem, resolver = key
    rnd = random.Random(6376)
    seen: set[Any] = set()
    for _ in range(250):
        message = random_message(rnd)
        signatures = [sign(rnd, message, pem) for _ in range(rnd.choice([1, 1, 2]))]
        for _ in range(3):
            heads = [rnd.choice(SIGNATURE_CHANGES)(s) for s in signatures]
            raw = rnd.choice(MESSAGE_CHANGES)(b"".join(heads) + message)
            found = assert_same(raw, resolver, monkeypatch)
            seen.update(f[0] if isinstance(f[0], (bool, type)) else f[0][0] for f in found)
    assert {True, False, dkim.ValidationError, dkim.MessageFormatError} <= seen, seen


def test_verification_is_dkimpys_on_hostile_messages(key: tuple[bytes, Txt], monkeypatch: pytest.MonkeyPatch) -> None:
    pem, resolver = key
    base = b"From: a@example.org\r\nSubject: x\r\nX-Tag: 1\r\nX-Tag: 2\r\n\r\nbody \r\n\r\n"
    signature = dkim.sign(base, b"sel", b"example.org", pem, canonicalize=(b"relaxed", b"relaxed"), include_headers=[b"from", b"x-tag", b"x-tag", b"x-tag", b"absent"])
    for raw in [
        signature + base, signature + b"X-Tag: 0\r\n" + base, signature.replace(b"\r\n", b"\r\r\n") + base, signature + base.replace(b"\r\n", b"\r"),
        signature + base + b"\x00\xff", signature + base.replace(b"X-Tag: 2", b"X-Tag: 2\r\n"), b"DKIM-Signature: v=1\r\n" + base,
        b"DKIM-Signature: \r\n" + base, b"DKIM-Signature: ;;\r\n" + base, b"DKIM-Signature: h=from; b=; bh=\r\n" + base, signature + signature + base,
        signature.replace(b"h=", b"h=x-tag:x-tag:x-tag:x-tag:", 1) + base, signature + base.replace(b"X-Tag", b"x-tag"), signature + b"\r\n" + base,
        signature.replace(b"sel;", b"sel; l=0;", 1) + base, signature.replace(b"sel;", b"sel; l=99999999999;", 1) + base, base + signature,
    ]:
        assert_same(raw, resolver, monkeypatch)
    assert run(signature + base, resolver, True, monkeypatch)[0][0] is True


def test_header_selection_is_dkimpys() -> None:
    rnd = random.Random(8)
    names = [b"From", b"from", b"FROM", b"To", b"x-a", b"X-A", b"b", b"\xe9"]
    for _ in range(20000):
        headers = [(rnd.choice(names), bytes([i])) for i in range(rnd.randint(0, 8))]
        include = [rnd.choice(names).lower() for _ in range(rnd.randint(0, 10))]
        keys = [name.lower().rstrip() for name, _ in headers]
        assert dkimfast.selected_headers(headers, keys, include) == dkim.select_headers(headers, include), (headers, include)


def test_the_hashed_header_bytes_are_dkimpys(key: tuple[bytes, Txt]) -> None:
    pem, _ = key
    rnd = random.Random(44)
    for _ in range(300):
        body = random_message(rnd)
        message = sign(rnd, body, pem) + body
        verifier = dkim.DKIM(message, logger=QUIET)
        prep = dkimfast.PURE_VERIFY_HEADERPREP(verifier, 0)
        sig, include, sigheaders = prep
        include.append(b"from")
        policy = dkim.CanonicalizationPolicy.from_c_value(sig[b"c"])
        pure, fast = hashlib.sha256(), Recording(hashlib.sha256())
        HASHED.clear()
        expected = dkim.hash_headers(dkim.HashThrough(pure), policy, policy.canonicalize_headers(verifier.headers), include, sigheaders[0], sig)
        assert dkimfast._hash_headers(fast, policy, verifier.headers, include, sigheaders[0]) == expected
        assert fast.digest() == pure.digest() and len(HASHED) == 1


def test_install_replaces_the_dkim_steps_only(monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as m:
        m.setattr(dkim.DKIM, "verify_sig_process", dkimfast.PURE_VERIFY_SIG_PROCESS)
        assert not dkimfast.installed()
        dkimfast.install()
        assert dkimfast.installed() and dkim.DKIM.verify_sig_process is dkimfast.verify_sig_process
        assert dkim.ARC.verify_sig_process is dkim.DomainSigner.verify_sig_process  # ARC keeps dkimpy's


def test_a_signed_bench_message_verifies(key: tuple[bytes, Txt]) -> None:
    pem, resolver = key
    message = b"From: a@example.org\r\nTo: b@example.com\r\nSubject: s\r\n\r\n" + b"lorem ipsum dolor sit amet \r\n" * 50
    raw = dkim.sign(message, b"sel", b"example.org", pem, canonicalize=(b"relaxed", b"relaxed")) + message
    assert [r.result for r in verify_all(raw, DnsRecorder(resolver, 1e18), 5, 1024)] == ["pass"]


def test_signature_field_checks_are_dkimpys() -> None:
    now = int(__import__("time").time())
    values: dict[bytes, list[bytes]] = {
        b"v": [b"1", b"2", b""],
        b"a": [b"rsa-sha256", b"rsa-sha1", b"ed25519-sha256", b"rsa-md5", b""],
        b"b": [b"AAAA", b"AA AA", b"AAA", b"AAAA==", b"AA\r\n AA", b"A=AA", b"", b"AAAA\n", b"\xe9AAA", b"AA==  "],
        b"bh": [b"AAAA", b"AAA", b"AA\tAA", b"", b"AAAA\n", b"!!!!", b"A"],
        b"d": [b"example.org", b"Example.ORG", b"ex@mple.org", b"ex(a)mple", b"\xe9xample.org", b"\xe9x@mple", b"", b"a\\b"],
        b"h": [b"from", b""],
        b"s": [b"sel", b""],
        b"i": [b"@example.org", b"a@EXAMPLE.org", b"x.example.org", b"example.org", b"@other.org", b"xexample.org", b"", b"@\xe9xample.org"],
        b"l": [b"0", b"12", b"1" * 76, b"1" * 77, b"x", b"12\n", b"", b"\xd9\xa1"],
        b"q": [b"dns/txt", b"dns", b""],
        b"t": [str(now).encode(), str(now + 36001).encode(), str(now - 10).encode(), b"x", b"12\n", b"", b"0"],
        b"x": [str(now + 100).encode(), str(now - 36001).encode(), str(now - 100).encode(), b"x", b"", b"0"],
        b"cv": [b"pass", b"fail", b"none", b"bogus"],
    }
    rnd = random.Random(267)
    for _ in range(40000):
        sig = {tag: rnd.choice(choices) for tag, choices in values.items() if rnd.random() < (0.97 if tag in (b"v", b"a", b"b", b"bh", b"d", b"h", b"s") else 0.4)}
        assert outcome(dkimfast.validate_signature_fields, sig) == outcome(dkimfast.PURE_VALIDATE_SIGNATURE_FIELDS, sig), sig
    odd = {b"v": "1", b"a": b"rsa-sha256", b"b": b"AAAA", b"bh": b"AAAA", b"d": "example.org", b"h": b"from", b"s": b"s"}
    assert outcome(dkimfast.validate_signature_fields, odd) == outcome(dkimfast.PURE_VALIDATE_SIGNATURE_FIELDS, odd)


def test_stripping_blanks_before_line_ends_is_dkimpys() -> None:
    rnd = random.Random(3442)
    pieces = [b" ", b"  ", b"\r\n", b"\r", b"\n", b"a", b"b c", b" \r\n", b"\r\n ", b"\x0b", b"\x00", b"\xe9"]
    for _ in range(30000):  # no tab before a line end: the split at " \r\n"
        text = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 25)))
        assert dkimfast.strip_trailing_whitespace(text) == dkimfast.PURE_STRIP(text), text
    for _ in range(10000):
        text = b"".join(rnd.choice([*pieces, b"\t", b"\t\r\n", b" \t"]) for _ in range(rnd.randint(0, 25)))
        assert dkimfast.strip_trailing_whitespace(text) == dkimfast.PURE_STRIP(text), text
    body = b"lorem ipsum dolor sit amet \r\n" * 40 + b"end\t \r\n  \r\nlast "
    assert dkimfast.strip_trailing_whitespace(body) == dkimfast.PURE_STRIP(body)


def reference_key_names(headers: list[tuple[str, bytes]], max_signatures: int) -> list[str] | None:
    """key_names before it skipped the tags it does not read."""
    names: list[str] = []
    for name, value in headers:
        if name.lower() != "dkim-signature":
            continue
        if len(names) >= max_signatures:
            break
        tags = {}
        for part in value.split(b";"):
            tag, eq, text = part.partition(b"=")
            if eq:
                tags[tag.strip()] = b"".join(text.split())
        domain, selector = tags.get(b"d", b""), tags.get(b"s", b"")
        if not (domain and selector and (domain + selector).isascii()):
            return None
        names.append(f"{selector.decode()}._domainkey.{domain.decode()}")
    return names


def test_key_names_are_as_before() -> None:
    from milterd.checks.dkim import key_names

    rnd = random.Random(1024)
    pieces = [b"d=", b"s=", b" d =", b"\ts=", b"d", b"=", b";", b" ", b"\r\n ", b"a", b"B.c", b"\xe9", b"x=", b"sel", b"example.org", b"s=s;d=d"]
    for _ in range(20000):
        headers = [(rnd.choice(["DKIM-Signature", "dkim-signature", "Subject"]), b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 10)))) for _ in range(rnd.randint(0, 3))]
        for limit in (0, 1, 5):
            assert key_names(headers, limit) == reference_key_names(headers, limit), headers


def test_on_eom_judges_the_size_as_envelope_size(tmp_path: Any, key: tuple[bytes, Txt], monkeypatch: pytest.MonkeyPatch) -> None:
    from milterd.checks.dkim import Dkim
    from milterd.config import load_config
    from milterd.message.model import Envelope, Session, Spool
    from milterd.services import build

    pem, _ = key
    message = b"From: a@example.org\r\nSubject: s\r\n\r\nbody \r\n"
    raw = dkim.sign(message, b"sel", b"example.org", pem).replace(b"\r\n", b"\n") + message
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n')
    services = build(load_config(conf))
    check = next(c for c in services.checks if isinstance(c, Dkim))
    for raw_headers in (True, False):
        head, _, body = raw.partition(b"\r\n\r\n")
        envelope = Envelope(spool=Spool(1 << 20))
        for line in head.replace(b"\n ", b"\n\t").split(b"\r\n"):
            name, _, value = line.partition(b":")
            envelope.headers.append((name.decode(), value.lstrip(b" ")))
            if raw_headers:
                envelope.raw_headers.append(line)
        envelope.spool.write(body)
        size = envelope.size
        smaller = check.options.model_copy(update={"max_size": size - 1})
        equal = check.options.model_copy(update={"max_size": size})
        monkeypatch.setattr(Dkim, "options", property(lambda self, o=smaller: o))
        assert [(h.symbol, h.detail) for h in check.on_eom(Session(), envelope)] == [("DKIM_NONE", f"not verified: size {size} > {size - 1}")]
        monkeypatch.setattr(Dkim, "options", property(lambda self, o=equal: o))
        assert check.on_eom(Session(), envelope)[0].symbol != "DKIM_NONE"  # verified (the key is not published: a permerror)
        assert size == len(envelope.message_bytes())
        monkeypatch.undo()


def test_the_b_tag_removal_by_function_is_the_templates() -> None:
    from .test_dkimfast_parse import btag_cases

    for value in btag_cases(random.Random(1)):
        for pattern in (dkimfast.RE_BTAG, dkimfast.PURE_RE_BTAG):
            assert pattern.sub(dkimfast._FIRST_GROUP, value) == pattern.sub(b"\\1", value), value


def test_blanks_are_removed_as_by_dkimpys_pattern() -> None:
    import re

    rnd = random.Random(64)
    pieces = [b" ", b"\t", b"\r", b"\n", b"\x0b", b"\x0c", b"\x1c", b"\x1f", b"\x85", b"\xa0", b"\x00", b"A", b"+/", b"="]
    for _ in range(20000):
        value = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(0, 12)))
        assert dkimfast._without_blanks(value) == re.sub(rb"\s+", b"", value), value
    assert dkimfast._without_blanks(bytearray(b"a b")) == re.sub(rb"\s+", b"", bytearray(b"a b"))
