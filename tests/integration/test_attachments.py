"""The attachment policy through the real Postfix: what is refused names the file, clean mail passes.

The DNS checks are off and the resolver is a closed loopback port: only the
attachment policy decides here.
"""

from __future__ import annotations

import io
import smtplib
import zipfile
from email.message import EmailMessage
from typing import Any, Callable

import pytest

from tests.conftest import NO_CHECKS, with_sections
from tests.harness.stack import Stack

pytestmark = pytest.mark.integration

PE = b"MZ\x90\x00\x03\x00\x00\x00" + b"\x00" * 500
SECTIONS = with_sections(
    NO_CHECKS,
    {
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": 0.5},
        "checks": {"attachments": {"enabled": True, "mismatch_action": "quarantine"}},
    },
)


def zipped(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return buffer.getvalue()


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


def row_for(stack: Stack, subject: str) -> dict[str, Any]:
    for row in stack.milterd.log_json():
        if row["subject"] == subject:
            return row
    raise AssertionError(f"no log row for {subject}")


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
