"""Structures Thunderbird reads into an attachment, sent through the real Postfix (twenty-ninth session's fixes).

tests/unit/test_attachments_review29.py holds the same messages in process; here they go through Postfix's
smtpd and cleanup first, so what the milter is given is what Postfix passes on, and each must be refused
naming the file.
"""

from __future__ import annotations

import base64
import smtplib
import urllib.parse
import uuid
from typing import Callable

import pytest

from tests.harness.stack import Stack, row_for
from tests.integration.test_attachments import SECTIONS
from tests.unit.test_attachments_review29 import ENCODED, mixed
from tests.unit.test_zip_offset_past_end import overstating_zip

pytestmark = pytest.mark.integration

JS_PART = b'Content-Type: application/octet-stream; name="invoice.js"\r\nContent-Transfer-Encoding: base64\r\n\r\n' + ENCODED
INNER = b"From: b@example.org\r\nContent-Type: application/octet-stream; name=\"setup.js\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + ENCODED
DIGEST_INNER = (b"From: b@example.org\r\nSubject: invoice\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"in\"\r\n\r\n"
                b"--in\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--in\r\n" + JS_PART + b"--in--\r\n")
FOLDED_NAME = (b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=utf-8''"
               + urllib.parse.quote("evil.\u017fcr".encode()).encode() + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + ENCODED)

FORMS: dict[str, tuple[bytes, str]] = {
    "delimiter-ending-in-form-feed": (mixed(JS_PART, b"\x0c"), "invoice.js: banned extension .js"),
    "base64-comma-encoding": (mixed(b'Content-Type: message/rfc822; name="invoice.eml"\r\nContent-Transfer-Encoding: base64,x\r\n\r\n'
                                    + base64.encodebytes(INNER).replace(b"\n", b"\r\n")), "invoice.eml/setup.js: banned extension .js"),
    "content-name-field": (mixed(b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment\r\nContent-Name: invoice.js\r\n"
                                 b"Content-Transfer-Encoding: base64\r\n\r\n" + ENCODED), "invoice.js: banned extension .js"),
    "question-mark-multipart": (mixed(JS_PART).replace(b"multipart/mixed; boundary=zz", b"x?multipart/mixed; boundary=zz"),
                                "invoice.js: banned extension .js"),
    "digest-part-without-type": (b"From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary=\"dg\"\r\n\r\n"
                                 b"--dg\r\n\r\n" + DIGEST_INNER + b"\r\n--dg--\r\n", "invoice.js: banned extension .js"),
    "extension-windows-folds": (mixed(FOLDED_NAME), "banned extension"),
    # Thirty-first session: a directory overstating a described member's size, over an evil.exe's local header.
    "zip-directory-overstating-a-size": (mixed(b'Content-Type: application/zip; name="invoice.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
                                               + base64.encodebytes(overstating_zip()).replace(b"\n", b"\r\n")),
                                         "invoice.zip/evil.exe: banned extension .exe"),
    # Thirty-second session: no extension in any name (Thunderbird opens it as attachment.js), and a name Gecko's
    # SanitizeFileName makes invoice.js (a tab dropped from the extension).
    "unnamed-javascript-part": (mixed(b"Content-Type: application/javascript\r\nContent-Disposition: attachment\r\n"
                                      b"Content-Transfer-Encoding: base64\r\n\r\n" + ENCODED), "banned extension .js"),
    "name-with-a-tab-in-its-extension": (mixed(b"Content-Type: application/octet-stream\r\nContent-Disposition: attachment; "
                                               b"filename*=utf-8''invoice.j%09s\r\nContent-Transfer-Encoding: base64\r\n\r\n" + ENCODED),
                                         "banned extension .js"),
}


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(SECTIONS)


@pytest.mark.parametrize("form", sorted(FORMS))
def test_a_file_thunderbird_would_show_is_refused_through_postfix(stack: Stack, form: str) -> None:
    raw, detail = FORMS[form]
    title = f"{form} {uuid.uuid4().hex[:8]}"
    head, _, body = raw.partition(b"\r\n\r\n")
    raw = head + f"\r\nTo: bob@example.com\r\nSubject: {title}\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>".encode() + b"\r\n\r\n" + body
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw)
    assert info.value.smtp_code == 550, info.value.smtp_error
    assert detail in info.value.smtp_error.decode("utf-8", "replace")
    assert not stack.sink.with_subject(title)
    logged = row_for(stack, title)
    assert logged["action"] == "reject" and detail in logged["details"]["ATTACH_BANNED"]


def test_a_zip_whose_directory_points_past_its_end_is_judged_at_once(stack: Stack) -> None:
    """Thirty-first session's fuzzing: the search for members the directory leaves out ran one byte a read up
    to the offset (2**32: half an hour of a worker's CPU, and Postfix's milter timeout for the client)."""
    from tests.unit.test_zip_offset_past_end import lying_zip

    title = f"lying zip {uuid.uuid4().hex[:8]}"
    part = (b'Content-Type: application/zip; name="report.zip"\r\nContent-Transfer-Encoding: base64\r\n\r\n'
            + base64.encodebytes(lying_zip(0xFFFFFFFE)).replace(b"\n", b"\r\n"))
    head, _, body = mixed(part).partition(b"\r\n\r\n")
    raw = head + f"\r\nTo: bob@example.com\r\nSubject: {title}\r\nMessage-ID: <{uuid.uuid4().hex}@example.org>".encode() + b"\r\n\r\n" + body
    assert stack.send(raw) == {}
    assert stack.sink.wait(1, match=lambda m: title in m.header("Subject"))
    assert row_for(stack, title)["action"] == "accept"
