"""Text a reader sees that body rules did not (thirty-seventh session's review), through Postfix.

50,001 empty HTML tags before the sentence: markup past the parser's tag bound was
read for its links only, its text never reached the body rules.  A million
zero-width spaces before it: they spent the rules' text budget (max_text), though
a reader sees nothing of them.  Both were delivered; a body rule must refuse both.
"""

from __future__ import annotations

import smtplib
from typing import Callable

import pytest

from tests.conftest import NO_CHECKS, message, with_sections
from tests.harness.stack import Stack

CLIENT = {"ADDR": "198.51.100.7", "NAME": "[UNAVAILABLE]", "HELO": "client.example.org"}
RULES = {"wu.toml": "[[rule]]\nname = \"BODY_WU\"\nbody = '(?i)western union'\nscore = 20\n"}
SENTENCE = "Send money by western union"


@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(with_sections(NO_CHECKS, {"actions": {"quarantine": False}}), rules=RULES)


def refused(stack: Stack, raw: bytes) -> int:
    with pytest.raises(smtplib.SMTPDataError) as info:
        stack.send(raw, xclient=CLIENT)
    return info.value.smtp_code


def html(subject: str, markup: str) -> bytes:
    return message(subject, body=markup + "\r\n", headers={"Content-Type": "text/html; charset=utf-8"})


def test_text_after_fifty_thousand_tags_is_searched(stack: Stack) -> None:
    assert refused(stack, html("control", f"<p>{SENTENCE}</p>")) == 550
    padded = "<i>" * 50_001 + f"<p>{SENTENCE}</p>"
    assert refused(stack, html("tag padding", "\r\n".join(padded[i:i + 900] for i in range(0, len(padded), 900)))) == 550
    row = next(r for r in stack.milterd.log_json() if r["subject"] == "tag padding")
    assert row["action"] == "reject" and "BODY_WU" in row["symbols"]


def test_text_after_a_million_invisible_characters_is_searched(stack: Stack) -> None:
    padding = "\u200b" * 1_100_000
    body = "\r\n".join(padding[i:i + 300] for i in range(0, len(padding), 300)) + f"\r\n{SENTENCE}\r\n"
    assert refused(stack, message("invisible padding", body=body)) == 550
    row = next(r for r in stack.milterd.log_json() if r["subject"] == "invisible padding")
    assert row["action"] == "reject" and "BODY_WU" in row["symbols"]


def test_text_after_a_million_stacked_accents_is_searched(stack: Stack) -> None:
    # Second look: combining marks are not invisible, but a reader sees one smear of a million of them.
    marks = "a" + "\u0301" * 1_100_000
    body = "\r\n".join(marks[i:i + 300] for i in range(0, len(marks), 300)) + f"\r\n{SENTENCE}\r\n"
    assert refused(stack, message("stacked accents", body=body)) == 550


def test_text_past_max_text_is_said_in_the_row(stack: Stack) -> None:
    # Text a reader does not see (a padded text/plain alternative of an HTML message) can still spend max_text: the
    # row says the body rules searched part of the text only, so that an administrator can weigh CUSTOM_TEXT_CUT.
    padding = "\r\n".join(["lorem ipsum dolor sit amet " * 30] * 1_400)
    raw = ("From: Alice <alice@example.org>\r\nTo: Bob <bob@example.com>\r\nSubject: padded alternative\r\n"
           "Date: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <alt@example.org>\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
           f"{padding}\r\n--b\r\nContent-Type: text/html\r\n\r\n<p>{SENTENCE}</p>\r\n--b--\r\n").encode()
    assert stack.send(raw, xclient=CLIENT) == {}
    row = next(r for r in stack.milterd.log_json() if r["subject"] == "padded alternative")
    assert "CUSTOM_TEXT_CUT" in row["symbols"]
