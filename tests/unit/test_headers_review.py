"""Header check review: RFC 5322 forms of legitimate mail that must not score (obsolete dates, CFWS, encoded-words)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from milterd.checks.headers import Headers, address_list_problem, date_problem
from milterd.config import Config
from milterd.message.model import Envelope, Session, Spool
from milterd.services import Services

NOW = datetime(2026, 12, 2, 12, 0, 0, tzinfo=timezone.utc)
HOUR, WEEK = 3600.0, 7 * 86400.0


def judge(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    check = Headers(Services(config=Config()))
    envelope = Envelope(spool=Spool(1024), headers=headers, mail_args={})
    return {hit.symbol: hit.detail for hit in check.on_eoh(Session(), envelope)}


def with_header(name: str, value: bytes) -> list[tuple[str, bytes]]:
    good = [("From", b"Alice <alice@example.org>"), ("To", b"bob@example.com"), ("Subject", b"hi"),
            ("Date", b"Wed, 02 Dec 2026 11:00:00 +0000"), ("Message-ID", b"<abc@example.org>")]
    return [h for h in good if h[0] != name] + [(name, value)]


@pytest.mark.parametrize(
    "value",
    [
        "Wed , 02 Dec 2026 11:00:00 +0000",  # obs-day-of-week: CFWS before the comma (RFC 5322 §4.3)
        "(sent) Wed, 02 Dec 2026 11:00:00 +0000",  # CFWS before the date-time
        "Wed, 02 Dec 2026 (local) 12:00:00 +0100",  # a comment inside
        "Wed, 2 Dec 126 11:00:00 +0000",  # three-digit year: 126 + 1900 = 2026 (§4.3)
    ],
)
def test_obsolete_dates_of_now_are_not_flagged(value: str) -> None:
    assert date_problem(value, NOW, 12 * HOUR, WEEK) == ""


def test_two_digit_years_follow_rfc5322() -> None:
    """00-49 are 20xx, 50-99 are 19xx (RFC 5322 §4.3): "55" is 1955, far in the past, not 2055 in the future."""
    assert date_problem("Wed, 2 Dec 26 11:00:00 +0000", NOW, 12 * HOUR, WEEK) == ""
    assert date_problem("Fri, 2 Dec 55 11:00:00 +0000", NOW, 12 * HOUR, WEEK) == "past"
    assert date_problem("Thu, 2 Dec 99 11:00:00 +0000", NOW, 12 * HOUR, WEEK) == "past"


def test_broken_dates_still_flagged() -> None:
    assert date_problem("Wed, 2 Dec 1999 11:00:00 +0000", NOW, 12 * HOUR, WEEK) == "past"
    assert date_problem("Thu, 1 Jan 2099 00:00:00 +0000", NOW, 12 * HOUR, WEEK) == "future"
    assert date_problem("yesterday (at noon)", NOW, 12 * HOUR, WEEK) == "invalid"


def test_obsolete_date_header_scores_nothing() -> None:
    assert judge(with_header("Date", b"Wed , 2 Dec 126 11:00:00 +0000 (UTC)")).keys().isdisjoint(
        {"HDR_DATE_INVALID", "HDR_DATE_PAST", "HDR_DATE_FUTURE"})


@pytest.mark.parametrize("value", [b"<abc@example.org> (added by gateway)", b"(id) <abc@[192.0.2.1]>", b"<abc@example.org>\r\n\t(x)"])
def test_message_id_with_comments_is_valid(value: bytes) -> None:
    """msg-id = [CFWS] "<" id-left "@" id-right ">" [CFWS] (RFC 5322 §3.6.4)."""
    assert "HDR_MSGID_INVALID" not in judge(with_header("Message-ID", value))


@pytest.mark.parametrize("value", [b"<abc@example.org> <def@example.org>", b"(c) abc@example.org", b"<abc@example.org> (open"])
def test_bad_message_ids_still_flagged(value: bytes) -> None:
    assert "HDR_MSGID_INVALID" in judge(with_header("Message-ID", value))


@pytest.mark.parametrize(
    "value",
    [
        b'"=?utf-8?B?SsO2cmc=?=" <j@example.org>',  # an encoded-word in quotes: a plain quoted string to RFC 5322
        b"=?utf-8?q?J=C3=B6rg?=<j@example.org>",  # no space before "<": CFWS is optional there
    ],
)
def test_encoded_display_names_are_valid_from(value: bytes) -> None:
    found = judge(with_header("From", value))
    assert "HDR_FROM_INVALID" not in found and "HDR_ENCODED_WORD_INVALID" not in found
    assert "HDR_TO_INVALID" not in judge(with_header("To", value))


def test_broken_encoded_word_in_from_still_scores() -> None:
    """The malformed encoded-word is still named, by HDR_ENCODED_WORD_INVALID."""
    assert "HDR_ENCODED_WORD_INVALID" in judge(with_header("From", b"=?utf-8?q?J=C3=B6rg Smith?= <j@example.org>"))


@pytest.mark.parametrize("value", ['"=?utf-8?q?x?=" <a@>', '"=?utf-8?q?x?=" <>', '=?utf-8?q?x?= a@b.c;'])
def test_bad_addresses_with_encoded_words_still_flagged(value: str) -> None:
    assert address_list_problem("From", value)
