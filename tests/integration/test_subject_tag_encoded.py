"""Through Postfix: a ``subject_tag`` that is not ASCII reaches the reader as written, in a header of ASCII bytes.

The tag "[СПАМ]" was written raw (UTF-8) into the ASCII Subject of mail sent without SMTPUTF8: an 8-bit header
field such mail may not carry, which the next hop's own checks score (HDR_8BIT). It goes in as an RFC 2047
encoded-word now; before a Subject that is an encoded-word itself, with the blank inside the tag's, so that the
reader still sees one between them. The delivered bytes are read from the sink.
"""

from __future__ import annotations

from email.header import decode_header, make_header

import pytest

from tests.conftest import NO_CHECKS, message, with_sections
from tests.harness.stack import Stack

RULES = {"test.toml": '[[rule]]\nname = "TEST_SUBJECT"\nheader = "Subject"\nregex = "REWRITEME"\nscore = 9\n'}


@pytest.fixture(scope="module")
def stack(make_stack) -> Stack:  # type: ignore[no-untyped-def]
    return make_stack(with_sections(NO_CHECKS, {"actions": {"subject_tag": "[СПАМ]"}}), RULES)


@pytest.mark.parametrize(
    ("subject", "shown"),
    [
        ("REWRITEME plain", "[СПАМ] REWRITEME plain"),
        ("=?utf-8?q?REWRITEME_caf=C3=A9?=", "[СПАМ] REWRITEME café"),
    ],
)
def test_a_cyrillic_tag_is_delivered_as_an_encoded_word(stack: Stack, subject: str, shown: str) -> None:
    stack.send(message(subject))
    [delivered] = stack.sink.wait(1, match=lambda m: subject in m.data.decode("ascii", "replace"))
    head = delivered.data.split(b"\r\n\r\n", 1)[0]
    assert head.isascii(), head
    [value] = delivered.header("Subject")
    assert value.startswith("=?utf-8?b?") and str(make_header(decode_header(value))) == shown
    assert delivered.header("X-Spam-Flag") == ["YES"]
