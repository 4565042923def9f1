"""The From field's mailboxes (thirtieth session's review): a group of no member whose name holds an "@"
("service@paypal.com":;) passed, and DMARC, finding no domain, scored nothing; a From of several mailboxes
without a Sender field (RFC 5322 §3.6.2; Rspamd's MULTIPLE_FROM) scored nothing either."""

from __future__ import annotations

import pytest

from milterd.checks.headers import Headers
from milterd.config import Config
from milterd.message.model import Envelope, Session, Spool
from milterd.services import Services


def hits(*headers: tuple[str, bytes]) -> dict[str, str]:
    fields = [("Date", b"Sun, 06 Dec 2026 12:00:00 +0000"), ("Message-ID", b"<1@example.org>"), *headers]
    found = Headers(Services(config=Config())).on_eoh(Session(), Envelope(spool=Spool(1024), headers=fields))
    return {hit.symbol: hit.detail for hit in found if hit.symbol.startswith("HDR_FROM")}


@pytest.mark.parametrize("value", [b'"service@paypal.com":;', b"(service@paypal.com) PayPal:;", b"undisclosed-recipients:;"])
def test_a_from_of_no_mailbox_is_invalid(value: bytes) -> None:
    assert hits(("From", value)) == {"HDR_FROM_INVALID": f"{value.decode()}: no address"}


@pytest.mark.parametrize("value", [b"PayPal <service@paypal.com>, x@evil.test", b"a@x.org, b@y.org", b"Staff: a@x.org, b@y.org;"])
def test_several_mailboxes_without_a_sender_is_flagged(value: bytes) -> None:
    assert hits(("From", value)) == {"HDR_FROM_MULTIPLE": "2 mailboxes in one From, no Sender"}
    assert hits(("From", value), ("Sender", b"secretary@x.org")) == {}


@pytest.mark.parametrize("value", [b"Alice <alice@example.org>", b'"a@b" <c@example.org>', b'"Smith, A" <a@example.org>', b"Staff: a@x.org;"])
def test_one_mailbox_is_fine(value: bytes) -> None:
    assert hits(("From", value)) == {}


@pytest.mark.parametrize("value", [b"Sunday, December 6, 2026 1:26 PM", b"Sun Dec 6 13:26:39 2026", b"Sun, 6 Dec 2026 13:26:39",
                                   b"Sun, 6-Dec-2026 13:26:39 +0000", b"Sun, 6 Dec 2026 13.26.39 +0000", b"Sun, 6 Dec 2026 13:26:39 +0000 garbage",
                                   b"Sun, 6 Dec 2026 13:26:39 Etc/UTC", b"Sun, 6 Dec 2026 13:26:39 GMT+1"])
def test_a_date_that_is_no_rfc5322_date_time_is_invalid(value: bytes) -> None:
    """Review 10: the stdlib's guesser took these as dates (SpamAssassin's INVALID_DATE flags each)."""
    found = Headers(Services(config=Config())).on_eoh(Session(), Envelope(spool=Spool(1024), headers=[
        ("From", b"a@example.org"), ("Message-ID", b"<1@example.org>"), ("Date", value)]))
    assert [hit.symbol for hit in found] == ["HDR_DATE_INVALID"]


@pytest.mark.parametrize("value", [b"Sun, 06 Dec 2026 12:00:00 +0000", b"6 Dec 26 12:00 GMT", b"Sun , 6 Dec 2026 12 : 00 : 00 -0000 (UTC)",
                                   b"sun, 06 dec 2026 12:00:00 Z", b"Sun, 6 Dec 2026 9:05:00 EST", b"Sun, 06 Dec 2026\r\n 12:00:00 +0000",
                                   b"(x (y) z) Sun, 06 Dec 2026 12:00:00 +0000", b"Sun, 06 Dec 2026 12:00:00 +0000 (a (b) c)",  # nested comments
                                   b"Sun, 06 Dec 2026 13:00:00 +0100 ((nested))", b"Sun, 06 Dec 2026 13:00:00 +0100 (CET (Central European Time))",
                                   b"Sun, 06 Dec 2026 13:00:00 CET", b"Sun, 06 Dec 2026 21:00:00 JST", b"Sun, 06 Dec 2026 12:00:00 BST",
                                   b"Sun, 06 Dec 2026 12:00:00 UTC"])  # zone names SpamAssassin's INVALID_DATE lets be
def test_obsolete_but_legal_dates_stay_valid(value: bytes) -> None:
    found = Headers(Services(config=Config().with_changes({"checks.headers.date_past": 10 * 365 * 86400.0, "checks.headers.date_future": 10 * 365 * 86400.0}))).on_eoh(
        Session(), Envelope(spool=Spool(1024), headers=[("From", b"a@example.org"), ("Message-ID", b"<1@example.org>"), ("Date", value)]))
    assert [hit.symbol for hit in found] == []
