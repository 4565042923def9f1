"""A Subject whose tag is already there in an RFC 2047 encoded-word is not tagged again (review 15)."""

from __future__ import annotations

import pytest

from milterd.message.policy import tag_subject


@pytest.mark.parametrize(
    "subject",
    [
        "=?utf-8?q?=5BSPAM=5D_foo?=",
        "=?UTF-8?B?W1NQQU1dIGZvbw==?=",
        " =?utf-8?q?=5BSPAM=5D?= =?utf-8?q?_foo?=",
        "=?utf-8?q?=5BSPAM=5D?=\n =?utf-8?q?_foo?=",
    ],
)
def test_encoded_tag_is_not_added_again(subject: str) -> None:
    assert tag_subject(subject, "[SPAM]") == []


def test_plain_and_untagged_subjects_as_before() -> None:
    assert tag_subject("[SPAM] foo", "[SPAM]") == []
    assert [e.value for e in tag_subject("=?utf-8?q?caf=C3=A9?=", "[SPAM]")] == ["[SPAM] =?utf-8?q?caf=C3=A9?="]
    assert [e.value for e in tag_subject("foo [SPAM]", "[SPAM]")] == ["[SPAM] foo [SPAM]"]


def test_fix_a_tag_that_makes_the_first_line_too_long_is_folded_after() -> None:
    long_line = "x" * 985  # "Subject: " and this: 994 octets, under 998; tagged, 1,001
    [edit] = tag_subject(long_line, "[SPAM]")
    # Postfix broke the 1,001-octet line where it is long (CRLF and a space inside the word), another Subject.
    assert edit.value == "[SPAM]\n " + long_line
    assert [e.value for e in tag_subject("x" * 980, "[SPAM]")] == ["[SPAM] " + "x" * 980]  # 996 octets: one line
