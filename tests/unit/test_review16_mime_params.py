"""Review 16: one malformed MIME parameter must not switch off the attachment checks, body rules and URI lists.

The stdlib raises on some parameters (``x*0="a"; x*="b"``: TypeError sorting
the sections; an ``idna''`` charset: UnicodeError; a NUL in one: ValueError),
from its parser too (it asks a multipart for its boundary).  Each message
below is a fuzzer's minimised input (rebuilt byte for byte by :func:`mail`
from its parts): before the fix it was judged as having no attachment
(ATTACH_ERROR, 0 points) and its text was never read; a mail client shows
invoice.exe and the text.
"""

from __future__ import annotations

import random
from email.message import Message
from pathlib import Path

import pytest

import milterd.content.mimeparts as mimeparts
from milterd.checks.attachments import BANNED, ERROR, AttachmentPolicy, DecompressionBudget
from milterd.content.mimeparams import LenientMessage, raw_params
from milterd.content.mimeparts import attachments
from milterd.content.mimetext import decode_part, extract
from milterd.message.model import Action, Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of

#: The .exe every message below carries: an executable's first bytes (MZ … PE), base64.
EXE = (
    b'TVqQAAMAAAAEAAAA//8AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n'
    b'AAAAAAAAAFBFAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n'
    b'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n'
    b'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n'
    b'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\r\n'
)


def mail(top_params: bytes, *parts: bytes, subject: bytes = b"t") -> bytes:
    """A fuzzer's message: its header fields (``multipart/mixed; `` *top_params*), then *parts*, each after a ``--B`` line."""
    head = (
        b'From: Alice <alice@example.org>\r\n'
        b'To: bob@example.net\r\n'
        b'Subject: ' + subject + b'\r\n'
        b'Date: Thu, 04 Dec 2025 19:00:00 +0000\r\n'
        b'Message-ID: <a@example.org>\r\n'
        b'MIME-Version: 1.0\r\n'
        b'Content-Type: multipart/mixed; ' + top_params + b'\r\n'
        b'\r\n'
    )
    return head + b"".join(b"--B\r\n" + part for part in parts) + b"--B--\r\n"


def part(*fields: bytes, body: bytes) -> bytes:
    """A body part: its header *fields* (one line each), a blank line, *body*."""
    return b"".join(field + b"\r\n" for field in fields) + b"\r\n" + body


def exe(type_params: bytes = b"", disposition: bytes | None = b'filename="invoice.exe"') -> bytes:
    """The invoice.exe part: ``application/octet-stream`` *type_params*, ``attachment; `` *disposition* (no such field when None)."""
    disposition_field = () if disposition is None else (b"Content-Disposition: attachment; " + disposition,)
    return part(b"Content-Type: application/octet-stream" + type_params, *disposition_field, b"Content-Transfer-Encoding: base64", body=EXE)


def html(text: bytes) -> bytes:
    """A text/html part: *text* as the link to evil.example.top."""
    return part(b"Content-Type: text/html", body=b'<a href="http://evil.example.top/">' + text + b"</a>\r\n")


SEE_ATTACHED = part(b"Content-Type: text/plain", body=b"See attached.\r\n")

ATTACH_MIXED_CONT = mail(b'boundary="B"', SEE_ATTACHED, exe(b'; x*0="a"; x*="b"'), subject=b"invoice")
ATTACH_MIXED_CONT_NAME = mail(b'boundary="B"', SEE_ATTACHED, exe(b'; name*0="invoice"; name*=".exe"'), subject=b"invoice")
TOPLEVEL_MIXED_CONTINUATION = mail(b'boundary="B"; x*0="a"; x*="b"', html(b"pay by western union"), exe(), subject=b"invoice")
ATTACH_EXE_FILENAME_IDNA = mail(b'boundary="B"', exe(disposition=b"filename*=idna''invoice.exe"))
ATTACH_BOUNDARY_IDNA = mail(b"boundary*=idna''B", exe(b'; name="invoice.exe"'))
ATTACH_CT_NAME_IDNA = mail(b'boundary="B"', exe(b"; name*=idna''invoice.exe", disposition=None))
ATTACH_NUL_CHARSET = mail(b"boundary*=a\x00''B", exe(b'; name="invoice.exe"'))
TEXT_BOUNDARY_IDNA = mail(b"boundary*=idna''B", html(b"pay via western union"))
ATTACH_TRAILING_PART_FILENAME_IDNA = mail(
    b'boundary="B"',
    exe(b'; name="invoice.exe"'),
    part(b"Content-Type: text/plain", b"Content-Disposition: attachment; filename*=idna''notes.txt", body=b"hello\r\n"),
)

#: The messages with a banned .exe a mail client shows.
EXE_MESSAGES = {
    "attach_mixed_cont": ATTACH_MIXED_CONT,
    "attach_mixed_cont_name": ATTACH_MIXED_CONT_NAME,
    "toplevel_mixed_continuation": TOPLEVEL_MIXED_CONTINUATION,
    "attach_exe_filename_idna": ATTACH_EXE_FILENAME_IDNA,
    "attach_boundary_idna": ATTACH_BOUNDARY_IDNA,
    "attach_ct_name_idna": ATTACH_CT_NAME_IDNA,
    "attach_nul_charset": ATTACH_NUL_CHARSET,
    "attach_trailing_part_filename_idna": ATTACH_TRAILING_PART_FILENAME_IDNA,
}
#: The messages with a text/html part a mail client shows.
TEXT_MESSAGES = {"toplevel_mixed_continuation": TOPLEVEL_MIXED_CONTINUATION, "text_boundary_idna": TEXT_BOUNDARY_IDNA}


@pytest.fixture()
def check(tmp_path: Path) -> AttachmentPolicy:
    return attachment_check(tmp_path)


def names(raw: bytes) -> list[set[str]]:
    """The names each attachment of *raw* carries (its file name and the others)."""
    return [{a.filename, *a.names} for a in attachments([raw])]


@pytest.mark.parametrize("raw", EXE_MESSAGES.values(), ids=EXE_MESSAGES.keys())
def test_the_exe_is_found_despite_a_malformed_parameter(raw: bytes) -> None:
    found = names(raw)
    assert any("invoice.exe" in each for each in found), found


def test_the_exe_is_found_with_its_content() -> None:
    found = [(a.filename, a.content_type, a.data.read(2)) for a in attachments([ATTACH_MIXED_CONT])]
    assert found == [("invoice.exe", "application/octet-stream", b"MZ")]


def test_a_part_after_a_malformed_one_is_still_read() -> None:
    found = [(a.filename, a.content_type) for a in attachments([ATTACH_TRAILING_PART_FILENAME_IDNA])]
    assert found == [("invoice.exe", "application/octet-stream"), ("notes.txt", "text/plain")]


@pytest.mark.parametrize("raw", EXE_MESSAGES.values(), ids=EXE_MESSAGES.keys())
def test_the_exe_is_banned_and_the_message_rejected(check: AttachmentPolicy, raw: bytes) -> None:
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))
    assert ERROR not in {h.symbol for h in hits}
    banned = next(h for h in hits if h.symbol == BANNED)
    assert banned.action is Action.REJECT and banned.reply is not None and "invoice.exe" in str(banned.reply)


@pytest.mark.parametrize("raw", TEXT_MESSAGES.values(), ids=TEXT_MESSAGES.keys())
def test_the_text_and_links_are_read_despite_a_malformed_parameter(raw: bytes) -> None:
    result = extract(raw)
    assert result.error == ""
    assert "pay" in result.text and "western union" in result.text
    assert result.uris == ["http://evil.example.top/"]


def test_the_top_level_continuation_hides_no_part_from_the_text() -> None:
    result = extract(TOPLEVEL_MIXED_CONTINUATION)
    assert (result.error, result.text.strip()) == ("", "pay by western union")


@pytest.mark.parametrize(("value", "expected"), [
    ('attachment; x*0="a"; x*="b"; filename="invoice.exe"', [("x", "a"), ("x", "b"), ("filename", "invoice.exe")]),
    ("attachment; filename*=idna''invoice.exe", [("filename", "invoice.exe")]),
    ("a/b; name*0*=utf-8''in%76oice; name*1=\".exe\"", [("name", "invoice.exe")]),
    ("a/b; charset*=a\x00b''utf-8", [("charset", "utf-8")]),
    ("a/b; name*=punycode''%ff%fe", [("name", "\xff\xfe")]),
    ("a/b; name*=utf-8''it's%2Eexe; x*0=1; x*=2", [("name", "it's.exe"), ("x", "1"), ("x", "2")]),
    ("a/b; boundary=\"un;closed", [("boundary", "un;closed")]),
    ("a/b; x*99999999999999999999=a; x*0=b", [("x", "ba")]),
    ("a/b; x*" + "9" * 5000 + "=a; x*0=b", [("x", "ba")]),
])
def test_raw_params_reads_what_the_stdlib_raises_on(value: str, expected: list[tuple[str, str]]) -> None:
    params = raw_params(value)
    assert params[0] == (value.split(";")[0], "")
    assert sorted(params[1:]) == sorted(expected)


def lenient(field: str, value: str) -> LenientMessage:
    part = LenientMessage()
    part[field] = value
    return part


def test_lenient_message_gives_the_stdlib_answer_when_it_does_not_raise() -> None:
    value = "text/plain; charset*=utf-8''ISO-8859-1; name*0=\"a\"; name*1=\".txt\""
    plain, part = Message(), lenient("Content-Type", value)
    plain["Content-Type"] = value
    for method in ("get_params", "get_filename", "get_boundary", "get_content_charset"):
        assert getattr(part, method)() == getattr(plain, method)()
    assert part.get_param("name") == plain.get_param("name")


def test_lenient_message_reads_raw_what_the_stdlib_raises_on() -> None:
    value = 'multipart/mixed; boundary="B"; x*0="a"; x*="b"; charset=UTF-8'
    plain, part = Message(), lenient("Content-Type", value)
    plain["Content-Type"] = value
    with pytest.raises(TypeError):
        plain.get_boundary()
    assert part.get_boundary() == "B"
    assert part.get_content_charset() == "utf-8"
    assert part.get_param("x") == "a"
    assert part.get_params()[0] == ("multipart/mixed", "")
    assert part.get_filename("none") == "none"
    assert lenient("Content-Disposition", "attachment; filename*=idna''invoice.exe").get_filename() == "invoice.exe"


def test_a_charset_with_a_nul_is_read_as_no_charset() -> None:
    part = lenient("Content-Type", "text/plain; charset*=a\x00b''x; x*0=1; x*=2")
    part.set_payload("caf\xc3\xa9".encode("latin-1").decode("ascii", "surrogateescape"))
    assert decode_part(part) == "café"


def test_a_part_whose_fields_raise_is_judged_as_an_unnamed_file_and_the_next_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    real = mimeparts._read_part
    calls = []

    def failing_once(part: Message) -> tuple[str, tuple[bytes, ...], str, str, tuple[str, ...]]:
        calls.append(part)
        if len(calls) == 2:  # the top level, then the .exe's part
            raise RuntimeError("boom")
        return real(part)

    monkeypatch.setattr(mimeparts, "_read_part", failing_once)
    skipped: list[str] = []
    found = [(a.filename, a.content_type) for a in attachments([ATTACH_TRAILING_PART_FILENAME_IDNA], skipped=skipped)]
    assert found == [("", "application/octet-stream"), ("notes.txt", "text/plain")]
    assert skipped == ["a part's MIME fields could not be read (RuntimeError): its body judged as an unnamed file"]


def test_one_attachment_that_cannot_be_judged_does_not_hide_the_next(check: AttachmentPolicy, monkeypatch: pytest.MonkeyPatch) -> None:
    real = check.judge

    def judge(attachment: mimeparts.Attachment, budget: DecompressionBudget) -> list[object]:
        if attachment.filename == "notes.txt":
            raise RuntimeError("boom")
        return real(attachment, budget)  # type: ignore[return-value]

    monkeypatch.setattr(check, "judge", judge)
    raw = ATTACH_TRAILING_PART_FILENAME_IDNA.replace(b"--B\r\nContent-Type: application", b"--B\r\nContent-Type: text/plain\r\nContent-Disposition: attachment; filename=notes.txt\r\n\r\nhi\r\n--B\r\nContent-Type: application", 1)
    hits = {h.symbol: h for h in check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))}
    assert hits[ERROR].detail == "notes.txt: RuntimeError: boom"
    assert hits[BANNED].action is Action.REJECT


def test_random_malformed_parameters_never_hide_the_exe_or_the_text() -> None:
    """What the fuzzer found, in every field of the message: nothing raises, the .exe and the link are seen."""
    rng = random.Random(16)
    keys = ["name", "filename", "charset", "boundary", "x", "name*", "name*0", "name*1", "name*0*", "filename*", "filename*0*", "charset*", "boundary*", "boundary*1*", "x*0", "x*", "x*00", "x*-1"]
    values = ['"a"', "a", "utf-8''a%2Eexe", "idna''a", "''a", "'''", '"\\"', '""', "a\x00b''c", "punycode''%ff%fe", "rot13''a", "hex''zz", "zlib''x", "utf-7''+", "%zz"]
    for _ in range(300):
        params = "; ".join(f"{rng.choice(keys)}={rng.choice(values)}" for _ in range(rng.randint(1, 4)))
        where = rng.choice(["attachment", "disposition", "top", "text"])
        top = 'multipart/mixed; boundary="B"' + ("; " + params if where == "top" else "")
        text = "text/html" + ("; " + params if where == "text" else "")
        ctype = "application/octet-stream" + ("; " + params if where == "attachment" else "")
        disposition = ('attachment; filename="a.exe"; ' + params) if where == "disposition" else 'attachment; filename="a.exe"'
        raw = (f"From: a@b.c\r\nMIME-Version: 1.0\r\nContent-Type: {top}\r\n\r\n--B\r\nContent-Type: {text}\r\n\r\n"
               f'<a href="http://x.top/">x</a>\r\n--B\r\nContent-Type: {ctype}\r\nContent-Disposition: {disposition}\r\n'
               "Content-Transfer-Encoding: base64\r\n\r\nTVqQAAMAAAAEAAAA\r\n--B--\r\n").encode("latin-1")
        found = [({a.filename, *a.names}, a.data.read(2)) for a in attachments([raw])]
        assert any("a.exe" in each and head == b"MZ" for each, head in found), (params, where, found)
        result = extract(raw)
        assert (result.error, result.uris) == ("", ["http://x.top/"]), (params, where)
