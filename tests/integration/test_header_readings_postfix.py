"""Header readings of the thirtieth and thirty-first sessions, sent through the real Postfix: charsets read as
mail clients read them (Outlook's ISO-2022-JP, GBK under the GB2312 label, a character split between two
encoded-words), header rules on the value without its surrounding blanks, and From and Date fields that
RFC 5322 does not allow.  tests/unit/test_iso2022jp_clients.py, test_charset_supersets.py and
test_checks_headers.py hold the same readings in process; here the milter is given what Postfix passes on."""

from __future__ import annotations

import base64
import uuid
from typing import Callable

import pytest

from tests.conftest import NO_CHECKS, message, with_sections
from tests.harness.stack import Stack, row_for
from tests.unit.test_header_rule_edges import RULES

pytestmark = pytest.mark.integration




@pytest.fixture(scope="module")
def stack(make_stack: Callable[..., Stack]) -> Stack:
    return make_stack(with_sections(NO_CHECKS, {"checks": {"headers": {"enabled": True}}}), rules={"local.toml": RULES})


def word(charset: str, data: bytes) -> str:
    return f"=?{charset}?B?{base64.b64encode(data).decode()}?="


ENCODED = {
    "outlook-iso-2022-jp": (word("ISO-2022-JP", b"\x1b$B-!2q5D\x1b(B"), "①会議"),  # NEC row 13, as Outlook writes it
    "gbk-under-gb2312": (word("gb2312", "朱镕基".encode("gbk")), "朱镕基"),
    # A character split between two words (RFC 2047 §5 forbids it; clients read it whole): not malformed (32nd review).
    "split-utf-8": (word("utf-8", "日本".encode()[:4]) + " " + word("utf-8", "日本".encode()[4:]), "日本"),
}


@pytest.mark.parametrize("case", sorted(ENCODED))
def test_a_subject_clients_read_is_read(stack: Stack, case: str) -> None:
    encoded, shown = ENCODED[case]
    tag = uuid.uuid4().hex[:8]
    assert stack.send(message(subject=f"{encoded} {tag}")) == {}
    row = row_for(stack, f"{shown} {tag}")  # the logged Subject is the one the client shows, not U+FFFD
    assert "HDR_ENCODED_WORD_INVALID" not in row["symbols"], row["symbols"]


FIELDS = {
    "from-group-of-none": ({"From": '"service@paypal.com":;'}, "HDR_FROM_INVALID"),
    "from-two-mailboxes-no-sender": ({"From": "a@example.org, b@example.org"}, "HDR_FROM_MULTIPLE"),
    "date-asctime": ({"Date": "Sun Dec  6 13:26:00 2026"}, "HDR_DATE_INVALID"),
}


@pytest.mark.parametrize("case", sorted(FIELDS))
def test_a_field_rfc_5322_does_not_allow_is_named(stack: Stack, case: str) -> None:
    fields, symbol = FIELDS[case]
    tag = f"{case} {uuid.uuid4().hex[:8]}"
    stack.send(message(subject=tag, headers=fields))
    assert symbol in row_for(stack, tag)["symbols"]


def test_the_same_fields_written_well_are_not_named(stack: Stack) -> None:
    tag = f"well-formed {uuid.uuid4().hex[:8]}"
    stack.send(message(subject=tag, headers={"From": "a@example.org, b@example.org", "Sender": "a@example.org",
                                             "Date": "Sun, 6 Dec 2026 13:26:00 CET"}))
    assert not {"HDR_FROM_INVALID", "HDR_FROM_MULTIPLE", "HDR_DATE_INVALID"} & set(row_for(stack, tag)["symbols"])


@pytest.mark.parametrize("subject", [b"\tWIN a prize", b"\r\n WIN a prize", b"  WIN a prize"], ids=["tab", "fold", "two-spaces"])
def test_a_header_rule_anchored_at_the_start_sees_the_value_trimmed(stack: Stack, subject: bytes) -> None:
    tag = uuid.uuid4().hex[:8]
    raw = message(subject="x").replace(b"Subject: x", b"Subject:" + subject + b" " + tag.encode())
    stack.send(raw)
    [row] = [r for r in stack.milterd.log_json() if tag in (r["subject"] or "")]  # logged with its blanks
    assert "SUBJ_STARTS_WIN" in row["symbols"]


def test_a_character_split_between_encoded_words_is_read_whole(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:8]
    stack.send(message(subject=f"=?utf-8?b?0LLQuNA=?= =?utf-8?b?sNCz0YDQsA==?= {tag}"))
    assert "SUBJ_VIAGRA_RU" in row_for(stack, f"виагра {tag}")["symbols"]
