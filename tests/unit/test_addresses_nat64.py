"""An IPv4 client an IPv6-only MX sees through NAT64/SIIT (``64:ff9b::a.b.c.d``) is judged as that IPv4
address by every check, not only by greylisting (found by review: the DNS lists asked the IPv6 nibble name,
SPF failed the sender's ip4: range, reverse DNS asked ip6.arpa)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import Milter
import pytest

from milterd.addresses import embedded_ipv4_network
from milterd.config import load_config
from milterd.message.model import Session
from milterd.milter.adapter import unmapped
from milterd.tuning import unscored

from .test_adapter_pipeline_review import make_conf, make_pipeline, negotiate
from .test_greylist_review28 import greylist_services, rcpt


@pytest.mark.parametrize(
    ("address", "expected"),
    [("64:ff9b::cb00:7107", "203.0.113.7"), ("64:FF9B::203.0.113.7", "203.0.113.7"), ("::ffff:192.0.2.10", "192.0.2.10"),
     ("64:ff9b:1::cb00:7107", "64:ff9b:1::cb00:7107"), ("2001:db8::1", "2001:db8::1"), ("192.0.2.1", "192.0.2.1"),
     # RFC 6052 §3.1: no non-global address is carried in the well-known prefix; never the trusted loopback.
     ("64:ff9b::7f00:1", "64:ff9b::7f00:1"), ("64:ff9b::a00:1", "64:ff9b::a00:1"), ("64:ff9b::c0a8:101", "64:ff9b::c0a8:101")],
)
def test_a_nat64_client_address_is_the_ipv4_address_it_stands_for(address: str, expected: str) -> None:
    assert unmapped(address) == expected


def test_ipv6_written_networks_also_match_as_the_ipv4_network_behind_them() -> None:
    assert embedded_ipv4_network(ipaddress.ip_network("64:ff9b::c633:6400/120")) == ipaddress.ip_network("198.51.100.0/24")
    assert embedded_ipv4_network(ipaddress.ip_network("::ffff:c000:200/120")) == ipaddress.ip_network("192.0.2.0/24")
    assert embedded_ipv4_network(ipaddress.ip_network("64:ff9b::/64")) is None  # wider than the prefix: not one IPv4 network
    assert embedded_ipv4_network(ipaddress.ip_network("192.0.2.0/24")) is None
    assert embedded_ipv4_network(ipaddress.ip_network("64:ff9b::/96")) == ipaddress.ip_network("0.0.0.0/0")  # by arithmetic alone


@pytest.mark.parametrize(
    ("entry", "address", "trusted"),
    [("198.51.100.0/24", "64:ff9b::c633:6401", True), ("64:ff9b::c633:6400/120", "64:ff9b::c633:6401", True),
     # The whole prefix, and a part of it whose first address is not global (second look at the fix: neither matched).
     ("64:ff9b::/96", "64:ff9b::808:808", True), ("64:ff9b::/97", "64:ff9b::808:808", True),
     # A NAT64 entry trusts the clients that come through NAT64, not a direct IPv4 client of the same numbers.
     ("64:ff9b::c000:0/98", "192.168.1.1", False), ("64:ff9b::c633:6400/120", "198.51.100.1", False),
     # An IPv4-mapped entry is the IPv4 network it writes: it matches a client Postfix passes as IPv4 (third look).
     ("::ffff:c633:6400/120", "198.51.100.1", True), ("::ffff:c633:6400/120", "::ffff:198.51.100.1", True)],
)
def test_a_nat64_client_is_trusted_by_an_entry_of_either_form(entry: str, address: str, trusted: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = make_conf(tmp_path)
    conf.write_text(conf.read_text().replace("trusted_networks = []", f'trusted_networks = ["{entry}"]'))
    services, pipeline = make_pipeline(conf)
    try:
        ctx = negotiate(pipeline, monkeypatch, address=address)
        session = ctx.getpriv().session
        assert session.client_addr == unmapped(address) and session.family == "inet"
        assert session.client_addr_sent == ("" if address == unmapped(address) else address)
        assert session.trusted is trusted
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()


@pytest.mark.parametrize("entry", ["64:ff9b::c633:6401", "64:ff9b::c633:6400/120", "198.51.100.1", "198.51.100.0/24"])
def test_a_greylist_whitelist_entry_of_either_form_matches_a_nat64_client(entry: str, tmp_path: Path) -> None:
    # Entries written as NAT64 addresses (copied from Postfix's log) stopped matching once the client was judged as
    # IPv4 (second look at the fix).
    services, check = greylist_services(tmp_path, **{"greylist.whitelist_clients": [entry]})
    try:
        nat64 = Session(client_addr="198.51.100.1", client_addr_sent="64:ff9b::c633:6401")
        assert rcpt(check, nat64, "alice@example.org") == []
        assert rcpt(check, Session(client_addr="203.0.113.9"), "alice@example.org")[0][0] == "GREYLIST"
    finally:
        services.store.close()


def test_whatif_takes_a_row_logged_with_the_nat64_address_as_its_ipv4_client(tmp_path: Path) -> None:
    conf = make_conf(tmp_path)
    conf.write_text(conf.read_text().replace("trusted_networks = []", 'trusted_networks = ["198.51.100.0/24", "127.0.0.0/8"]'))
    milter = load_config(conf).milter
    assert unscored({"client_addr": "64:ff9b::c633:6401", "symbols": {}}, milter)
    assert not unscored({"client_addr": "64:ff9b::c633:6501", "symbols": {}}, milter)
    assert not unscored({"client_addr": "64:ff9b::7f00:1", "symbols": {}}, milter)


def test_a_loopback_address_in_the_nat64_prefix_is_not_the_trusted_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = make_conf(tmp_path)
    conf.write_text(conf.read_text().replace("trusted_networks = []", 'trusted_networks = ["127.0.0.0/8", "::1/128"]'))
    services, pipeline = make_pipeline(conf)
    try:
        ctx = negotiate(pipeline, monkeypatch, address="64:ff9b::7f00:1")
        session = ctx.getpriv().session
        assert (session.client_addr, session.family, session.trusted) == ("64:ff9b::7f00:1", "inet6", False)
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()
