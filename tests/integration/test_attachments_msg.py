"""Outlook message files (.msg) through the real Postfix: a banned file in an attached message inside one, or carried
by a Packager object, is refused naming it; a clean one is delivered."""

from __future__ import annotations

import smtplib
from typing import Callable

import pytest

from tests.harness.outlookmsg import attachment, msg_file, msg_tree, ole10native
from tests.harness.stack import Stack
from tests.integration.test_attachments import PE, SECTIONS, mail, row_for
from tests.unit import test_office_packages as office

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(SECTIONS)


def test_an_exe_in_a_message_attached_to_a_msg_file_is_rejected_naming_it(stack: Stack) -> None:
    inner = msg_tree("Re: the invoice", attachment("invoice.exe", PE))
    outer = msg_file("Fwd: the invoice", attachment(None, message=inner, display_name="Re: the invoice"))
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(mail("msg exe", ("invoice.msg", outer, "application/vnd.ms-outlook")))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Attachment rejected: invoice.msg/Re: the invoice/invoice.exe: banned extension .exe"
    row = row_for(stack, "msg exe")
    assert row["action"] == "reject" and "ATTACH_BANNED" in row["symbols"]
    assert not stack.sink.with_subject("msg exe")


def test_an_exe_a_packager_object_carries_in_a_msg_file_is_rejected(stack: Stack) -> None:
    obj = {"\x01Ole10Native": ole10native("setup.exe", "C:\\setup.exe", PE)}
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(mail("msg package", ("note.msg", msg_file("Note", attachment(None, obj=obj, display_name="Package")), "application/vnd.ms-outlook")))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == "5.7.1 Attachment rejected: note.msg/setup.exe: banned extension .exe"
    assert not stack.sink.with_subject("msg package")


def test_a_pdf_in_a_msg_file_is_delivered(stack: Stack) -> None:
    saved = msg_file("Report", attachment("report.pdf", b"%PDF-1.4\n" + b"0" * 2000))
    stack.send(mail("msg pdf", ("report.msg", saved, "application/vnd.ms-outlook")))
    row = row_for(stack, "msg pdf")
    assert row["action"] == "accept" and not [s for s in row["symbols"] if s.startswith("ATTACH_")]
    assert stack.sink.with_subject("msg pdf")


@pytest.mark.parametrize(("subject", "filename", "document", "path"), [
    ("docx package", "invoice.docx", lambda: office.ooxml("word", office.ole_object("evil.exe", PE)), "invoice.docx/word/embeddings/oleObject1.bin/evil.exe"),
    ("doc package", "invoice.doc", lambda: office.word97("evil.exe", PE), "invoice.doc/ObjectPool/_1234/evil.exe"),
    ("rtf package", "invoice.rtf", lambda: office.package_rtf("evil.exe", PE), "invoice.rtf/Package/evil.exe"),
])
def test_an_exe_an_office_document_embeds_as_a_package_is_rejected(stack: Stack, subject: str, filename: str,
                                                                    document: Callable[[], bytes], path: str) -> None:
    # Word writes a Packager object's file out and runs it on a double click; these were delivered (32nd review).
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(mail(subject, (filename, document(), "application/octet-stream")))
    assert info.value.smtp_code == 550
    assert info.value.smtp_error.decode() == f"5.7.1 Attachment rejected: {path}: banned extension .exe"
    assert row_for(stack, subject)["action"] == "reject"
    assert not stack.sink.with_subject(subject)
