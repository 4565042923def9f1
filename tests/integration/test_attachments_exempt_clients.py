"""A banned attachment is refused from an authenticated client and a trusted network too (review, thirty-third
session): the attachment policy skipped both by default, so a stolen password, a local web application or any
host in trusted_networks sent `invoice.pdf.exe` out, clamd's signatures the only stand."""

from __future__ import annotations

import smtplib
from typing import Callable

import pytest

from tests.conftest import with_sections
from tests.harness.messages import zipped
from tests.harness.stack import Stack, row_for
from tests.integration.test_attachments import PE, SECTIONS, mail

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(with_sections(SECTIONS, {"milter": {"trusted_networks": ["10.0.0.0/8"]}}))


@pytest.mark.parametrize(("subject", "client"), [
    ("exe from a login", {"ADDR": "192.0.2.10", "LOGIN": "alice"}),
    ("exe from a trusted network", {"ADDR": "10.1.2.3"}),
])
def test_a_banned_name_is_refused_whoever_sends_it(stack: Stack, subject: str, client: dict[str, str]) -> None:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(mail(subject, ("invoice.pdf.exe", PE, "application/octet-stream")),
                   xclient={"NAME": "[UNAVAILABLE]", "HELO": "client.example.org", **client})
    assert info.value.smtp_code == 550 and b"invoice.pdf.exe" in info.value.smtp_error
    row = row_for(stack, subject)
    assert row["action"] == "reject" and "ATTACH_BANNED" in row["symbols"]
    assert not stack.sink.with_subject(subject)


def test_their_clean_mail_passes_unscored(stack: Stack) -> None:
    stack.send(mail("report from a login", ("report.pdf", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n", "application/pdf")),
               xclient={"ADDR": "192.0.2.10", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org", "LOGIN": "alice"})
    row = row_for(stack, "report from a login")
    assert row["action"] == "accept" and row["auth_user"] == "alice"
    assert stack.sink.with_subject("report from a login")


def test_what_would_be_held_is_refused_so_the_sender_knows(stack: Stack) -> None:
    """A zip past the member limit is quarantined from the outside (limit_action); from a login it was held
    with a 250, the sender never told: refused, naming the file."""
    many = zipped({f"p/{n}.txt": b"x" for n in range(2100)})
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(mail("many files from a login", ("photos.zip", many, "application/zip")),
                   xclient={"ADDR": "192.0.2.10", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org", "LOGIN": "alice"})
    assert info.value.smtp_code == 550 and b"photos.zip" in info.value.smtp_error
    row = row_for(stack, "many files from a login")
    assert row["action"] == "reject" and "ATTACH_ARCHIVE_LIMIT" in row["symbols"]
