"""MIME parameters as Thunderbird reads them (``mimeparams.client_param``), beside the standard library's reading.

A fuzzing session found fourteen shapes of Content-Type and Content-Disposition fields that
Thunderbird (nsMIMEHeaderParamImpl::DoParameterInternal) reads as ``invoice.js`` or as
boundary ``B`` where the standard library read something else (``"invoice.js" (comment)``,
``invoice.jsnotes.txt``, ``"B" (comment)``): the file was delivered with no ATTACH_* symbol
at all, and with the boundary ones every part went unseen.  Each shape is judged here as the
default policy judges it, and the link of a text part under such a boundary is found.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from milterd.checks.attachments import BANNED
from milterd.content.mimeparams import client_param
from milterd.content.mimetext import extract
from milterd.message.model import Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of


@pytest.mark.parametrize(
    ("value", "name", "expected"),
    [
        ('multipart/mixed; boundary="X"; boundary*=\'\'B', "boundary", "B"),  # name*= is preferred to name=
        ('multipart/mixed; boundary="B" (comment)', "boundary", "B"),  # the value ends at its closing quote
        ('multipart/mixed; boundary*0="B"; boundary*0="X"', "boundary", "B"),  # a duplicate section ends them
        ('multipart/mixed; boundary="B', "boundary", "B"),  # an unclosed quote runs to the end
        ('attachment; filename="invoice.js" (comment)', "filename", "invoice.js"),
        ('attachment; filename="invoice.js"\r\n\tsize=1234', "filename", "invoice.js"),  # no ";": the field ends
        ("attachment; filename=invoice.js notes.txt", "filename", "invoice.js"),  # a token ends at a blank
        ('attachment; filename*0="invoice.js"; filename*00="x.txt"', "filename", "invoice.js"),  # a leading 0 ends them
        ('attachment; filename*0="invoice.js"; filename*1*="%2Etxt"', "filename", "invoice.js"),  # quoted and %-encoded
        ('attachment; filename*0="invoice.js"; filename*2="x.txt"', "filename", "invoice.js"),  # a gap ends them
        ('attachment; filename*0="invoice.js"; filename*1="', "filename", "invoice.js"),
        ("attachment; filename*=utf-8''invoice%2Ejs; filename*=utf-8''notes.txt", "filename", "invoice.js"),  # the first
        ('attachment, filename="invoice.js"', "filename", "invoice.js"),  # "," before the first parameter
        ("attachment; filename*0*=utf-8''%E2%82%AC; filename*1=.exe", "filename", "\u20ac.exe"),
        ('filename="x.js"', "filename", "x.js"),  # parameters alone
        ('attachment; filename="ev\\il.js"', "filename", "evil.js"),  # a quoted-pair
        ('attachment; filename="a.txt"; filename="b.js"', "filename", "a.txt"),  # the first plain one
        ("attachment", "filename", None),
        ("attachment; x=1; filename", "filename", None),
    ],
)
def test_client_param_reads_as_thunderbird(value: str, name: str, expected: str | None) -> None:
    assert client_param(value, name) == expected


TOP = "From: a@example.net\r\nTo: b@example.com\r\nSubject: invoice\r\nMIME-Version: 1.0\r\nContent-Type: {top}\r\n\r\n"
TEXT = "--B\r\nContent-Type: text/plain\r\n\r\nsee http://link.example.test/ attached\r\n"
SCRIPT = "var s = new ActiveXObject('WScript.Shell');\r\n--B--\r\n"

#: (top-level Content-Type, the attachment's fields): the shapes the fuzzer found.
SHAPES = [
    ('multipart/mixed; boundary="X"; boundary*=\'\'B', 'Content-Disposition: attachment; filename="invoice.js"'),
    ('multipart/mixed; boundary="B" (comment)', 'Content-Type: application/octet-stream; name="invoice.js"'),
    ('multipart/mixed; boundary*0="B"; boundary*0="X"', 'Content-Disposition: attachment; filename="invoice.js"'),
    ('multipart/mixed; boundary="B', 'Content-Disposition: attachment; filename="invoice.js"'),
    ("multipart/mixed; boundary=B", 'Content-Disposition: attachment; filename="invoice.js" (comment)'),
    ("multipart/mixed; boundary=B", 'Content-Disposition: attachment; filename="invoice.js"\r\n\tsize=1234'),
    ("multipart/mixed; boundary=B", "Content-Disposition: attachment; filename=invoice.js notes.txt"),
    ("multipart/mixed; boundary=B", 'Content-Disposition: attachment; filename*0="invoice.js"; filename*0="notes.txt"'),
    ("multipart/mixed; boundary=B", 'Content-Disposition: attachment; filename*0="invoice.js"; filename*00="x.txt"'),
    ("multipart/mixed; boundary=B", 'Content-Disposition: attachment; filename*0="invoice.js"; filename*1*="%2Etxt"'),
    ("multipart/mixed; boundary=B", 'Content-Disposition: attachment; filename*0="invoice.js"; filename*2="x.txt"'),
    ("multipart/mixed; boundary=B", "Content-Disposition: attachment; filename*=utf-8''invoice%2Ejs; filename*=utf-8''notes.txt"),
    ("multipart/mixed; boundary=B", 'Content-Type: text/plain\r\nContent-Disposition: attachment, filename="invoice.js"'),
]


def message(top: str, fields: str) -> bytes:
    return (TOP.format(top=top) + TEXT + f"--B\r\n{fields}\r\n\r\n" + SCRIPT).encode("latin-1")


@pytest.fixture
def check(tmp_path: Path) -> object:
    return attachment_check(tmp_path)


@pytest.mark.parametrize(("top", "fields"), SHAPES)
def test_a_name_or_boundary_read_otherwise_by_the_stdlib_still_bans_the_file(check: object, top: str, fields: str) -> None:
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(message(top, fields)))  # type: ignore[attr-defined]
    found = {h.symbol: h.detail for h in hits}
    assert found.get(BANNED, "").endswith("invoice.js: banned extension .js"), found


@pytest.mark.parametrize("top", [shape[0] for shape in SHAPES[:4]])
def test_the_text_under_a_boundary_read_otherwise_is_read(top: str) -> None:
    # The stdlib parser splits the parts at the boundary that delimits them (LenientMessage's source).
    assert extract(message(top, 'Content-Disposition: attachment; filename="invoice.js"')).uris == ["http://link.example.test/"]


def test_where_only_the_stdlib_reading_delimits_it_is_kept() -> None:
    # boundary*= is Thunderbird's choice, but only "B" delimits the message: the parts stay readable.
    raw = message('multipart/mixed; boundary="B"; boundary*="\\"', 'Content-Disposition: attachment; filename="invoice.js"')
    assert extract(raw).uris == ["http://link.example.test/"]


# --- the review's findings ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "name", "expected"),
    [
        ('attachment; foo; filename="invoice.js" (comment)', "filename", "invoice.js"),  # no "=": passed over
        ('multipart/mixed; foo; boundary="B" (comment)', "boundary", "B"),
        ("attachment; filename*=utf-8''%FF; filename*0=\"invoice.js\"", "filename", "invoice.js"),  # not UTF-8: the sections
        ("attachment; filename*=no-such-charset''a; filename=\"invoice.js\"", "filename", "invoice.js"),
    ],
)
def test_client_param_as_current_thunderbird(value: str, name: str, expected: str) -> None:
    assert client_param(value, name) == expected


def test_every_reading_a_version_may_show_is_a_name() -> None:
    from milterd.content.mimeparams import client_names

    names = client_names("attachment; filename*=utf-8''%FF.txt; filename*0=\"invoice.js\"; filename=\"x.exe\"", "filename")
    assert names[0] == "invoice.js" and "x.exe" in names and "\ufffd.txt" in names


def test_a_boundary_that_only_prefixes_the_delimiters_is_not_taken_for_them() -> None:
    # boundary=B; boundary*=''BC: "--BC" lines start with "--B", but only BC delimits the parts.
    raw = message("multipart/mixed; boundary=B; boundary*=''BC", 'Content-Disposition: attachment; filename="invoice.js"').replace(b"--B", b"--BC")
    assert extract(raw).uris == ["http://link.example.test/"]


def test_the_message_is_searched_for_delimiters_a_bounded_number_of_times(monkeypatch: pytest.MonkeyPatch) -> None:
    from milterd.content import mimeparams

    calls = []
    real = mimeparams._delimits
    monkeypatch.setattr(mimeparams, "_delimits", lambda source, boundary: calls.append(boundary) or real(source, boundary))
    nested = "".join(f'--Z{i}\r\nContent-Type: multipart/mixed; boundary="Z{i + 1}" (c)\r\n\r\n' for i in range(200))
    raw = (TOP.format(top='multipart/mixed; boundary="Z0" (c)') + nested + "--Z200\r\nContent-Type: text/plain\r\n\r\nhttp://deep.example.test/\r\n").encode()
    extract(raw)
    assert 0 < len(calls) <= mimeparams.DELIMITER_SEARCHES
