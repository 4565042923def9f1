"""The verdict headers through the real Postfix agree with each other: with add_header switched off, a score at
rewrite_subject tagged the Subject and set X-Spam-Flag: YES while X-Spam-Status said "No" (found by review), so a
Sieve rule matching X-Spam-Status "Yes" missed the message."""

from __future__ import annotations

from typing import Callable

import pytest

from tests.conftest import NO_CHECKS, message, with_sections
from tests.harness.stack import Stack, row_for

pytestmark = pytest.mark.integration

RULES = {"local.toml": "[[rule]]\nname = \"SUBJ_LOTTERY\"\nheader = \"Subject\"\nregex = '(?i)lottery'\nscore = 9\n"}


def test_a_tagged_message_says_yes_in_both_headers(make_stack: Callable[..., Stack]) -> None:
    stack = make_stack(with_sections(NO_CHECKS, {"actions": {"add_header": False, "rewrite_subject": 8.0}}), RULES)
    stack.send(message("You won the lottery"))
    [delivered] = stack.sink.wait(1, match=lambda m: "lottery" in " ".join(m.header("Subject")))
    assert delivered.header("Subject") == ["[SPAM] You won the lottery"]
    assert delivered.header("X-Spam-Flag") == ["YES"]
    [status] = delivered.header("X-Spam-Status")
    assert status.startswith("Yes, score=9.0 required=none tests=")
    assert row_for(stack, "You won the lottery")["action"] == "rewrite_subject"
