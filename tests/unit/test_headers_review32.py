"""HDR_ENCODED_WORD_INVALID judges adjacent words of one charset together, as clients decode them (32nd review)."""

from __future__ import annotations

import base64

import pytest

from milterd.checks.headers import bad_encoded_words

TEXT = "日本語のテキスト".encode()


def word(data: bytes, charset: str = "utf-8") -> str:
    return f"=?{charset}?b?{base64.b64encode(data).decode()}?="


@pytest.mark.parametrize("value", [
    word(TEXT[:4]) + " " + word(TEXT[4:]),  # split inside 本
    word(TEXT[:4]) + "\t" + word(TEXT[4:10]) + word(TEXT[10:]),
    word(TEXT[:1], "UTF-8") + " " + word(TEXT[1:], "utf-8*ja"),  # the charset's case and language tag aside
    "=?utf-8?q?=E6=97?= =?utf-8?q?=A5?=",
])
def test_a_character_split_between_adjacent_words_is_no_malformed_word(value: str) -> None:
    # Thunderbird and decode_header show it whole; it was HDR_ENCODED_WORD_INVALID (+1) word by word.
    assert bad_encoded_words(value) == ""


@pytest.mark.parametrize(("value", "bad"), [
    (word(TEXT[:4]), word(TEXT[:4])),  # half a character, nothing after it
    (word(TEXT[:4]) + " and " + word(TEXT[4:]), word(TEXT[:4])),  # text between: not one run
    (word(TEXT[:4]) + " " + word(TEXT[4:], "iso-8859-1") + " " + word(b"\xff"), word(TEXT[:4])),  # another charset ends the run
    (word(b"ok") + " " + word(b"\xff\xfe"), word(b"\xff\xfe")),  # the word where the text stops
])
def test_what_no_client_reads_whole_is_still_malformed(value: str, bad: str) -> None:
    assert bad_encoded_words(value) == bad
