"""Names that come from mail are literal: a backslash in one is no escape of DNS's text form (pyspf's expansion
of a sender's local part, ``"ceo\\1"@victim.example``, was a BadEscape: a temporary error, so SPF's fail became
SPF_TEMPERROR and a p=reject DMARC_TEMPFAIL), and a name dnspython refuses does not exist (it was a DNS error).
Through Postfix: tests/integration/test_checks.py."""

from __future__ import annotations

from typing import Callable

import dns.rcode

from milterd.checks.helo import helo_shape
from milterd.dns import literal_name, parses
from tests.unit.test_dns_fastpath import Handler, Server, resolver_for, response
from tests.unit.test_dns_fastpath import serve as serve  # noqa: F401 - the fixture


def test_a_backslash_is_asked_as_itself(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda query, transport: [response(query, rcode=dns.rcode.NXDOMAIN).to_wire()])
    resolver = resolver_for(server)
    try:
        answer = resolver.query('"ceo\\1"._spf.victim.example', "A")
    finally:
        resolver.close()
    assert answer.status == "nxdomain"
    [query] = server.queries()
    assert query.question[0].name.labels[0] == b'"ceo\\1"'  # the octets written, the backslash one of them


def test_a_name_dnspython_refuses_does_not_exist_and_is_not_asked(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda query, transport: [response(query).to_wire()])
    resolver = resolver_for(server)
    try:
        answers = [resolver.query(name, "TXT") for name in ("a" * 64 + ".example", ".".join(["abcdefghij"] * 30), "a..example")]
    finally:
        resolver.close()
    assert [a.status for a in answers] == ["nxdomain"] * 3
    assert server.queries() == []


def test_literal_names_and_what_parses() -> None:
    assert literal_name("a\\b.example") == "a\\\\b.example" and literal_name("a.example") == "a.example"
    assert parses(literal_name('"x\\1".example')) and parses("mail.example") and parses(".")
    assert not parses("a" * 64 + ".example") and not parses("a..b") and not parses(".a")


def test_a_helo_over_253_characters_is_no_name() -> None:
    # Labels of 63 characters or fewer padded it past any DNS name: looked up, a DNS error, HELO_TEMPFAIL 0.
    assert helo_shape(".".join(["a" * 60] * 5) + ".example").kind == "not_fqdn"
    assert helo_shape(".".join(["a" * 60] * 4) + ".example").kind == "fqdn"
