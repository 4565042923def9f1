"""The text extraction's shortcut for a one-part text message (mimetext.single_part) against the stdlib parse.

Every message here is extracted twice, once as is and once with the
shortcut switched off (the ``email`` parse of every message), and the two
results must be equal; the shortcut must also have been taken where it should.
"""

from __future__ import annotations

import base64
import email
import email.policy
import itertools
import quopri
import random
from pathlib import Path

import pytest

from milterd.checks.attachments import single_plain_text
from milterd.content import mimetext
from milterd.content.mimetext import decode_part, extract, single_part, single_text_type

TEXT = "Hello,\r\n\r\nthe offer is at http://shop.example.test/offer?id=1 until Friday (www.two.example).\r\nCaf\u00e9 \u2013 na\u00efve.\r\n"
HTML = '<html><head><title>t</title></head><body><p>Go <a href="https://prize.top/claim">here</a></p>\r\n<div>or www.three.example</div></body></html>\r\n'

#: Content-Types the shortcut takes: none, or text/SUBTYPE with at most a charset.
SIMPLE_TYPES: list[bytes | None] = [
    None, b"text/plain", b"TEXT/PLAIN", b"text/html", b"Text/HTML; charset=UTF-8", b"text/plain; charset=us-ascii",
    b"text/plain; charset=\"iso-8859-1\"", b"text/plain;\r\n\tcharset=utf-8", b"text/plain; charset=utf-8;", b"text/plain; charset=",
    b"text/plain; charset=\"\"", b"text/plain; charset=x-unknown-charset", b"text/plain; charset=hex", b"text/plain; charset=utf-16",
    b"text/plain; charset=latin_1", b"text/xml; charset=utf-8", b"\r\n text/plain",
]
#: Content-Types left to the stdlib parse.
OTHER_TYPES: list[bytes | None] = [
    b"text/plain; name=a.txt", b"text/plain; charset*=utf-8''x", b"text/plain; charset=utf-8 (comment)", b"text/plain (comment)",
    b"multipart/mixed; boundary=b", b"message/rfc822", b"text", b"text/plain charset=utf-8", b"text/plain;;charset=utf-8",
    b"text/plain; charset=\"utf-8", b"text/pl\xe4in", b"text/plain; charset=utf\xe4", b"application/octet-stream",
]
CONTENT_TYPES = SIMPLE_TYPES + OTHER_TYPES
ENCODINGS: list[bytes | None] = [
    None, b"7bit", b"8bit", b"binary", b"quoted-printable", b"Quoted-Printable", b"base64", b"BASE64", b"base64 ", b"\tbase64",
    b"\r\n base64", b"x-uuencode", b"b\xe4se64", b"", b"base64\r\n ",
]
DISPOSITIONS: list[bytes | None] = [None, b"inline", b"attachment; filename=a.txt"]


def body_for(encoding: bytes | None, charset: str, html: bool) -> list[bytes]:
    """Bodies for one transfer encoding: well-formed ones, broken ones and odd bytes."""
    data = (HTML if html else TEXT).encode(charset, "replace")
    name = (encoding or b"").strip().lower()
    if name == b"quoted-printable":
        encoded = quopri.encodestring(data).replace(b"\n", b"\r\n")
        return [encoded, b"broken =XY and =\r\nsoft =4\r\n", b"=E9t=C3=A9 caf=\r\n\xe9\r\n"]
    if name == b"base64":
        encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
        return [encoded, encoded.rstrip(b"=\r\n") + b"\r\n", b"!!not base64 at all**\r\n", b"aGVsbG8=\r\nd29y\r\nbGQ\r\n"]
    return [data, b"", b"NUL \x00 bytes\x00\r\n", b"CR only\rline ends\rhttp://cr.example/\r", b"LF only\nline\nhttp://lf.example/\n",
            b"8-bit \xe9\xff\xfe caf\xc3\xa9\r\n", b"form\x0cfeed \x0b\x1c\x1d\x1e\x85 www.odd.example\r\n", b"\r\n\r\nblank first\r\n"]


def message(ctype: bytes | None, cte: bytes | None, disposition: bytes | None, body: bytes, extra: bytes = b"") -> bytes:
    """A message with these MIME headers (None: absent) after a few ordinary ones."""
    head = b"From: Someone <a@example.org>\r\nSubject: caf\xc3\xa9 =?utf-8?q?x?=\r\n\tfolded\r\n" + extra
    if ctype is not None:
        head += b"Content-Type: " + ctype + b"\r\n"
    if cte is not None:
        head += b"Content-Transfer-Encoding: " + cte + b"\r\n"
    if disposition is not None:
        head += b"Content-Disposition: " + disposition + b"\r\n"
    return head + b"\r\n" + body


def stdlib_extract(raw: bytes, limit: int = 1024 * 1024) -> mimetext.MessageText:
    """extract without the shortcut: the email parse of every message."""
    original = mimetext.single_part
    mimetext.single_part = lambda raw: None  # type: ignore[assignment]
    try:
        return extract(raw, limit)
    finally:
        mimetext.single_part = original


def stdlib_part(raw: bytes) -> tuple[str, str]:
    """What the stdlib parse of a one-part message gives as its type and decoded text."""
    message = email.message_from_bytes(raw, policy=email.policy.compat32)
    assert not message.is_multipart()
    return message.get_content_type(), decode_part(message)


def same(raw: bytes, limit: int = 1024 * 1024) -> bool:
    """Assert the shortcut's extraction equals the stdlib's; whether the shortcut was taken."""
    assert extract(raw, limit) == stdlib_extract(raw, limit), raw
    found = single_part(raw)
    if found is not None:
        assert found == stdlib_part(raw), raw
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        assert single_text_type((k, (v if isinstance(v, str) else v.encode()).encode("ascii")) for k, v in message.items()) == (found[0], message.get_content_charset()), raw
    return found is not None


def test_every_combination_of_mime_headers_and_bodies_extracts_as_the_stdlib_does() -> None:
    taken: set[tuple[bytes | None, bytes | None, bytes | None]] = set()
    total = 0
    for ctype, cte, disposition in itertools.product(CONTENT_TYPES, ENCODINGS, DISPOSITIONS):
        charset = "latin-1" if ctype and b"8859" in ctype else "utf-8"
        for body in body_for(cte, charset, bool(ctype and b"html" in ctype.lower())):
            total += 1
            if same(message(ctype, cte, disposition, body)):
                taken.add((ctype, cte, disposition))
    assert total > 5000
    # Taken with no disposition, for the types with at most a charset and every encoding but the uuencode and 8-bit ones.
    assert taken == {(c, e, None) for c in SIMPLE_TYPES for e in ENCODINGS if e not in (b"x-uuencode", b"b\xe4se64")}


@pytest.mark.parametrize("extra", [
    b"", b"From nobody Sat Nov 28 09:51:17 2026\r\n", b"X-Empty:\r\n", b":no name\r\n", b"Bad Name: x\r\n", b"X-Lone: a\rb\r\n",
    b"X-Lone: a\nb\r\n", b"X-Form: a\x0cb\r\n", b"X-Vt: a\x0bb\r\n", b"X-Sep: a\x1cb\r\n", b"X-Sep: a\x1eb\r\n", b"X-Nel: a\x85b\r\n",
    b"X-Folded: a\r\n \r\n\tb\r\n", b"no colon line\r\n", b"X-8bit\xe9: v\r\n", b"X-Utf8: \xe2\x80\xa8\r\n",
    b"Content-Transfer-Encoding: base64\r\n", b"Content-Type: text/plain\r\n", b"CONTENT-TRANSFER-ENCODING: 7bit\r\n",
    b"Content-Type : text/html\r\n", b"Content-Typo: text/html\r\n",
])
def test_odd_header_lines_extract_as_the_stdlib_does(extra: bytes) -> None:
    for ctype, cte in [(None, None), (b"text/plain; charset=utf-8", b"quoted-printable"), (b"text/html", b"base64"), (b"text/plain", None)]:
        for body in body_for(cte, "utf-8", bool(ctype and b"html" in ctype)):
            same(message(ctype, cte, None, body, extra))


def test_whole_message_shapes_extract_as_the_stdlib_does() -> None:
    plain = message(b"text/plain; charset=utf-8", None, None, TEXT.encode())
    shapes = [
        plain, plain.replace(b"\r\n", b"\n"), plain.replace(b"\r\n", b"\r"), plain.split(b"\r\n\r\n", 1)[0], plain.split(b"\r\n\r\n", 1)[0] + b"\r\n",
        b"\r\n" + plain, b"\r\n\r\n" + plain, b"", b"\r\n", b"no header at all\r\n\r\nbody\r\n", b" continuation first: x\r\n\r\nbody\r\n",
        b"Subject: x\r\n\r\n", b"Subject: x\r\n\r\n\r\n", b"Subject: x\r\n \r\n\r\nbody", b"Subject: x\r\n\r\r\n\r\nbody",
        b"Subject: x\r\n\n\r\nbody", b"Subject: x\r\n\r\n\x00\x00", b"Subject: x\r\nContent-Type: text/html\r\n\r\n<a href='http://x.example/'>x",
    ]
    multipart = (
        b"Content-Type: multipart/alternative; boundary=\"b\"\r\n\r\npre\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee http://one.example/\r\n"
        b"--b\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(HTML.encode()).replace(b"\n", b"\r\n") + b"--b--\r\n"
    )
    nested = (
        b"Content-Type: multipart/mixed; boundary=o\r\n\r\n--o\r\nContent-Type: message/rfc822\r\n\r\n" + plain
        + b"\r\n--o\r\nContent-Type: multipart/related; boundary=i\r\n\r\n--i\r\nContent-Type: text/plain\r\n\r\ninner www.in.example\r\n--i--\r\n--o--\r\n"
    )
    shapes += [multipart, nested, multipart.replace(b"\r\n", b"\n")]
    for raw in shapes:
        same(raw)
    assert same(plain) and not same(multipart) and not same(nested) and not same(plain.replace(b"\r\n", b"\n"))


@pytest.mark.parametrize("limit", [0, -1, 1, 10, 60, 1 << 20])
def test_the_text_limit_cuts_as_the_stdlib_path_does(limit: int) -> None:
    for raw in (message(None, None, None, TEXT.encode()), message(b"text/html", b"base64", None, base64.encodebytes(HTML.encode()))):
        same(raw, limit)


def test_randomly_damaged_messages_extract_as_the_stdlib_does() -> None:
    """Bytes that matter to MIME parsing, dropped into the headers and bodies of a simple message at random."""
    rng = random.Random(20261202)
    pieces = [b"\r", b"\n", b"\r\n", b"\x00", b"\x0b", b"\x0c", b"\x1c", b"\x85", b"\xe9", b" ", b"\t", b":", b";", b"=", b"\"", b"(", b"*",
              b"From ", b"\r\n ", b"\r\n\r\n", b"charset=", b"base64", b"--b", b"text/", b"http://r.example/", b"www.", b"=C3=A9", b"=\r\n"]
    bases = [
        message(b"text/plain; charset=utf-8", b"quoted-printable", None, quopri.encodestring(TEXT.encode()).replace(b"\n", b"\r\n")),
        message(b"text/html; charset=\"iso-8859-1\"", b"base64", None, base64.encodebytes(HTML.encode("latin-1", "replace")).replace(b"\n", b"\r\n")),
        message(None, b"8bit", None, TEXT.encode()),
    ]
    taken = 0
    for _ in range(3000):
        raw = bytearray(rng.choice(bases))
        for _ in range(rng.randint(1, 3)):
            # Mostly in the header section, where the shortcut decides.
            at = rng.randrange(len(raw) // 3 if rng.random() < 0.8 else len(raw))
            raw[at:at + rng.randint(0, 2)] = rng.choice(pieces)
        taken += same(bytes(raw))
    assert taken > 300


def test_cpython_email_test_messages_extract_as_the_stdlib_does() -> None:
    """The standard library's own email test data (many malformed on purpose): missing, it fails (tests/harness/corpora.py)."""
    folders = [Path(p) / "test" / "test_email" / "data" for p in {str(Path(email.__file__).parent.parent), "/usr/lib/python3.11"}]
    files = sorted(f for folder in folders if folder.is_dir() for f in folder.glob("msg_*.txt"))
    if not files:
        pytest.fail("CPython's test_email messages are missing: install Debian's libpython3.11-testsuite (.ci/setup does)")
    for path in files:
        raw = path.read_bytes()
        for variant in (raw, raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")):
            same(variant)


def test_the_attachment_check_shares_the_single_text_type_test() -> None:
    assert single_text_type([("Content-Type", b" text/PLAIN;\n\tcharset=\"ISO-8859-1\"")]) == ("text/plain", "iso-8859-1")
    assert single_text_type([("Subject", b"x")]) == ("text/plain", None)
    assert single_text_type([("Content-Type", b"text/html; charset=")]) == ("text/html", "")
    assert single_text_type([("Content-Disposition", b"inline")]) is None
    assert single_plain_text([("Content-Type", b"text/plain")]) and not single_plain_text([("Content-Type", b"text/plain; name=a.exe")])
