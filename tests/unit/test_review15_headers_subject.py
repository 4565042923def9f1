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
