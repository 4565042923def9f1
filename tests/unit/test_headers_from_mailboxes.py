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
