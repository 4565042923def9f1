"""Address fields read alike on every Python (milterd.content.headertext.addresses).

Pythons with the fix of CVE-2023-27043 (3.11.10 and later, and Debian 12's 3.11.2 since its
deb12u updates) read ``email.utils.getaddresses`` strictly by default: a value they find malformed
gives ``[("", "")]``.  A From of that shape then named no domain and escaped DMARC on those Pythons,
and ``milterd check`` lost the other recipients of a message with one such To.  On CPython 3.11.7
these tests pass on the old code too; on Debian 12's Python the DMARC and offline ones failed.
"""

from __future__ import annotations

import pytest

from milterd.checks import dmarc
from milterd.content.headertext import addresses
from milterd.milter.offline import envelope_from_headers


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("alice@bank.example <x@evil.example>", [("", "alice@bank.example"), ("", "x@evil.example")]),
        ("alice@bank.example)<x@evil.example>", [("", "alice@bank.example"), ("", ""), ("", "x@evil.example")]),
        ("x@evil.example>", [("", "x@evil.example"), ("", "")]),
        ("Alice <alice@a.example>, <bob@b.example>", [("Alice", "alice@a.example"), ("", "bob@b.example")]),
    ],
)
def test_malformed_address_fields_are_read_leniently(value: str, found: list[tuple[str, str]]) -> None:
    assert addresses(value) == found


@pytest.mark.parametrize(
    ("value", "domains"),
    [
        ("alice@bank.example <x@evil.example>", ("bank.example", "evil.example")),
        ("alice@bank.example)<x@evil.example>", ("bank.example", "evil.example")),
        ("x@bank.example>", ("bank.example",)),
    ],
)
def test_a_malformed_from_still_names_its_domains_for_dmarc(value: str, domains: tuple[str, ...]) -> None:
    assert dmarc._from_domains.__wrapped__(value) == domains
    assert dmarc.from_domain(value) == (domains[0] if len(domains) == 1 else None)


def test_offline_recipients_survive_a_malformed_to() -> None:
    headers = [("From", b"alice@example.org"), ("To", b"bob@example.com <carol@example.net>"), ("Cc", b"dave@example.net")]
    assert envelope_from_headers(headers) == ("alice@example.org", ["bob@example.com", "carol@example.net", "dave@example.net"])
