"""The header check on hand-made and on CPython's deliberately malformed messages: symbols, never a crash."""

from __future__ import annotations

import email.utils
import time

import pytest

from milterd.checks.headers import _QUOTED_OR_COMMENT, Headers, address_list_problem, bad_encoded_words, date_problem
from milterd.config import Config
from milterd.message.model import Envelope, Session, Spool
from milterd.services import Services
from tests.harness.corpora import cpython_email_messages


def judge(headers: list[tuple[str, bytes]], mail_args: dict | None = None) -> dict[str, str]:
    check = Headers(Services(config=Config()))
    envelope = Envelope(spool=Spool(1024), headers=headers, mail_args=mail_args or {})
    return {hit.symbol: hit.detail for hit in check.on_eoh(Session(), envelope)}


GOOD = [
    ("From", b"Alice <alice@example.org>"),
    ("To", b"Bob <bob@example.com>, undisclosed-recipients:;"),
    ("Subject", b"=?utf-8?q?caf=C3=A9?="),
    ("Date", email.utils.formatdate().encode()),
    ("Message-ID", b"<abc@example.org>"),
]


def test_good_headers_emit_nothing() -> None:
    assert judge(GOOD) == {}


def test_no_from_and_two_subjects() -> None:
    found = judge([h for h in GOOD if h[0] != "From"] + [("Subject", b"again")])
    assert "HDR_FROM_MISSING" in found and found["HDR_DUPLICATE"] == "Subject"


@pytest.mark.parametrize(
    ("name", "value", "symbol"),
    [
        ("From", b"alice", "HDR_FROM_INVALID"),
        ("From", b"Alice <alice@>", "HDR_FROM_INVALID"),
        ("From", b"Security <sec@=?utf-8?q?bank.test?=>", "HDR_FROM_INVALID"),  # decoded where it stands by clients
        ("From", b"=?iso-2022-jp?B?am9rb0Bycy4xMjgubmUuanA=?=@example.org", "HDR_FROM_INVALID"),
        ("To", b"Bob <=?utf-8?q?bob?=@example.com>", "HDR_TO_INVALID"),
        # Blanks, a comment or a domain literal beside it (found by review).
        ("From", b"Bank <sec@ =?utf-8?q?bank.test?=>", "HDR_FROM_INVALID"),
        ("From", b"Bank <sec@(x)=?utf-8?q?bank.test?=>", "HDR_FROM_INVALID"),
        ("From", b"<a@[(]>, sec@=?utf-8?q?bank.test?=", "HDR_FROM_INVALID"),
        ("From", b"sec@paypal.(c)=?utf-8?b?Y29tLmV2aWwudGVzdA==?=", "HDR_FROM_INVALID"),  # beside a dot of the domain
        ("From", b"Bank <sec@bank .=?utf-8?q?test?=>", "HDR_FROM_INVALID"),
        ("Date", b"yesterday at noon", "HDR_DATE_INVALID"),
        ("Message-ID", b"no-brackets@example.org", "HDR_MSGID_INVALID"),
        ("To", b"Bob <bob@", "HDR_TO_INVALID"),
        ("Subject", b"=?utf-8?b?!!!?=", "HDR_ENCODED_WORD_INVALID"),
        ("Subject", b"=?no-such-charset?q?hi?=", "HDR_ENCODED_WORD_INVALID"),
        ("Subject", b"caf\xc3\xa9", "HDR_8BIT"),
        ("Subject", b"a\x00b", "HDR_NUL"),
    ],
)
def test_bad_headers(name: str, value: bytes, symbol: str) -> None:
    headers = [h for h in GOOD if h[0] != name] + [(name, value)]
    assert symbol in judge(headers)


def test_smtputf8_allows_8bit() -> None:
    headers = [h for h in GOOD if h[0] != "Subject"] + [("Subject", "café".encode())]
    assert "HDR_8BIT" not in judge(headers, {"SMTPUTF8": None})


def test_date_skew() -> None:
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    assert date_problem(email.utils.formatdate(time.time() + 86400 * 2), now, 43200, 7 * 86400) == "future"
    assert date_problem(email.utils.formatdate(time.time() - 86400 * 30), now, 43200, 7 * 86400) == "past"
    assert date_problem("Mon, 1 Jan 2024 00:00:00 -0000", now, 1e12, 1e12) == ""


def test_encoded_words() -> None:
    assert bad_encoded_words("=?utf-8?q?ok?= and =?iso-8859-1?b?Y2Fm6Q==?=") == ""
    assert bad_encoded_words("=?utf-8?q?unterminated")
    assert bad_encoded_words("=?utf-8?b?/w==?=")  # 0xff is not UTF-8


def test_malformed_corpus_never_crashes() -> None:
    for path in cpython_email_messages():
        raw = path.read_bytes().replace(b"\r\n", b"\n")
        head = raw.split(b"\n\n", 1)[0]
        headers: list[tuple[str, bytes]] = []
        for line in head.split(b"\n"):
            if line[:1] in (b" ", b"\t") and headers:
                headers[-1] = (headers[-1][0], headers[-1][1] + b"\n" + line)
            elif b":" in line:
                name, _, value = line.partition(b":")
                headers.append((name.decode("latin-1"), value.strip()))
        assert "HDR_PARSE_ERROR" not in judge(headers), path.name


@pytest.mark.parametrize("value", [
    '"=?utf-8?q?Alice?=@home" <alice@example.org>',  # in a quoted display name
    "alice@example.org (=?utf-8?q?x?=@y)",  # in a comment
    "=?utf-8?q?Alice?=<alice@example.org>",  # a display name touching the angle bracket
    "alice@example.org, =?utf-8?q?Bob?= <bob@example.com>",
    "alice@[192.0.2.1], =?utf-8?q?Bob?= <bob@example.com>",
    "Dr. =?utf-8?q?Bob?= Jr. <bob@example.com>",
    "=?utf-8?q?bob@example.com?= <bob@example.com>",  # an "@" inside the encoded display name (RFC 2047 wants =40)
    "=?utf-8?q?bob@example.com?=<bob@example.com>",
])
def test_an_encoded_word_beside_the_addresses_is_no_problem(value: str) -> None:
    assert address_list_problem("From", value) == ""


@pytest.mark.parametrize("value", [
    "sec@=?utf-8?q?bank.test?=", "Bank <sec@=?utf-8?q?bank.test?=>", "=?utf-8?q?sec?=@bank.test",
    "Bank <sec@bank.=?utf-8?q?test?=>", "=?utf-8?q?x@y?=sec@bank.test",
])
def test_an_encoded_word_in_the_address_is_a_problem(value: str) -> None:
    assert address_list_problem("From", value).startswith("encoded-word in the address")


@pytest.mark.parametrize("value", ['=?"' + "\\\"" * 16000, "=?(" + "\\(" * 16000, '=?"abc\\'])
def test_an_unclosed_quote_or_comment_runs_to_the_end(value: str) -> None:
    # One match to the end, not a failed one from each '"' after it: '"\' repeated cost 3 s for 32 KB.
    found = _QUOTED_OR_COMMENT.match(value, 2)
    assert found is not None and found.end() == len(value)
