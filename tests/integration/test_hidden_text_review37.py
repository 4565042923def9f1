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
