"""False positives of the header and MAIL FROM checks on real mail, each pinned by a test.

* A Date with a leap second (second 60, RFC 5322 §3.3) was HDR_DATE_INVALID.
* A Message-ID whose left part is a quoted string (obs-id-left = local-part, RFC 5322 §3.6.4) was
  HDR_MSGID_INVALID.
* The addresses of Japanese mobile carriers (``a..b@docomo.ne.jp``, ``abc.@ezweb.ne.jp``: repeated
  dots, a dot ending the local part) were HDR_FROM_INVALID / HDR_TO_INVALID, and MAIL_FROM_INVALID.

What is really broken is still flagged, with the same detail as before.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

from milterd.checks.headers import Headers, address_list_problem, date_problem, parsed_date
from milterd.checks.sender import Sender, address_problem
from milterd.config import Config
from milterd.message.model import Envelope, Session, Spool
from milterd.services import Services

HOUR, WEEK = 3600.0, 7 * 86400.0
UTC = timezone.utc


def judge(headers: list[tuple[str, bytes]]) -> dict[str, str]:
    check = Headers(Services(config=Config()))
    envelope = Envelope(spool=Spool(1024), headers=headers, mail_args={})
    return {hit.symbol: hit.detail for hit in check.on_eoh(Session(), envelope)}


def with_header(name: str, value: bytes) -> list[tuple[str, bytes]]:
    now = datetime.now(UTC).strftime("%a, %d %b %Y %H:%M:%S +0000").encode()
    good = [("From", b"Alice <alice@example.org>"), ("To", b"bob@example.com"), ("Subject", b"hi"),
            ("Date", now), ("Message-ID", b"<abc@example.org>")]
    return [h for h in good if h[0] != name] + [(name, value)]


# --- 1. leap seconds ---------------------------------------------------------------------------------
LEAP_NOW = datetime(2017, 1, 1, 0, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    "value",
    [
        "Wed, 31 Dec 2016 23:59:60 +0000",  # the brief's example (the day-of-week is not checked)
        "Sat, 31 Dec 2016 23:59:60 +0000",
        "31 Dec 2016 23:59:60 -0000",
        "Sun, 1 Jan 2017 08:59:60 +0900",  # the same leap second in Tokyo's time
        "Sat, 31 Dec 16 23:59:60 +0000 (UTC)",  # with obsolete forms around it
    ],
)
def test_leap_second_is_a_valid_date(value: str) -> None:
    assert date_problem(value, LEAP_NOW, 12 * HOUR, WEEK) == ""


def test_leap_second_is_clamped_to_59_for_comparisons() -> None:
    assert parsed_date("Sat, 31 Dec 2016 23:59:60 +0000") == datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert parsed_date("Sun, 1 Jan 2017 08:59:60 +0900") == datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC)
    # one second past 23:59:59 is not in the future (a zero tolerance shows the comparison is made)
    assert date_problem("Sat, 31 Dec 2016 23:59:60 +0000", datetime(2016, 12, 31, 23, 59, 59, tzinfo=UTC), 0.0, 0.0) == ""
    assert date_problem("Sat, 31 Dec 2016 23:59:60 +0000", LEAP_NOW + timedelta(days=30), 12 * HOUR, WEEK) == "past"
    assert date_problem("Sat, 31 Dec 2016 23:59:60 +0000", LEAP_NOW - timedelta(days=30), 12 * HOUR, WEEK) == "future"


@pytest.mark.parametrize(
    "value",
    ["Sat, 31 Dec 2016 23:59:61 +0000", "Sat, 31 Dec 2016 23:60:00 +0000", "Sat, 31 Dec 2016 24:00:00 +0000",
     "Sat, 32 Dec 2016 23:59:60 +0000", "Sat, 31 Dec 2016 23:59:60 +9999", "Sat, 31 Dec 2016 23:59:600 +0000"],
)
def test_other_impossible_times_are_still_invalid(value: str) -> None:
    assert date_problem(value, LEAP_NOW, 12 * HOUR, WEEK) == "invalid"


def test_leap_second_date_header_scores_nothing() -> None:
    yesterday = (datetime.now(UTC) - timedelta(days=1)).strftime("%a, %d %b %Y 23:59:60 +0000").encode()
    assert judge(with_header("Date", yesterday)).keys().isdisjoint({"HDR_DATE_INVALID", "HDR_DATE_PAST", "HDR_DATE_FUTURE"})


# --- 2. quoted-string left part of a Message-ID -------------------------------------------------------
@pytest.mark.parametrize(
    "value",
    [
        b'<"a b"@host.example>',
        b'<"a@b"@host.example>',  # an @ inside the quotes is part of the left
        b'<"a<b>"@host.example>',
        b'<"a \\" b"@host.example>',  # a quoted-pair
        b'<""@host.example>',  # an empty quoted string is a quoted string
        b'<"a b".c@host.example>',  # obs-local-part: words joined by dots
        b'<x."a b".y@[192.0.2.1]>',
        b'(gateway) <"a b"@host.example> (x)',
        b'<"a\r\n b"@host.example>',  # folded inside the quotes
        '<"caf\u00e9 1"@host.example>'.encode(),
    ],
)
def test_quoted_left_part_is_a_valid_message_id(value: bytes) -> None:
    assert "HDR_MSGID_INVALID" not in judge(with_header("Message-ID", value))


@pytest.mark.parametrize(
    "value",
    [
        b'"a b"@host.example',  # no angle brackets
        b'<"a b">',  # no @
        b'<"a b"@>',  # no right part
        b'<"a b"@host example>',
        b'<"a"b c"@host.example>',
        b'<"a b" c@host.example>',  # words not joined by a dot
        b'<"a\x01b"@host.example>',  # control characters
        b'<"a\x7fb"@host.example>',
        b'<"a\\\x01"@host.example>',
        b'<"a b"@host.example> <"c"@host.example>',
    ],
)
def test_broken_quoted_message_ids_still_flagged(value: bytes) -> None:
    assert "HDR_MSGID_INVALID" in judge(with_header("Message-ID", value))


@pytest.mark.parametrize("value", [b"<a\x01b@host.example>", b"<ab@host\x1b.example>", b"<a\x7f@host.example>", b"<ab@[192.0.2.1\x02]>"])
def test_control_characters_break_an_unquoted_message_id(value: bytes) -> None:
    assert "HDR_MSGID_INVALID" in judge(with_header("Message-ID", value))


# --- 3. Japanese mobile carriers' addresses -----------------------------------------------------------
CARRIER_ADDRESSES = ["a..b@docomo.ne.jp", "abc.@ezweb.ne.jp", "a...b..@docomo.ne.jp", "taro.@softbank.ne.jp"]


@pytest.mark.parametrize(
    "value",
    [*CARRIER_ADDRESSES, "Taro <abc.@ezweb.ne.jp>", '"Yamada, Taro" <a..b@docomo.ne.jp>', "bob@example.com, a..b@docomo.ne.jp",
     "=?utf-8?b?5aSq6YOO?= <abc.@ezweb.ne.jp>", "friends: a..b@docomo.ne.jp, abc.@ezweb.ne.jp;"],
)
def test_carrier_addresses_parse(value: str) -> None:
    for name in ("From", "To", "Cc"):
        assert address_list_problem(name, value) == "", name


@pytest.mark.parametrize(("name", "symbol"), [("From", "HDR_FROM_INVALID"), ("To", "HDR_TO_INVALID"), ("Cc", "HDR_TO_INVALID")])
def test_carrier_addresses_score_nothing(name: str, symbol: str) -> None:
    for address in CARRIER_ADDRESSES:
        assert symbol not in judge(with_header(name, f"Taro <{address}>".encode()))
        assert symbol not in judge(with_header(name, address.encode()))


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("a b@x.jp", "local-part is not dot-atom, quoted-string, or obs-local-part"),  # a space
        ("a..b c@x.jp", "local-part is not dot-atom, quoted-string, or obs-local-part"),
        ("a..b@docomo.ne.jp, c d@x.jp", "local-part is not dot-atom, quoted-string, or obs-local-part"),
        (".abc@x.jp", "local-part is not dot-atom, quoted-string, or obs-local-part"),  # a leading dot: not the carriers' form
        ("a\\b..@x.jp", "local-part is not dot-atom, quoted-string, or obs-local-part"),
        ("a..b", "addr-spec local part with no domain"),
        ("abc.", "addr-spec local part with no domain"),
        ("abc.@", "unparseable (IndexError)"),
        ("a..b@x..jp", "invalid address in address-list"),
    ],
)
def test_broken_addresses_still_flagged_with_the_same_detail(value: str, problem: str) -> None:
    assert address_list_problem("From", value) == problem
    assert address_list_problem("To", value) == problem


def test_broken_from_still_scores() -> None:
    assert "HDR_FROM_INVALID" in judge(with_header("From", b"Taro <a..b>"))
    assert "HDR_TO_INVALID" in judge(with_header("To", b"a..b c@docomo.ne.jp"))


@pytest.mark.parametrize(
    ("address", "problem"),
    [
        *((a, "") for a in CARRIER_ADDRESSES),
        ("a..b@docomo.ne.jp.", ""),
        ("a..b@[192.0.2.1]", "ip_literal"),
        ("abc.@[192.0.2.1]", "ip_literal"),
        ("a..b@docomo", "no_dot"),
        ("abc.@", "invalid"),
        ("abc.", "invalid"),
        ("@docomo.ne.jp", "invalid"),
        (".abc@docomo.ne.jp", "invalid"),
        ("...@docomo.ne.jp", "invalid"),
        ("a..b c@docomo.ne.jp", "invalid"),
        ("a b.@docomo.ne.jp", "invalid"),
        ("a..b@docomo..ne.jp", "invalid"),
        ("a" * 255 + "..@docomo.ne.jp", "invalid"),  # 256 at most (sender.MAX_LOCAL_PART: RFC 5321's 64 is a floor)
        ("a" * 254 + "..@docomo.ne.jp", ""),
        ('"a b".@docomo.ne.jp', "invalid"),
    ],
)
def test_mail_from_carrier_addresses(address: str, problem: str) -> None:
    assert address_problem(address) == problem


def _sender_hits(sender: str) -> list[str]:
    sections: dict[str, Any] = {"checks": {"sender": {"resolve": False}}}
    check = Sender(Services(config=Config.model_validate(sections)))
    envelope = Envelope(spool=Spool(1024))
    envelope.sender = sender
    return [hit.symbol for hit in check.on_mail(Session(), envelope)]


def test_mail_from_carrier_address_scores_nothing() -> None:
    for address in CARRIER_ADDRESSES:
        assert _sender_hits(address) == []
    assert _sender_hits("a..b c@docomo.ne.jp") == ["MAIL_FROM_INVALID"]
    assert _sender_hits("a..b@[192.0.2.1]") == ["MAIL_FROM_IP_LITERAL"]
