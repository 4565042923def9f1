"""Attachment review (twenty-ninth session): structures Thunderbird reads into an attachment that milterd read as
text, so a banned file was delivered unjudged (Thunderbird's libmime, mailnews/mime/src, read by a review).

- a delimiter line ending in a vertical tab or form feed (MimeMultipart_check_boundary strips isspace());
- a MIME field name followed by one of them before its colon (MimeHeaders_get backs up over isspace());
- a transfer encoding ``base64,x`` (its first token ends at a comma too);
- a part of a multipart/digest without Content-Type: message/rfc822 (RFC 2046 §5.1.5, mimemdig.cpp);
- a file named only by ``Content-Name:`` or ``X-Sun-Data-Name:`` (MimeHeaders_get_name falls back to them).
"""

from __future__ import annotations

import base64
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from milterd.message.model import Session
from tests.harness.attachments import attachment_check
from tests.harness.messages import envelope_of

SCRIPT = b'WScript.CreateObject("WScript.Shell").Run("calc");\r\n'
ENCODED = base64.encodebytes(SCRIPT).replace(b"\n", b"\r\n")


@pytest.fixture
def check(tmp_path: Path) -> Any:
    return attachment_check(tmp_path)


def banned(check: Any, raw: bytes) -> list[str]:
    hits = check.on_eom(Session(client_addr="192.0.2.7"), envelope_of(raw))
    return [hit.detail for hit in hits if hit.symbol == "ATTACH_BANNED"]


def mixed(part: bytes, delimiter_end: bytes = b"") -> bytes:
    return (b"From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
            b"--zz\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--zz" + delimiter_end + b"\r\n" + part + b"--zz--\r\n")


@pytest.mark.parametrize("blank", [b"\x0b", b"\x0c", b" \x0c"])
def test_a_delimiter_ending_in_a_vertical_tab_or_form_feed_starts_a_part(check: Any, blank: bytes) -> None:
    part = b'Content-Type: application/octet-stream; name="invoice.js"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + ENCODED
    assert banned(check, mixed(part, blank)) == ["invoice.js: banned extension .js"]


@pytest.mark.parametrize("blank", [b"\x0b", b"\x0c"])
def test_a_field_name_with_a_vertical_tab_or_form_feed_before_its_colon_is_that_field(check: Any, blank: bytes) -> None:
    part = b"Content-Type" + blank + b': application/octet-stream; name="invoice.js"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + ENCODED
    assert banned(check, mixed(part)) == ["invoice.js: banned extension .js"]


@pytest.mark.parametrize("encoding", [b"base64,x", b"base64,"])
def test_a_transfer_encoding_ends_at_a_comma(check: Any, encoding: bytes) -> None:
    inner = b"From: b@example.org\r\nContent-Type: application/octet-stream; name=\"setup.js\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + ENCODED
    part = (b'Content-Type: message/rfc822; name="invoice.eml"\r\nContent-Transfer-Encoding: ' + encoding + b"\r\n\r\n"
            + base64.encodebytes(inner).replace(b"\n", b"\r\n"))
    assert banned(check, mixed(part)) == ["invoice.eml/setup.js: banned extension .js"]


def test_a_digest_part_without_content_type_is_an_attached_message(check: Any) -> None:
    inner = (b"From: b@example.org\r\nSubject: invoice\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"in\"\r\n\r\n"
             b"--in\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--in\r\nContent-Type: application/octet-stream; name=\"invoice.js\"\r\n"
             b"Content-Transfer-Encoding: base64\r\n\r\n" + ENCODED + b"--in--\r\n")
    raw = (b"From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary=\"dg\"\r\n\r\n"
           b"--dg\r\n\r\n" + inner + b"\r\n--dg--\r\n")
    assert banned(check, raw) == ["invoice.js: banned extension .js"]
    # In a multipart/mixed, the same part without Content-Type is text (RFC 2045): nothing to judge.
    assert banned(check, raw.replace(b"multipart/digest", b"multipart/mixed")) == []


@pytest.mark.parametrize("field", [b"Content-Name", b"X-Sun-Data-Name"])
def test_a_file_named_only_by_a_content_name_field_is_judged_by_that_name(check: Any, field: bytes) -> None:
    part = (b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment\r\n" + field + b": invoice.js\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + ENCODED)
    assert banned(check, mixed(part)) == ["invoice.js: banned extension .js"]


@pytest.mark.parametrize("ctype", [b"x?multipart/mixed", b"=?us-ascii?q?multipart/mixed", b"text/plain?multipart/mixed",
                                   b"multipart/mixed,x/y", b"multipart/mixed x/y", b"multipart/mixed/x"])
def test_a_content_type_thunderbird_reads_as_a_multipart_is_followed(check: Any, ctype: bytes) -> None:
    """Thunderbird cuts the type at ``;``, ``,`` or a blank and keeps what follows its last ``?``; the stdlib read
    these as text (or not a multipart), and the parts inside were never parsed."""
    part = b'Content-Type: application/octet-stream; name="invoice.js"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + ENCODED
    raw = mixed(part).replace(b"multipart/mixed; boundary=zz", ctype + b"; boundary=zz")
    assert banned(check, raw) == ["invoice.js: banned extension .js"]


@pytest.mark.parametrize("ctype", [b"x?message/rfc822", b"message/rfc822,x", b"message/rfc822 x/y"])
def test_a_content_type_thunderbird_reads_as_an_attached_message_is_opened(check: Any, ctype: bytes) -> None:
    inner = b"From: b@example.org\r\nContent-Type: application/octet-stream; name=\"invoice.js\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + ENCODED
    assert banned(check, mixed(b"Content-Type: " + ctype + b"\r\n\r\n" + inner)) == ["invoice.js: banned extension .js"]


def test_client_content_type() -> None:
    from milterd.content.mimeparams import client_content_type

    assert client_content_type(" Multipart/Mixed; boundary=x") == "multipart/mixed"
    assert client_content_type("text/plain?multipart/mixed") == "multipart/mixed"
    assert client_content_type("") == ""


def test_a_named_digest_part_without_content_type_is_still_judged_by_its_name(check: Any) -> None:
    """A second look: ``Content-Disposition: attachment; filename="invoice.bat"`` alone in a digest part became an
    attached message (its own name never judged), where it had been a file named invoice.bat."""
    raw = (b"From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary=\"dg\"\r\n\r\n"
           b"--dg\r\nContent-Disposition: attachment; filename=\"invoice.bat\"\r\n\r\n@echo off\r\nstart calc\r\n--dg--\r\n")
    assert banned(check, raw) == ["invoice.bat: banned extension .bat"]


@pytest.mark.parametrize("name", ["evil.\u017fcr", "evil.p\u0131f", "EVIL.\u017fCR"])
def test_an_extension_windows_folds_to_a_banned_one_is_banned(check: Any, name: str) -> None:
    """Windows compares names upper-cased letter by letter: ``.ſcr`` (long s) is ``.SCR`` to it, ``.pıf`` (dotless i)
    ``.PIF``; milterd only lower-cased them, which leaves both as they are."""
    encoded = name.encode("utf-8")
    part = (b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=utf-8''"
            + urllib.parse.quote(encoded).encode() + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + ENCODED)
    details = banned(check, mixed(part))
    assert len(details) == 1 and "banned extension ." in details[0] and details[0].endswith((".scr", ".pif")), details
