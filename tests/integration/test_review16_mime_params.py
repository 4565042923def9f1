"""Review 16 through the real Postfix: one malformed MIME parameter does not switch the attachment policy off.

``x*0="a"; x*="b"`` beside a part's type (or the top-level multipart's) made
the stdlib raise, and the message was judged as having no attachment
(ATTACH_ERROR, 0 points) and delivered with its invoice.exe.  The DNS checks
are off and the resolver is a closed loopback port: only the attachment
policy decides here.
"""

from __future__ import annotations

import smtplib
from typing import Callable

import pytest

from tests.conftest import NO_CHECKS, with_sections
from tests.harness.stack import Stack, row_for

pytestmark = pytest.mark.integration

SECTIONS = with_sections(
    NO_CHECKS,
    {
        "dns": {"nameservers": ["127.0.0.1:9"], "timeout": 0.5},
        "checks": {"attachments": {"enabled": True}},
    },
)
#: An executable's first bytes, base64 (the fuzzer's minimised attach_mixed_cont.eml).
EXE = (
    b"TVqQAAMAAAAEAAAA//8AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n"
    b"AAAAAAAAAFBFAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n"
    b"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==\r\n"
)


def mail(subject: str, top_params: bytes, part_params: bytes, disposition: bytes) -> bytes:
    return (
        b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: " + subject.encode() + b"\r\n"
        b"Date: Wed, 02 Dec 2026 06:00:00 +0000\r\nMessage-ID: <" + subject.replace(" ", ".").encode() + b"@example.org>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"B\"" + top_params + b"\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\nSee attached.\r\n"
        b"--B\r\nContent-Type: application/octet-stream" + part_params + b"\r\n"
        b"Content-Disposition: attachment; " + disposition + b"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + EXE + b"--B--\r\n"
    )


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(SECTIONS)


@pytest.mark.parametrize(("subject", "top_params", "part_params", "disposition"), [
    ("mixed continuation on the part", b"", b'; x*0="a"; x*="b"', b'filename="invoice.exe"'),
    ("mixed continuation on the top level", b'; x*0="a"; x*="b"', b"", b'filename="invoice.exe"'),
    ("idna charset on the file name", b"", b"", b"filename*=idna''invoice.exe"),
])
def test_a_malformed_parameter_does_not_let_the_exe_through(stack: Stack, subject: str, top_params: bytes, part_params: bytes, disposition: bytes) -> None:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(mail(subject, top_params, part_params, disposition))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Attachment rejected: invoice.exe: banned extension .exe"
    row = row_for(stack, subject)
    assert row["action"] == "reject" and "ATTACH_BANNED" in row["symbols"] and "ATTACH_ERROR" not in row["symbols"]
    assert not stack.sink.with_subject(subject)


def test_a_malformed_parameter_on_a_harmless_file_is_delivered(stack: Stack) -> None:
    raw = mail("mixed continuation on a pdf", b"", b'; x*0="a"; x*="b"', b'filename="invoice.pdf"').replace(EXE, b"JVBERi0xLjQK\r\n")
    assert stack.send(raw) == {}
    [delivered] = stack.sink.wait(1, match=lambda m: "mixed continuation on a pdf" in m.header("Subject"))
    assert b'filename="invoice.pdf"' in delivered.data
    row = row_for(stack, "mixed continuation on a pdf")
    assert row["action"] == "accept" and not [s for s in row["symbols"] if s.startswith("ATTACH_")]
