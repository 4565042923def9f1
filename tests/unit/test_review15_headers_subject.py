"""A Subject whose tag is already there in an RFC 2047 encoded-word is not tagged again (review 15)."""

from __future__ import annotations

from email.header import decode_header, make_header

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


# Fortieth review: a subject_tag that is not ASCII ("[СПАМ]") was written raw into an ASCII Subject of mail sent
# without SMTPUTF8 (an 8-bit header it may not carry); an empty Subject was tagged "[SPAM] ", with a trailing blank.
@pytest.mark.parametrize(
    ("subject", "written", "shown"),
    [
        (None, "=?utf-8?b?W9Ch0J/QkNCcXQ==?=", "[СПАМ]"),
        ("", "=?utf-8?b?W9Ch0J/QkNCcXQ==?=", "[СПАМ]"),
        ("plain ascii", "=?utf-8?b?W9Ch0J/QkNCcXQ==?= plain ascii", "[СПАМ] plain ascii"),
        # Before an encoded-word the space is inside the tag's: the blank between two encoded-words is not shown.
        ("=?iso-8859-1?q?caf=E9?= au lait", "=?utf-8?b?W9Ch0J/QkNCcXSA=?= =?iso-8859-1?q?caf=E9?= au lait", "[СПАМ] café au lait"),
        ("Привет", "[СПАМ] Привет", "[СПАМ] Привет"),  # 8-bit already (SMTPUTF8 mail): as it is
    ],
)
def test_a_tag_that_is_not_ascii_is_an_encoded_word_before_an_ascii_subject(subject: str | None, written: str, shown: str) -> None:
    [edit] = tag_subject(subject, "[СПАМ]")
    assert edit.value == written
    assert str(make_header(decode_header(edit.value))) == shown
    assert tag_subject(edit.value, "[СПАМ]") == []  # tagged once


def test_an_empty_subject_is_the_tag_alone() -> None:
    assert [e.value for e in tag_subject("", "[SPAM]")] == ["[SPAM]"]
    assert [e.value for e in tag_subject("  ", "[SPAM]")] == ["[SPAM]"]
    assert [e.value for e in tag_subject("=?utf-8?q?caf=C3=A9?=", "[SPAM]")] == ["[SPAM] =?utf-8?q?caf=C3=A9?="]  # an ASCII tag as before


def test_a_long_subject_folds_after_the_encoded_tag() -> None:
    [edit] = tag_subject("x" * 995, "[СПАМ]")
    assert edit.value == "=?utf-8?b?W9Ch0J/QkNCcXQ==?=\n " + "x" * 995
