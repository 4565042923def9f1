"""Review 15: MIME fields written with blanks before the colon (``Content-Type : …``).

Thunderbird's libmime backs up over blanks before a field's colon, so such a
part is an attachment to the reader; the attachment policy must see it too.
"""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from milterd.checks.attachments import BANNED, AttachmentPolicy, single_plain_text
from milterd.content.mimeparts import attachments
from milterd.message.model import Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of

PE = b"MZ\x90\x00" + b"\x00" * 300
SEPARATORS = [b" : ", b"\t: ", b" \t :"]


def part_message(sep: bytes) -> bytes:
    """A multipart message whose attachment's MIME fields have *sep* between name and value."""
    encoded = base64.encodebytes(PE).replace(b"\n", b"\r\n")
    return (b"Content-Type: multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--zz\r\nContent-Type" + sep + b"application/octet-stream; name=\"evil.exe\"\r\n"
            b"Content-Disposition" + sep + b"attachment; filename=\"evil.exe\"\r\n"
            b"Content-Transfer-Encoding" + sep + b"base64\r\n\r\n" + encoded + b"--zz--\r\n")


def top_message(sep: bytes) -> bytes:
    """A message whose top-level Content-Type (the multipart) has *sep* between name and value."""
    encoded = base64.encodebytes(PE).replace(b"\n", b"\r\n")
    return (b"Subject: x\r\nContent-Type" + sep + b"multipart/mixed; boundary=zz\r\n\r\n--zz\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
            b"--zz\r\nContent-Type: application/octet-stream; name=\"evil.exe\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            + encoded + b"--zz--\r\n")


@pytest.fixture()
def check(tmp_path: Path) -> AttachmentPolicy:
    return attachment_check(tmp_path)


@pytest.mark.parametrize("sep", SEPARATORS)
def test_part_fields_with_blanks_before_the_colon_are_read(sep: bytes) -> None:
    found = [(a.filename, a.content_type, a.data.read()) for a in attachments([part_message(sep)])]
    assert found == [("evil.exe", "application/octet-stream", PE)]  # base64-decoded: the encoding field read too


@pytest.mark.parametrize("sep", SEPARATORS)
def test_part_with_blanks_before_the_colon_is_banned(check: AttachmentPolicy, sep: bytes) -> None:
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(part_message(sep)))
    assert [(h.symbol, h.detail) for h in hits] == [(BANNED, "evil.exe: banned extension .exe")]


@pytest.mark.parametrize("sep", SEPARATORS)
def test_top_level_content_type_with_blanks_before_the_colon(check: AttachmentPolicy, sep: bytes) -> None:
    envelope = envelope_of(top_message(sep))
    assert envelope.headers[1][0].startswith("Content-Type") and envelope.headers[1][0] != "Content-Type"
    assert not single_plain_text(envelope.headers)  # a multipart, not one text part to skip
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope)
    assert [(h.symbol, h.detail) for h in hits] == [(BANNED, "evil.exe: banned extension .exe")]


def test_other_fields_are_still_left_out() -> None:
    # Only the MIME fields are kept of a part's header: "Subject : …" (or a line without a colon) is not one.
    raw = part_message(b": ").replace(b"--zz\r\nContent-Type: application", b"--zz\r\nSubject : x\r\nno colon here\r\nContent-Type: application")
    assert [a.filename for a in attachments([raw])] == ["evil.exe"]
