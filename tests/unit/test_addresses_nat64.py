"""An IPv4 client an IPv6-only MX sees through NAT64/SIIT (``64:ff9b::a.b.c.d``) is judged as that IPv4
address by every check, not only by greylisting (found by review: the DNS lists asked the IPv6 nibble name,
SPF failed the sender's ip4: range, reverse DNS asked ip6.arpa)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import Milter
import pytest

from milterd.addresses import client_networks, embedded_ipv4_network
from milterd.config import load_config
from milterd.milter.adapter import unmapped
from milterd.tuning import unscored

from .test_adapter_pipeline_review import make_conf, make_pipeline, negotiate


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
    assert [str(n) for n in client_networks(["64:ff9b::c633:6400/120", "2001:db8::/32"])] == ["64:ff9b::c633:6400/120", "198.51.100.0/24", "2001:db8::/32"]


@pytest.mark.parametrize("entry", ["198.51.100.0/24", "64:ff9b::c633:6400/120"])
def test_a_nat64_client_is_trusted_by_an_entry_of_either_form(entry: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = make_conf(tmp_path)
    conf.write_text(conf.read_text().replace("trusted_networks = []", f'trusted_networks = ["{entry}"]'))
    services, pipeline = make_pipeline(conf)
    try:
        ctx = negotiate(pipeline, monkeypatch, address="64:ff9b::c633:6401")
        session = ctx.getpriv().session
        assert (session.client_addr, session.family, session.trusted) == ("198.51.100.1", "inet", True)
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()


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
