"""The attachment policy through the real Postfix: what is refused names the file, clean mail passes.

The DNS checks are off and the resolver is a closed loopback port: only the
attachment policy decides here.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import io
import json
import os
import signal
import smtplib
import threading
import time
from email.message import EmailMessage
from typing import Any, Callable

import pytest

from tests.conftest import NO_CHECKS, with_sections
from tests.harness.messages import smuggled, zipped
from tests.harness.outlookmsg import compound_file, ole10native
from tests.harness.stack import Stack, row_for

pytestmark = pytest.mark.integration

PE = b"MZ\x90\x00\x03\x00\x00\x00" + bytes(52) + (64).to_bytes(4, "little") + b"PE\x00\x00" + bytes(500)  # e_lfanew at 0x3C points at "PE\0\0"
SECTIONS = with_sections(
    NO_CHECKS,
    {
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": 0.5},
        "checks": {"attachments": {"enabled": True, "mismatch_action": "quarantine"}},
    },
)


def mail(subject: str, *files: tuple[str, bytes, str]) -> bytes:
    message = EmailMessage()
    message["From"] = "Alice <alice@example.org>"
    message["To"] = "Bob <bob@example.com>"
    message["Subject"] = subject
    message["Date"] = "Wed, 02 Dec 2026 06:00:00 +0000"
    message["Message-ID"] = f"<{subject.replace(' ', '.')}@example.org>"
    message.set_content("Please see the attached files.\n")
    for name, data, ctype in files:
        maintype, subtype = ctype.split("/")
        message.add_attachment(data, maintype=maintype, subtype=subtype, filename=name)
    return bytes(message)


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(SECTIONS)


def test_exe_in_a_zip_in_a_zip_is_rejected_naming_the_file(stack: Stack) -> None:
    outer = zipped({"inner.zip": zipped({"evil.exe": PE}), "readme.txt": b"hello"})
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(mail("nested zip", ("invoice.zip", outer, "application/zip")))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Attachment rejected: invoice.zip/inner.zip/evil.exe: banned extension .exe"
    row = row_for(stack, "nested zip")
    assert row["action"] == "reject" and "ATTACH_BANNED" in row["symbols"]
    assert row["details"]["ATTACH_BANNED"] == "invoice.zip/inner.zip/evil.exe: banned extension .exe"
    assert not stack.sink.with_subject("nested zip")


def test_a_file_after_megabytes_of_one_character_base64_lines_is_still_judged(stack: Stack) -> None:
    """The attachment reader takes a body's lines a block at a time: 1.4 million 1-character lines
    (4 MB) before the zip must not hide it, nor cut it wrongly."""
    def one_char_lines(data: bytes) -> bytes:
        return b"".join(bytes([c]) + b"\r\n" for c in base64.b64encode(data))

    raw = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: padded zip\r\n"
           b"Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <padded.zip@example.org>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
           b"--b1\r\nContent-Type: application/octet-stream; name=\"padding.bin\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + b"A\r\n" * 1_400_000 + b"--b1x not the boundary\r\n"
           b"--b1\r\nContent-Type: application/zip; name=\"invoice.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + one_char_lines(zipped({"evil.exe": PE})) + b"--b1--\r\n")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw)
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Attachment rejected: invoice.zip/evil.exe: banned extension .exe"
    assert row_for(stack, "padded zip")["details"]["ATTACH_BANNED"] == "invoice.zip/evil.exe: banned extension .exe"


def test_an_exe_in_multiparts_nested_thirty_deep_is_rejected_naming_the_file(stack: Stack) -> None:
    """Multiparts 30 deep (a mail client shows the file as it shows one at 2) used to be past a
    20-level cap: a 1-point ATTACH_ARCHIVE_LIMIT, and the .exe delivered."""
    raw = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: deep exe\r\n"
           b"Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <deep.exe@example.org>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"b0\"\r\n\r\n")
    for level in range(1, 30):
        raw += b"--b%d\r\nContent-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n" % (level - 1, level)
    raw += (b"--b29\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + base64.encodebytes(PE).replace(b"\n", b"\r\n") + b"".join(b"--b%d--\r\n" % level for level in range(29, -1, -1)))
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw)
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Attachment rejected: setup.exe: banned extension .exe"
    row = row_for(stack, "deep exe")
    assert row["action"] == "reject" and "ATTACH_ARCHIVE_LIMIT" not in row["symbols"]
    assert not stack.sink.with_subject("deep exe")


def test_a_long_signed_digest_is_delivered(stack: Stack) -> None:
    """A mailing list's MIME digest of 140 PGP-signed posts: 700 parts, past the 500 decoded, text and
    signatures only. ATTACH_MIME_LIMIT quarantined it (found by review); it is delivered untouched."""
    post = (b"--dd\r\nContent-Type: message/rfc822\r\n\r\nFrom: a@example.org\r\nSubject: post\r\n"
            b"Content-Type: multipart/signed; boundary=sig; protocol=\"application/pgp-signature\"\r\n\r\n"
            b"--sig\r\nContent-Type: text/plain\r\n\r\nhello\r\n--sig\r\nContent-Type: application/pgp-signature; name=\"signature.asc\"\r\n\r\n"
            b"-----BEGIN PGP SIGNATURE-----\r\n--sig--\r\n")
    raw = (b"From: list-request@example.org\r\nTo: Bob <bob@example.com>\r\nSubject: long digest\r\n"
           b"Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <long.digest@example.org>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/digest; boundary=dd\r\n\r\n" + post * 140 + b"--dd--\r\n")
    assert stack.send(raw) == {}
    [delivered] = stack.sink.wait(1, match=lambda m: "long digest" in m.header("Subject"))
    assert delivered.data.count(b"signature.asc") == 140
    row = row_for(stack, "long digest")
    assert row["action"] == "accept" and not [s for s in row["symbols"] if s.startswith("ATTACH_")]


def test_an_exe_behind_the_other_readings_delimiter_in_the_base64_is_rejected(stack: Stack) -> None:
    """boundary=B C is B to Thunderbird, "B C" to Python: a line --B C inside the zip's base64 (which
    Thunderbird decodes past) cut the zip in two for milterd, a 1-point unreadable archive, and the
    .exe after the cut was delivered. Each reading is now parsed on its own."""
    _data, body = smuggled(b"--B C")
    raw = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: two readings\r\n"
           b"Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <two.readings@example.org>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=B C\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
           b"--B\r\nContent-Type: application/zip; name=\"invoice.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + body + b"--B--\r\n")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw)
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Attachment rejected: invoice.zip/evil.exe: banned extension .exe"
    assert not stack.sink.with_subject("two readings")


def test_an_exe_after_more_parts_than_are_read_is_quarantined(stack: Stack) -> None:
    """505 one-line parts before the .exe: past the 500 parts read, it used to be a 1-point
    ATTACH_ARCHIVE_LIMIT, and the .exe delivered. The message is held whole instead."""
    raw = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: many parts\r\n"
           b"Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <many.parts@example.org>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
           + b"--b1\r\nContent-Type: text/plain\r\n\r\nx\r\n" * 505
           + b"--b1\r\nContent-Type: application/octet-stream; name=\"setup.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(PE).replace(b"\n", b"\r\n") + b"--b1--\r\n")
    assert stack.send(raw) == {}
    row = row_for(stack, "many parts")
    assert row["action"] == "quarantine"
    assert row["details"]["ATTACH_MIME_LIMIT"] == "message: more than 500 MIME parts before a file: the files past them not looked at"
    assert not stack.sink.with_subject("many parts")
    listed = stack.milterd.cli("quarantine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [entry for entry in json.loads(listed.stdout) if entry["subject"] == "many parts"]


def quarantined(stack: Stack, subject: str) -> dict[str, Any]:
    """The log row of *subject*, held in the quarantine and not delivered."""
    row = row_for(stack, subject)
    assert row["action"] == "quarantine"
    assert not stack.sink.with_subject(subject)
    listed = stack.milterd.cli("quarantine", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [entry for entry in json.loads(listed.stdout) if entry["subject"] == subject]
    return row


def test_an_exe_six_zips_deep_is_quarantined(stack: Stack) -> None:
    """One zip deeper than archive_max_depth (5) and the .exe was never looked at: a 1-point
    ATTACH_ARCHIVE_LIMIT, delivered. What a limit kept from being looked into is held by default."""
    inner = zipped({"evil.exe": PE})
    for level in range(5):
        inner = zipped({f"l{level}.zip": inner})
    assert stack.send(mail("six zips deep", ("invoice.zip", inner, "application/zip"))) == {}
    row = quarantined(stack, "six zips deep")
    assert row["details"]["ATTACH_ARCHIVE_LIMIT"] == "invoice.zip/l4.zip/l3.zip/l2.zip/l1.zip/l0.zip: archive nested deeper than 5"


def test_an_exe_in_a_base64_attached_message_is_rejected(stack: Stack) -> None:
    """A message/rfc822 part in base64 (RFC 2046 forbids it; Exchange Online sends it, mail clients open it)
    was not looked into: the .exe of the message it holds was a 1-point ATTACH_ARCHIVE_LIMIT, delivered."""
    inner = (b"From: x@example.org\r\nSubject: inner\r\nContent-Type: application/octet-stream; name=evil.exe\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(PE).replace(b"\n", b"\r\n"))
    raw = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: forwarded exe\r\n"
           b"Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <forwarded.exe@example.org>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nsee\r\n"
           b"--b1\r\nContent-Type: message/rfc822; name=\"forwarded.eml\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(inner).replace(b"\n", b"\r\n") + b"--b1--\r\n")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw)
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Attachment rejected: forwarded.eml/evil.exe: banned extension .exe"
    assert row_for(stack, "forwarded exe")["action"] == "reject"


def test_an_exe_in_a_message_saved_in_a_zip_is_rejected(stack: Stack) -> None:
    """An archive's members were listed by their first bytes only: a saved message (.eml) in a zip, which
    Outlook and Thunderbird open with its attachments, hid its .exe and was delivered."""
    inner = (b"From: x@example.org\r\nSubject: inner\r\nContent-Type: application/octet-stream; name=evil.exe\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(PE).replace(b"\n", b"\r\n"))
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(mail("saved message in a zip", ("mails.zip", zipped({"notes.txt": b"hi", "Fwd: invoice.eml": inner}), "application/zip")))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Attachment rejected: mails.zip/Fwd: invoice.eml/evil.exe: banned extension .exe"
    assert row_for(stack, "saved message in a zip")["action"] == "reject"
    assert not stack.sink.with_subject("saved message in a zip")


def test_a_damaged_zip_is_quarantined_and_a_big_deck_delivered(stack: Stack) -> None:
    """A zip whose listing stops at damage (unzip goes on past it) holds files never judged: quarantined.
    An Office document's own parts past archive_max_members only score ATTACH_UNREADABLE: it is delivered."""
    assert stack.send(mail("damaged zip", ("report.zip", b"PK\x03\x04" + b"\x00" * 200, "application/zip"))) == {}
    row = quarantined(stack, "damaged zip")
    assert row["details"]["ATTACH_ARCHIVE_LIMIT"].startswith("report.zip: unreadable zip archive")
    deck = zipped({"[Content_Types].xml": b"<Types/>", **{f"ppt/slides/slide{i}.xml": b"<sld/>" for i in range(2100)}})
    pptx = "application/vnd.openxmlformats-officedocument.presentationml.presentation"
    assert stack.send(mail("big deck", ("deck.pptx", deck, pptx))) == {}
    [delivered] = stack.sink.wait(1, match=lambda m: "big deck" in m.header("Subject"))
    assert b"deck.pptx" in delivered.data
    row = row_for(stack, "big deck")
    assert row["action"] == "accept" and row["details"]["ATTACH_UNREADABLE"].endswith(".xml: past 2000 members, the rest not looked at")


def test_an_exe_named_behind_padding_past_the_field_bound_is_rejected(stack: Stack) -> None:
    """27 KB of parameters before filename=: past the 16 KB of a MIME field that is parsed, whose
    rest used to be skipped (a 1-point ATTACH_ARCHIVE_LIMIT, and the .exe delivered)."""
    padding = b"".join(b";\r\n x%d=\"%s\"" % (i, b"a" * 40) for i in range(600))
    raw = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: padded name\r\n"
           b"Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <padded.name@example.org>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
           b"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\nContent-Disposition: attachment"
           + padding + b";\r\n filename=\"setup.exe\"\r\n\r\n" + base64.encodebytes(PE).replace(b"\n", b"\r\n") + b"--b1--\r\n")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw)
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Attachment rejected: setup.exe: banned extension .exe"
    assert row_for(stack, "padded name")["details"]["ATTACH_BANNED"] == "setup.exe: banned extension .exe"
    assert not stack.sink.with_subject("padded name")


def test_an_executable_whose_type_is_pushed_past_the_fields_bound_is_quarantined(stack: Stack) -> None:
    """64 KB of Content-Disposition fields before the part's type and encoding: past the 64 KB of a part's
    fields that are kept, the unnamed executable was read as text/plain (a 1-point ATTACH_ARCHIVE_LIMIT) and
    delivered. The message is held whole instead."""
    pad = b"Content-Disposition: inline; x=\"" + b"a" * 13000 + b"\"\r\n"
    pad = pad * 5 + b"Content-Disposition: inline; x=\"" + b"a" * (64 * 1024 - 5 * len(pad) - 40) + b"\"\r\n"
    raw = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: padded type\r\n"
           b"Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <padded.type@example.org>\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
           b"--b1\r\n" + pad + b"Content-Type: application/x-msdownload\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(PE).replace(b"\n", b"\r\n") + b"--b1--\r\n")
    assert stack.send(raw) == {}
    row = row_for(stack, "padded type")
    assert row["action"] == "quarantine"
    assert row["details"]["ATTACH_MIME_LIMIT"].startswith("message: MIME fields of a part past 16384 bytes each or 65536 in all")
    assert not stack.sink.with_subject("padded type")


@pytest.mark.parametrize(("subject", "top", "fields"), [
    ("boundary comment", 'multipart/mixed; boundary="B" (comment)', 'Content-Type: application/octet-stream; name="setup.exe"'),
    ("filename comment", "multipart/mixed; boundary=B", 'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename="setup.exe" (comment)'),
    ("duplicate section", "multipart/mixed; boundary=B", 'Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*0="setup.exe"; filename*0="notes.txt"'),
    # A text part that names its file only in a second Content-Type (Content-Disposition) field was read as text.
    ("second type field", "multipart/mixed; boundary=B", 'Content-Type: text/plain\r\nContent-Type: application/octet-stream; name="setup.exe"'),
    ("second disposition", "multipart/mixed; boundary=B", 'Content-Type: text/plain\r\nContent-Disposition: inline\r\nContent-Disposition: attachment; filename="setup.exe"'),
])
def test_an_exe_named_as_thunderbird_reads_the_field_is_rejected(stack: Stack, subject: str, top: str, fields: str) -> None:
    """Fields Thunderbird reads as setup.exe (or as boundary B) that the standard library read
    otherwise: the file was delivered with no ATTACH_* symbol at all (found by fuzzing)."""
    raw = (f"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: {subject}\r\n"
           f"Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '.')}@example.org>\r\nMIME-Version: 1.0\r\n"
           f"Content-Type: {top}\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n--B\r\n{fields}\r\n"
           "Content-Transfer-Encoding: base64\r\n\r\n").encode() + base64.encodebytes(PE).replace(b"\n", b"\r\n") + b"--B--\r\n"
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw)
    assert info.value.smtp_code == 550  # the reply names the first name judged (the stdlib's joins duplicate sections)
    assert info.value.smtp_error.decode().startswith("5.7.1 Attachment rejected: ")
    assert info.value.smtp_error.decode().endswith("setup.exe: banned extension .exe")
    assert not stack.sink.with_subject(subject)


def test_double_extension_is_rejected(stack: Stack) -> None:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(mail("double ext", ("invoice.pdf.scr", PE, "application/octet-stream")))
    assert info.value.smtp_code == 550 and "invoice.pdf.scr" in info.value.smtp_error.decode()
    row = row_for(stack, "double ext")
    assert row["details"]["ATTACH_DOUBLE_EXT"] == "invoice.pdf.scr: double extension .pdf.scr"


def test_a_pdf_that_is_an_executable_is_quarantined(stack: Stack) -> None:
    stack.send(mail("fake pdf", ("statement.pdf", PE, "application/pdf")))
    row = row_for(stack, "fake pdf")
    assert row["action"] == "quarantine"
    assert row["details"]["ATTACH_TYPE_MISMATCH"] == "statement.pdf: declared .pdf, content is a Windows executable (PE)"


def test_clean_attachments_pass(stack: Stack) -> None:
    files = (
        ("report.pdf", b"%PDF-1.4\n" + b"0" * 2000, "application/pdf"),
        ("photos.zip", zipped({"a.txt": b"text", "b/c.csv": b"1,2"}), "application/zip"),
    )
    stack.send(mail("clean files", *files))
    [delivered] = stack.sink.wait(1, match=lambda m: "clean files" in m.header("Subject"))
    assert b"photos.zip" in delivered.data
    row = row_for(stack, "clean files")
    assert row["action"] == "accept" and not [s for s in row["symbols"] if s.startswith("ATTACH_")]


# --- libarchive in a child process ([checks.attachments] archive_process) ------------------
def libarchive_made(tmp_path: Any, format_name: str, files: dict[str, bytes]) -> bytes:
    import libarchive

    path = tmp_path / f"archive.{format_name}"
    with libarchive.file_writer(str(path), format_name) as archive:
        for name, data in files.items():
            archive.add_file_from_memory(name, len(data), data)
    return bytes(path.read_bytes())


def test_a_7z_is_listed_in_a_child_process_and_rejected_naming_the_file(stack: Stack, tmp_path: Any) -> None:
    seven = libarchive_made(tmp_path, "7zip", {"docs/run.js": b"WScript.Echo(1)", "a.txt": b"hi"})
    workers = stack.milterd.workers()
    # Once held as ATTACH_ARCHIVE_LIMIT in a whole-suite run: the listing child crashed (see
    # test_archives_sent_on_concurrent_connections_are_all_listed), fixed; no retry hides it now.
    with pytest.raises(smtplib.SMTPDataError) as refused:
        stack.send(mail("seven zip", ("files.7z", seven, "application/x-7z-compressed")))
    assert refused.value.smtp_code == 550, row_for(stack, "seven zip")
    assert refused.value.smtp_error.decode() == "5.7.1 Attachment rejected: files.7z/docs/run.js: banned extension .js"
    assert stack.milterd.workers() == workers


def concatenated_zips() -> bytes:
    """Two zips end to end, evil.exe in the first: zipfile, unzip and Explorer list the last, 7-Zip the first."""
    return zipped({"evil.exe": PE}) + zipped({"readme.txt": b"hello"})


def tar_compressed(filter_name: str) -> bytes:
    import libarchive  # an optional dependency (the archives extra): imported where used, as libarchive_made does

    buffer = io.BytesIO()
    with libarchive.custom_writer(buffer.write, "ustar", filter_name=filter_name) as archive:
        archive.add_file_from_memory("evil.exe", len(PE), PE)
    return buffer.getvalue()


def lha_archive() -> bytes:
    """An LHA (.lzh) archive holding evil.exe, stored (a level-0 header, method -lh0-)."""
    import struct

    name = b"evil.exe"
    body = struct.pack("<5sIIIBB", b"-lh0-", len(PE), len(PE), 0, 0x20, 0) + bytes([len(name)]) + name + struct.pack("<H", 0)
    return bytes([len(body), sum(body) & 0xFF]) + body + PE + b"\x00"


def libarchive_written(form: str) -> bytes:
    import libarchive  # an optional dependency (the archives extra): imported where used, as libarchive_made does

    buffer = io.BytesIO()
    with libarchive.custom_writer(buffer.write, form) as archive:
        archive.add_file_from_memory("evil.exe", len(PE), PE)
    return buffer.getvalue()


@pytest.mark.parametrize(("subject", "name", "data", "member"), [
    ("zips end to end", "docs.zip", concatenated_zips, "docs.zip/evil.exe"),
    ("tar zstd", "docs.tar.zst", lambda: tar_compressed("zstd"), "docs.tar.zst/evil.exe"),
    ("tar lzma", "docs.tar.lzma", lambda: tar_compressed("lzma"), "docs.tar.lzma/evil.exe"),
    ("tar compress", "docs.tar.Z", lambda: tar_compressed("compress"), "docs.tar.Z/evil.exe"),
    # LZH and cpio were no kind milterd knew, and the gzip's leading zeros were read as an empty tar's end
    # (gunzip gives invoice.zip, which unzip and 7-Zip open).
    ("lzh archive", "invoice.lzh", lha_archive, "invoice.lzh/evil.exe"),
    ("cpio archive", "invoice.cpio", lambda: libarchive_written("cpio_newc"), "invoice.cpio/evil.exe"),
    ("zip after zeros", "invoice.zip.gz", lambda: __import__("gzip").compress(bytes(1024) + zipped({"evil.exe": PE})),
     "invoice.zip.gz/invoice.zip/evil.exe"),
])
def test_an_exe_7zip_opens_in_a_zip_s_hidden_member_or_a_zstd_lzma_or_compress_tar_is_rejected(
        stack: Stack, subject: str, name: str, data: Callable[[], bytes], member: str) -> None:
    # Each was delivered with no symbol at all: zipfile reads only the last of two zips (7-Zip shows the first),
    # and tars compressed other than gzip, bzip2 or xz were never opened (7-Zip opens them all).
    # Held as ATTACH_ARCHIVE_LIMIT now and then (three times in a row in a CI run): the listing child crashed (see
    # test_archives_sent_on_concurrent_connections_are_all_listed), fixed; no retry hides it now.
    try:
        stack.send(mail(subject, (name, data(), "application/octet-stream")))
    except smtplib.SMTPDataError as refused:
        assert refused.smtp_code == 550
        assert refused.smtp_error.decode() == f"5.7.1 Attachment rejected: {member}: banned extension .exe"
        assert row_for(stack, subject)["details"]["ATTACH_BANNED"] == f"{member}: banned extension .exe"
    else:
        raise AssertionError(f"accepted: {row_for(stack, subject)}")


@pytest.fixture(scope="module")
def in_worker_stack(make_stack: Callable[..., Stack]) -> Stack:
    """A stack whose workers list libarchive's kinds themselves (``archive_process = false``)."""
    return make_stack(with_sections(SECTIONS, {"checks": {"attachments": {"archive_process": False}}}))


@pytest.mark.parametrize("where", ["child", "worker"])
def test_archives_sent_on_concurrent_connections_are_all_listed(
        request: pytest.FixtureRequest, where: str) -> None:
    # pymilter takes each connection's Python thread state on whichever libmilter thread serves it; libarchive's read
    # callbacks there ran on another connection's thread state or a freed one. A listing child forked there crashed
    # (SIGSEGV: 38 of 80 of these held as ATTACH_ARCHIVE_LIMIT, and the single-connection CI failure above), and a
    # worker listing them itself crashed (451 for every connection it served).
    stack: Stack = request.getfixturevalue("stack" if where == "child" else "in_worker_stack")
    workers = stack.milterd.workers()
    outcomes: dict[str, str] = {}

    def send_some(sender: int) -> None:
        for number in range(10):
            subject = f"concurrent {where} {sender} {number}"
            name, data, member = (("invoice.zip.gz", gzip.compress(bytes(1024) + zipped({"evil.exe": PE})), "invoice.zip.gz/invoice.zip/evil.exe")
                                  if number % 2 else ("invoice.cpio", libarchive_written("cpio_newc"), "invoice.cpio/evil.exe"))
            try:
                stack.send(mail(subject, (name, data, "application/octet-stream")))
                outcomes[subject] = f"accepted: {row_for(stack, subject)['details']}"
            except smtplib.SMTPResponseException as refused:
                expected = f"5.7.1 Attachment rejected: {member}: banned extension .exe"
                outcomes[subject] = "refused" if (refused.smtp_code, refused.smtp_error.decode()) == (550, expected) else repr(refused)
            except smtplib.SMTPException as failed:
                outcomes[subject] = repr(failed)

    senders = [threading.Thread(target=send_some, args=(sender,)) for sender in range(4)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join()
    assert len(outcomes) == 40
    assert {subject: outcome for subject, outcome in outcomes.items() if outcome != "refused"} == {}
    assert stack.milterd.workers() == workers


def test_a_zip_uuencoded_in_a_plain_text_body_is_opened(stack: Stack) -> None:
    import binascii

    data = zipped({"evil.exe": PE})
    lines = b"".join(binascii.b2a_uu(data[i:i + 45]).replace(b"\n", b"\r\n") for i in range(0, len(data), 45))
    raw = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: uuencoded zip\r\n"
           b"Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <uu.zip@example.org>\r\n\r\nPlease see the invoice.\r\n\r\n"
           b"begin 644 invoice.zip\r\n" + lines + b"`\r\nend\r\n")
    # Thunderbird shows invoice.zip as an attachment; judged by its name alone, it was delivered.
    with pytest.raises(smtplib.SMTPDataError) as refused:
        stack.send(raw)
    assert (refused.value.smtp_code, refused.value.smtp_error.decode()) == (550, "5.7.1 Attachment rejected: invoice.zip/evil.exe: banned extension .exe")
    assert row_for(stack, "uuencoded zip")["details"]["ATTACH_BANNED"] == "invoice.zip/evil.exe: banned extension .exe"


def test_an_arj_archive_nothing_lists_is_held(stack: Stack) -> None:
    header = bytes([30, 11, 1, 0, 0, 0, 2]) + bytes(23)  # ARJ's main header: file type 2
    arj = b"\x60\xea" + len(header).to_bytes(2, "little") + header + b"invoice.arj\0\0" + bytes(8)
    assert stack.send(mail("arj archive", ("invoice.arj", arj, "application/octet-stream"))) == {}
    row = quarantined(stack, "arj archive")  # delivered unjudged before: no kind milterd knew
    assert row["details"]["ATTACH_ARCHIVE_LIMIT"] == "invoice.arj: arj archives cannot be listed here (7-Zip or WinRAR opens it)"


def _listings(data: bytes, name: str, kind: str, limits: Any) -> tuple[Any, Any]:
    from dataclasses import replace

    from milterd.content.archives import list_archive

    return list_archive(name, io.BytesIO(data), kind, replace(limits, child=False)), list_archive(name, io.BytesIO(data), kind, replace(limits, child=True))


def test_the_child_lists_what_the_worker_would(tmp_path: Any) -> None:
    from dataclasses import replace

    from milterd.content.archives import Limits

    seven = libarchive_made(tmp_path, "7zip", {"docs/run.js": b"WScript.Echo(1)", "a.txt": b"hi", "in.zip": zipped({"x.exe": PE})})
    tar = libarchive_made(tmp_path, "ustar", {"x/setup.exe": PE})
    bomb = libarchive_made(tmp_path, "7zip", {"big.tar": libarchive_made(tmp_path, "ustar", {"zeros.bin": b"\x00" * (4 * 1024 * 1024)})})
    # Office documents in tars: their parts share one budget across the children (each child started afresh on it).
    document = libarchive_made(tmp_path, "ustar", {"x.docx": zipped({"[Content_Types].xml": b"", **{f"p{i}.xml": b"" for i in range(15)}})})
    cases = [
        (zipped({f"d{i}.tar": document for i in range(5)}), "reports.zip", "zip", Limits(max_members=20)),
        (seven, "files.7z", "7z", Limits()),
        (zipped({"bundle.tar": tar, "inner.7z": seven}), "outer.zip", "zip", Limits()),
        (bomb, "a.7z", "7z", Limits(max_size=512 * 1024)),
        (seven, "few.7z", "7z", Limits(max_members=2)),
        (seven[: len(seven) // 2], "bad.7z", "7z", Limits()),
        # A saved message comes back whole from the child, for its attachments to be judged.
        (libarchive_made(tmp_path, "ustar", {"fwd.eml": b"Subject: x\r\n\r\nbody\r\n", "a.txt": b"hi"}), "mail.tar", "tar", Limits()),
    ]
    for data, name, kind, limits in cases:
        here, child = _listings(data, name, kind, limits)
        assert child.child_seconds > 0.0099 and here.child_seconds == 0, name  # the listing processes' CPU, counted (10 ms at least)
        # A saved message comes back in a file of its own, whole.
        assert [(path, file.read()) for path, file in child.messages] == [(path, file.read()) for path, file in here.messages], name
        assert replace(child, child_seconds=0, messages=[]) == replace(here, messages=[]), name
    assert [(path, file.read()) for path, file in _listings(cases[-1][0], "mail.tar", "tar", Limits())[1].messages] == [
        ("mail.tar/fwd.eml", b"Subject: x\r\n\r\nbody\r\n")]
    assert [e.path for e in _listings(seven, "files.7z", "7z", Limits())[1].entries] == ["files.7z/docs/run.js", "files.7z/a.txt", "files.7z/in.zip", "files.7z/in.zip/x.exe"]


def test_the_listing_children_of_a_message_share_its_cpu_time(tmp_path: Any) -> None:
    import gzip

    from milterd.checks.attachments import LIMIT
    from milterd.message.model import Session
    from tests.harness.attachments import attachment_check
    from tests.harness.messages import envelope_of

    # Ten .gz attachments, a child each: each counts 10 ms at least, so with 30 ms for all at most three are listed.
    parts = b"".join(b"--zz\r\nContent-Type: application/gzip; name=\"log%d.txt.gz\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" % i
                     + base64.encodebytes(gzip.compress(b"line %d\n" % i)).replace(b"\n", b"\r\n") for i in range(10))
    raw = (b"From: a@example.org\r\nTo: b@example.com\r\nSubject: logs\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
           + parts + b"--zz--\r\n")
    check = attachment_check(tmp_path, "archive_process_seconds = 0.03\n")
    found = {h.symbol: h for h in check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))}
    # The first refused is the second, third or fourth (the detail names the refused in order, cut at 300 characters).
    first = found[LIMIT].detail.split(":")[0]
    assert first in ("log1.txt.gz", "log2.txt.gz", "log3.txt.gz") and "past the CPU time left to listing processes" in found[LIMIT].detail, found[LIMIT].detail


def test_a_damaged_zip_listed_at_once_does_not_list_the_archives_deferred_before_it() -> None:
    import gzip

    from milterd.content.archives import Limits, list_archive

    # ok.zip's gzip waits for the one child of the deferred archives; bad.zip (no end record) is listed by libarchive
    # in a child of its own at once, which listed the waiting gzip too, and then the worker again.
    outer = zipped({"ok.zip": zipped({"a.gz": gzip.compress(b"x")}), "bad.zip": zipped({"evil.exe": PE})[:-22]})
    listing = list_archive("o.zip", io.BytesIO(outer), "zip", Limits(child=True))
    assert [e.path for e in listing.entries] == ["o.zip/ok.zip", "o.zip/ok.zip/a.gz", "o.zip/bad.zip", "o.zip/bad.zip/evil.exe", "o.zip/ok.zip/a.gz/a"]


def test_a_child_forked_by_another_thread_at_once_does_not_hold_up_the_answer(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two libmilter threads listing archives at once: the second fork may happen while the first's
    # pipe is still open in the worker, and that child then holds a copy of its write end until it
    # exits.  The answer is complete when its length says so, not when the pipe ends.
    from milterd.content import archives

    seven = libarchive_made(tmp_path, "7zip", {"a.txt": b"hi", "b.exe": PE})
    expected = archives.list_archive("x.7z", io.BytesIO(seven), "7z", archives.Limits())
    real_pipe = os.pipe
    holders: list[int] = []

    def pipe_also_held_by_another_child() -> tuple[int, int]:
        fds = real_pipe()
        holder = os.fork()
        if holder == 0:  # the other thread's child, still busy: it keeps both ends open
            time.sleep(5)
            os._exit(0)
        holders.append(holder)
        return fds

    monkeypatch.setattr(archives, "CHILD_TIMEOUT", 2.0)
    monkeypatch.setattr(os, "pipe", pipe_also_held_by_another_child)
    listing = archives.Listing()
    budget = archives._Budget(1024 * 1024, 100, child_seconds=30.0)  # noqa: SLF001 - the child's protocol is the subject
    started = time.monotonic()
    try:
        archives._walk_in_child([archives._Job("x.7z", io.BytesIO(seven), "7z", 1)], archives.Limits(), budget, listing)  # noqa: SLF001
    finally:
        for holder in holders:
            os.kill(holder, signal.SIGKILL)
            os.waitpid(holder, 0)
    assert listing.errors == [] and listing.entries == expected.entries
    assert time.monotonic() - started < 2.0


def _segfault(*_args: Any) -> bytes:
    os.kill(os.getpid(), signal.SIGSEGV)
    return b""


def _exit_3(*_args: Any) -> bytes:
    os._exit(3)


def _nonsense(*_args: Any) -> bytes:
    return b"not json"


def _too_much_memory(*_args: Any) -> bytes:
    return bytes(bytearray(2 * 1024**3))  # past the child's address-space limit: MemoryError


def _hang(*_args: Any) -> bytes:
    time.sleep(60)
    return b""


@pytest.mark.parametrize(
    ("work", "error"),
    [
        (_segfault, "the listing process ended with killed by SIGSEGV"),
        (_exit_3, "the listing process ended with status 3"),
        (_nonsense, "the listing process answered nonsense: JSONDecodeError"),
        (_too_much_memory, "the listing process ended with status 1"),
        (_hang, "not listed within 1 s"),
    ],
)
def test_a_child_that_crashes_is_a_limit_and_the_caller_lives_on(tmp_path: Any, monkeypatch: pytest.MonkeyPatch, work: Any, error: str) -> None:
    from milterd.content import archives

    monkeypatch.setattr(archives, "CHILD_TIMEOUT", 1.0)
    seven = libarchive_made(tmp_path, "7zip", {"a.txt": b"hi"})
    listing = archives.Listing()
    budget = archives._Budget(1024 * 1024, 100, child_seconds=30.0)  # noqa: SLF001 - the child's protocol is the subject
    started = time.monotonic()
    archives._walk_in_child([archives._Job("x.7z", io.BytesIO(seven), "7z", 1)], archives.Limits(), budget, listing, work=work)  # noqa: SLF001
    # A crash or a listing past its bounds is a limit (ATTACH_ARCHIVE_LIMIT, held by default): an archive built
    # for it may open in 7-Zip.  An answer that does not parse is milterd's own fault: unreadable.
    expected = {"limits": [], "errors": []}
    expected["errors" if "nonsense" in error else "limits"] = [f"x.7z: unreadable 7z archive ({error})"]
    assert {"limits": listing.limits, "errors": listing.errors} == expected
    assert listing.entries == [] and budget.size == 1024 * 1024
    assert time.monotonic() - started < 10


def test_a_uuencoded_file_and_an_object_past_a_documents_parts_are_rejected(stack: Stack) -> None:
    """Review 34: an invoice.uue carrying invoice.exe (WinRAR opens it as an archive), and a .docx padded past
    archive_max_members with pictures before its Packager object: both refused naming the executable."""
    encoded = b"begin 644 invoice.exe\r\n" + binascii.b2a_uu(PE[:45]).replace(b"\n", b"\r\n") + b"`\r\nend\r\n"
    obj = compound_file({"\x01Ole10Native": ole10native("evil.exe", "C:\\Users\\x\\evil.exe", PE), "\x01CompObj": bytes(20)})
    docx = zipped({"[Content_Types].xml": b"<Types/>", "word/document.xml": b"<w:document/>",
                   **{f"word/media/image{i}.png": b"\x89PNG\r\n\x1a\n" for i in range(2100)}, "word/embeddings/oleObject1.bin": obj})
    cases = [("uue archive", ("invoice.uue", encoded, "application/octet-stream"), "invoice.uue/invoice.exe: banned extension .exe"),
             ("padded docx", ("report.docx", docx, "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
              "report.docx/word/embeddings/oleObject1.bin/evil.exe: banned extension .exe")]
    for subject, attachment, detail in cases:
        with pytest.raises(smtplib.SMTPDataError) as info:
            stack.send(mail(subject, attachment))
        assert info.value.smtp_code == 550 and info.value.smtp_error.decode() == f"5.7.1 Attachment rejected: {detail}"
        assert row_for(stack, subject)["action"] == "reject" and not stack.sink.with_subject(subject)


def test_a_gzipped_uuencoded_file_is_rejected_naming_the_file_it_holds(stack: Stack) -> None:
    """A second look at review 34: libarchive uudecoded files.uue.gz under its gzip filter, and the decoded bytes were
    judged as files.uue: the begin line's invoice.js was delivered unjudged (the same files.uue unzipped was refused)."""
    script = b'var s = new ActiveXObject("WScript.Shell"); s.Run("calc.exe");\r\n'
    lines = b"".join(binascii.b2a_uu(script[i:i + 45]) for i in range(0, len(script), 45)).replace(b"\n", b"\r\n")
    encoded = b"begin 644 invoice.js\r\n" + lines + b"`\r\nend\r\n"
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(mail("gzipped uue", ("files.uue.gz", gzip.compress(encoded), "application/octet-stream")))
    detail = "files.uue.gz/files.uue/invoice.js: banned extension .js"
    assert info.value.smtp_code == 550 and info.value.smtp_error.decode() == f"5.7.1 Attachment rejected: {detail}"
    row = row_for(stack, "gzipped uue")
    assert row["action"] == "reject" and row["details"]["ATTACH_BANNED"] == detail and not stack.sink.with_subject("gzipped uue")


def test_an_exe_behind_bare_cr_line_ends_is_rejected_where_postfix_passes_them_on(make_stack: Callable[..., Stack]) -> None:
    # Thunderbird and the standard library end a line at a bare CR: a delimiter line and a part's fields so
    # written in a text part make an attachment to them.  milterd split lines at LF only: delivered, no symbol,
    # through a Postfix that keeps bare CRs (cleanup_replace_stray_cr_lf = no; Postfix before 3.8.5 and the like).
    stack = make_stack(SECTIONS, postfix_extra={"cleanup_replace_stray_cr_lf": "no"})
    part = (b"--b1\rContent-Type: application/octet-stream; name=\"evil.exe\"\rContent-Disposition: attachment; filename=\"evil.exe\"\r"
            b"Content-Transfer-Encoding: base64\r\r" + base64.b64encode(PE) + b"\r")
    raw = (b"From: alice@example.org\r\nTo: bob@example.com\r\nSubject: bare cr part\r\nMessage-ID: <bare.cr@example.org>\r\n"
           b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
           b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r" + part + b"\r\n--b1--\r\n")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw)
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Attachment rejected: evil.exe: banned extension .exe"
    assert row_for(stack, "bare cr part")["details"]["ATTACH_BANNED"] == "evil.exe: banned extension .exe"
    assert not stack.sink.with_subject("bare cr part")
    # A second look: the multipart named behind a bare CR in the top header section (one Subject field to
    # Postfix, a single text part to the attachment check's shortcut; the standard library reads the multipart).
    top = (b"From: alice@example.org\r\nTo: bob@example.com\r\nMessage-ID: <bare.cr.top@example.org>\r\n"
           b"Subject: bare cr top\rMIME-Version: 1.0\rContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n"
           b"--b1\r\nContent-Type: text/plain\r\n\r\nhello\r\n" + part.replace(b"\r", b"\r\n") + b"--b1--\r\n")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(top)
    assert info.value.smtp_code == 550 and "evil.exe" in info.value.smtp_error.decode()
