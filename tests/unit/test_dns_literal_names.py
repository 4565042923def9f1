"""Names that come from mail are literal: a backslash in one is no escape of DNS's text form (pyspf's expansion
of a sender's local part, ``"ceo\\1"@victim.example``, was a BadEscape: a temporary error, so SPF's fail became
SPF_TEMPERROR and a p=reject DMARC_TEMPFAIL), and a name dnspython refuses does not exist (it was a DNS error).
Through Postfix: tests/integration/test_checks.py."""

from __future__ import annotations

from typing import Any, Callable

import dns.rcode
import dns.rdatatype

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


def test_a_name_found_in_dns_is_asked_as_found(serve: Callable[[Handler], Server]) -> None:
    # A PTR target or an MX host with a space (dnspython writes it mail\032host) was escaped again when asked in
    # turn: forward-confirmed rDNS failed, and SPF's mx mechanism failed the domain's own mail.
    def zone(query: Any, transport: str) -> list[bytes]:
        name, rdtype = query.question[0].name.to_text(), dns.rdatatype.to_text(query.question[0].rdtype)
        records = {
            ("10.2.0.192.in-addr.arpa.", "PTR"): "10.2.0.192.in-addr.arpa. 300 IN PTR mail\\032host.example.",
            ("mx.test.", "MX"): "mx.test. 300 IN MX 10 mail\\032host.example.",
            ("mail\\032host.example.", "A"): "mail\\032host.example. 300 IN A 192.0.2.10",
        }
        found = records.get((name, rdtype))
        return [(response(query, found) if found else response(query, rcode=dns.rcode.NXDOMAIN)).to_wire()]

    resolver = resolver_for(serve(zone))
    try:
        [target] = resolver.query("10.2.0.192.in-addr.arpa", "PTR").records
        [(_, (_, exchange))] = resolver.spf_lookup("mx.test", "MX")
        assert target == exchange == "mail host.example"
        assert resolver.query(target, "A").records == ("192.0.2.10",)
    finally:
        resolver.close()
