"""Hostile input to every check at once: no check raises, every message gets a verdict.

A broken check does not take a message down (the pipeline records ``CHECK_ERROR``
and goes on), so the Postfix-level bad-input tests cannot see one.  Here the
worker's adapter (:func:`milterd.milter.offline.check_message`, as ``milterd
check`` drives it) runs with every check on and the shipped rules, against the
auth rows' local resolver (bench/auth.py: a DKIM key, a ``p=reject`` DMARC
policy, SPF, the URI and client list zones), over messages built to reach the
round-2 checks' parsers: DKIM and ARC tag lists, From fields for DMARC, link
hosts for the URI lists, attachment names, archives and MIME shapes, plus a
fixed-seed set of byte mutations of a signed message.  Any exception logged by a
check or the adapter fails the test with the message that caused it.
"""

from __future__ import annotations

import base64
import io
import logging
import random
import zipfile
from pathlib import Path
from typing import Iterator

import pytest

from bench import auth
from milterd.config import Config
from milterd.message.model import Action
from milterd.message.pipeline import Pipeline
from milterd.milter.offline import Client, check_message
from milterd.services import build
from milterd.store import Store
from tests.harness.corpora import cpython_email_messages

CRLF = b"\r\n"
HEADERS = [b"From: Author <author@example.org>", b"To: rcpt@example.com", b"Subject: hello",
           b"Date: Sat, 28 Nov 2026 09:51:17 +0000", b"Message-ID: <x@example.org>"]
MUTATIONS = 400


def _message(headers: list[bytes], body: bytes) -> bytes:
    return CRLF.join(headers) + CRLF + CRLF + body


def _zip(files: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in files:
            archive.writestr(name, data)
    return buffer.getvalue()


def _with_attachment(name: str, data: bytes) -> bytes:
    return _message(HEADERS + [b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="B"'], CRLF.join([
        b"--B", b"Content-Type: text/plain", b"", b"see http://www.example.net/x",
        b"--B", f'Content-Type: application/octet-stream; name="{name}"'.encode("utf-8", "surrogateescape"),
        b"Content-Transfer-Encoding: base64", f'Content-Disposition: attachment; filename="{name}"'.encode("utf-8", "surrogateescape"),
        b"", base64.encodebytes(data).replace(b"\n", CRLF), b"--B--", b""]))


def hostile_messages() -> Iterator[bytes]:
    """Messages aimed at the DKIM, ARC, DMARC, URI list and attachment parsers."""
    small = _zip([("a.txt", b"hi")])
    for name, data in [("x.zip", small), ("nested.zip", _zip([("inner.zip", _zip([("evil.exe", b"MZ" + bytes(100))]))])),
                       ("truncated.zip", small[: len(small) // 2]), ("garbage.zip", b"PK\x03\x04" + bytes(range(256))),
                       ("a.7z", b"7z\xbc\xaf\x27\x1c" + bytes(range(100))), ("r.rar", b"Rar!\x1a\x07\x00" + bytes(50)),
                       ("x.cab", b"MSCF" + bytes(100)), ("x.tar", bytes(range(256)) * 4), ("\u202eexe.pdf", b"%PDF"),
                       ("inv.pdf.exe", b"MZ"), ("", b""), ("a" * 5000 + ".exe", b"MZ"), ("=?bogus?q?x=2Eexe?=", b"MZ"),
                       ("doc.docm", _zip([("word/vbaProject.bin", b"x")]))]:
        yield _with_attachment(name, data)
    for tags in [b"v=1; a=rsa-sha256; d=; s=; h=from; bh=; b=", b"v=1; a=rsa-sha256; d=example.org; s=bench; h=; bh=x; b=y",
                 b"v=1; a=rsa-sha256; d=example.org; s=bench; h=from; l=-5; bh=AAAA; b=AAAA",
                 b"v=1; a=rsa-sha256; d=example.org; s=bench; h=from; l=99999999999999999999999; bh=AAAA; b=AAAA",
                 b"v=1; a=rsa-sha256; d=example.org; s=bench; h=from; t=abc; x=def; bh=AAAA; b=AAAA",
                 b"v=1; a=ed25519-sha256; d=example.org; s=bench; h=from; bh=AAAA; b=AAAA",
                 b"v=1; a=rsa-sha256; d=\xff\xfe.org; s=\xc3\xa9; h=from; bh=AAAA; b=AAAA",
                 b"v=1; a=rsa-sha256; d=example.org; s=" + b"a" * 300 + b"; h=from; bh=AAAA; b=AAAA",
                 b"v=1; a=rsa-sha256; d=example.org; s=bench; h=from; bh=AAAA; b=AAAA; d=other.org", b"=;;;==;", b"",
                 b"v=1; a=rsa-sha256; d=" + b"a." * 200 + b"org; s=x; h=from; bh=A; b=A",
                 b"v=1; a=rsa-sha256; c=bogus/bogus; d=example.org; s=bench; h=from; bh=AAAA; b=AAAA",
                 b"v=1; a=rsa-sha256; d=example.org; s=bench; i=@evil.org; h=from; bh=AAAA; b=AAAA",
                 b"v=1; a=rsa-sha256; d=example.org; s=bench; h=from:from:from; bh=\x00; b=\x00"]:
        yield _message([b"DKIM-Signature: " + tags] + HEADERS, b"hello http://www.example.net/")
        yield _message([b"ARC-Seal: i=1; " + tags, b"ARC-Message-Signature: i=1; " + tags, b"ARC-Authentication-Results: i=1; x; dkim=pass"] + HEADERS, b"hi")
    for author in [b"From:", b"From: <>", b"From: a@", b"From: @b", b"From: undisclosed-recipients:;", b"From: a@b.c, d@e.f",
                   b"From: =?utf-8?b?//79?= <x@\xc3\xa9xample.org>", b"From: x@[127.0.0.1]", b"From: x@" + b"a" * 300 + b".org",
                   b"From: x@-bad-.org", b"From: x@.org", b"From: \"a\" <b@c.d> (comment", b"From: x@xn--zz.org", b"From: x@example.org\x00"]:
        yield _message([author] + HEADERS[1:], b"body")
        yield _message([author] + HEADERS[1:] + [b"From: second@example.org"], b"body")
    for link in [b"http://[::1]/", b"http://[zz]/", b"http://256.1.1.1/", b"http://0x7f.1/", b"http://xn--/", b"http://a..b/",
                 b"http://\xc3\xa9x.com/", b"http://" + b"a" * 70 + b".com/", b"http://" + b"a." * 150 + b"com", b"www.", b"www..",
                 b"http://user:pass@host.com:99999/", b"<a href='http://%65vil.com/'>", b"<img src=\"//evil.com/x\">",
                 b"http://example.com\x00evil.com/", b"http://[::ffff:1.2.3.4]/", b"https://.com/", b"http://co.uk/", b"http://\xff\xfe.com/"]:
        for content_type in [b"text/plain", b"text/html"]:
            yield _message(HEADERS + [b"Content-Type: " + content_type + b"; charset=utf-8"], b"see " + link + b" now")
    yield _message(HEADERS, b" ".join(f"http://d{i}.example{i % 7}.com/".encode() for i in range(3000)))
    for content_type in [b"text/plain; charset=bogus", b"text/plain; charset=utf-16", b"multipart/alternative; boundary=",
                         b"message/rfc822", b"text/\xff"]:
        for encoding in [b"base64", b"quoted-printable", b"x-uuencode", b"bogus"]:
            yield _message(HEADERS + [b"MIME-Version: 1.0", b"Content-Type: " + content_type, b"Content-Transfer-Encoding: " + encoding],
                           b"=E9=\r\n==\r\nAAAA=\r\n\xff\xfe\x00 http://www.evil.com/ begin 644 x\r\n`\r\nend\r\n")
    body = b"x"
    for depth in range(120):
        body = CRLF.join([f"--c{depth}".encode(), f'Content-Type: multipart/mixed; boundary="c{depth + 1}"'.encode(), b"", body, f"--c{depth}--".encode()])
    yield _message(HEADERS + [b"MIME-Version: 1.0", b'Content-Type: multipart/mixed; boundary="c0"'], body)
    yield _message(HEADERS + [b"X-Long: " + b"a" * 100_000, b"Authentication-Results: " + b";" * 1000], b"x")
    yield _message([b"\xff\xfe: x", b"Na\x00me: y", b": empty name"] + HEADERS, b"x")


def mutated(seed_messages: list[bytes], count: int) -> Iterator[bytes]:
    """*count* byte mutations (flips, inserted separators, cuts, copies) of the seed messages, from a fixed seed."""
    rng = random.Random(20261202)
    pieces = [b"\x00", b"\r", b"\n", b";", b"=", b":", b"\r\n ", b"<", b">", b"@", b".", b"\xff", b"http://", b"=?", b"--"]
    for _ in range(count):
        data = bytearray(rng.choice(seed_messages))
        for _ in range(rng.randint(1, 8)):
            at = rng.randrange(len(data) + 1)
            op = rng.random()
            if op < 0.3 and data:
                data[min(at, len(data) - 1)] = rng.randrange(256)
            elif op < 0.55:
                data[at:at] = rng.choice(pieces)
            elif op < 0.75:
                del data[at:at + rng.randint(1, 50)]
            elif op < 0.9 and data:
                start = rng.randrange(len(data))
                data[at:at] = data[start:start + rng.randint(1, 200)]
            else:
                del data[at:]
        yield bytes(data)


class Raised(logging.Handler):
    """Every record logged with an exception."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def resolver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[auth.AuthDns]:
    dns = auth.start_dns(tmp_path_factory.mktemp("hostile-dns"))
    try:
        yield dns
    finally:
        dns.stop()


def test_no_check_raises_on_hostile_input(resolver: auth.AuthDns, tmp_path: Path) -> None:
    config = Config.model_validate({
        "dns": {"nameservers": [resolver.nameserver]},
        "milter": {"trusted_networks": []},
        "database": {"url": f"sqlite:///{tmp_path / 'log.sqlite'}"},
        "rules": {"dir": ""},
    })
    Store(config.database).upgrade()
    services = build(config)
    pipeline = Pipeline(services, keep_log=True)
    signed = [message.data for message in auth.signed_pool(resolver.key, 2048, 4)]
    crafted = list(hostile_messages())
    cpython = [path.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") for path in cpython_email_messages()]
    raised = Raised()
    logging.getLogger().addHandler(raised)
    client = Client(addr="192.0.2.10", name="client.example.org", helo="client.example.org", sender="author@example.org", recipients=[auth.RECIPIENT])
    try:
        verdicts = []
        for raw in signed + crafted + cpython + list(mutated(signed + crafted, MUTATIONS)):
            before = len(raised.records)
            checked = check_message(pipeline, raw, client)
            assert len(raised.records) == before, f"{raised.records[-1].getMessage()} on {raw[:600]!r}"
            assert not checked.error and "CHECK_ERROR" not in checked.symbols, (checked, raw[:600])
            verdicts.append(checked.action)
    finally:
        logging.getLogger().removeHandler(raised)
        pipeline.shutdown()
        services.close()
    assert len(verdicts) == len(signed) + len(crafted) + len(cpython) + MUTATIONS and len(crafted) > 100
    assert all(isinstance(action, Action) for action in verdicts)
    assert verdicts[: len(signed)] == [Action.ACCEPT] * len(signed)  # the harness itself passes good mail
    assert Action.REJECT in verdicts  # and the hostile set reaches the checks that refuse (p=reject, .exe in a zip)
