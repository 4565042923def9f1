"""A banned file inside Outlook's winmail.dat, through the real Postfix: refused naming it; a clean one delivered."""

from __future__ import annotations

import smtplib
from typing import Callable

import pytest

from tests.harness.stack import Stack
from tests.integration.test_attachments import PE, SECTIONS, mail, row_for
from tests.unit.test_attachments_tnef import file_attachment, tnef

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(SECTIONS)


def test_an_exe_in_winmail_dat_is_rejected_naming_it(stack: Stack) -> None:
    container = tnef(file_attachment("invoice.exe", PE))
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(mail("tnef exe", ("winmail.dat", container, "application/ms-tnef")))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Attachment rejected: winmail.dat/invoice.exe: banned extension .exe"
    row = row_for(stack, "tnef exe")
    assert row["action"] == "reject" and "ATTACH_BANNED" in row["symbols"]
    assert not stack.sink.with_subject("tnef exe")


def test_a_pdf_in_winmail_dat_is_delivered(stack: Stack) -> None:
    container = tnef(file_attachment("report.pdf", b"%PDF-1.4\n" + b"0" * 2000))
    stack.send(mail("tnef pdf", ("winmail.dat", container, "application/ms-tnef")))
    row = row_for(stack, "tnef pdf")
    assert row["action"] == "accept" and not [s for s in row["symbols"] if s.startswith("ATTACH_")]
    assert stack.sink.with_subject("tnef pdf")
