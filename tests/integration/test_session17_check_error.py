"""``[milter] on_check_error`` through Postfix: a check that raises on every message (a defect,
injected here by a ``sitecustomize`` that milterd's interpreter loads) either leaves the message
to the other checks (the default: delivered, CHECK_ERROR in its row) or answers 451 4.3.0 at end
of data (tempfail), and nothing is delivered.
"""

from __future__ import annotations

import os
import smtplib
from pathlib import Path
from typing import Any, Callable

import pytest

from tests.conftest import NO_CHECKS, with_sections
from tests.harness.stack import Stack

pytestmark = pytest.mark.integration

#: Loaded by milterd's interpreter before milterd starts (site imports it from PYTHONPATH): the
#: attachment check's end of message raises, as a defect in it or in a library would.
SITECUSTOMIZE = '''
from milterd.checks.attachments import AttachmentPolicy


def _broken(self, session, envelope):
    raise RuntimeError("injected by test_session17_check_error")


AttachmentPolicy.on_eom = _broken
'''

MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: %s\r\n"
           b"Date: Fri, 04 Dec 2026 06:00:00 +0000\r\nMessage-ID: <%s@example.org>\r\n\r\nHello.\r\n")


def broken_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_stack: Callable[..., Stack], setting: str | None) -> Stack:
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    milter: dict[str, Any] = {"on_check_error": setting} if setting else {}
    sections = with_sections(NO_CHECKS, {"milter": milter, "dns": {"nameservers": ["127.0.0.1:9"], "timeout": 0.5},
                                         "checks": {"attachments": {"enabled": True}}})
    stack = make_stack(sections)
    monkeypatch.undo()  # only milterd's interpreter loads it
    return stack


def row_for(stack: Stack, subject: str) -> dict[str, Any]:
    rows = [row for row in stack.milterd.log_json() if row["subject"] == subject]
    assert len(rows) == 1, rows
    return rows[0]


def test_by_default_a_check_that_raises_leaves_the_message_to_the_others(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_stack: Callable[..., Stack]
) -> None:
    stack = broken_stack(tmp_path, monkeypatch, make_stack, None)
    stack.send(MESSAGE % (b"broken check accept", b"broken.accept"))
    row = row_for(stack, "broken check accept")
    assert row["action"] == "accept" and row["details"]["CHECK_ERROR"] == "attachments"
    assert stack.sink.wait(match=lambda m: any("broken check accept" in s for s in m.header("Subject")))


def test_with_tempfail_a_check_that_raises_answers_451_and_nothing_is_delivered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_stack: Callable[..., Stack]
) -> None:
    stack = broken_stack(tmp_path, monkeypatch, make_stack, "tempfail")
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(MESSAGE % (b"broken check tempfail", b"broken.tempfail"))
    assert info.value.smtp_code == 451
    assert info.value.smtp_error.decode() == "4.3.0 Message could not be checked now, try again later"
    row = row_for(stack, "broken check tempfail")
    assert row["action"] == "tempfail" and row["details"]["CHECK_ERROR"] == "attachments"
    assert not stack.sink.with_subject("broken check tempfail")
