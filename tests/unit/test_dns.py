"""milterd.dns: names, the bounded cache, and real queries against a private unbound."""

from __future__ import annotations

import socket
import time
from typing import Iterator

import pytest

from milterd.config import DnsSection
from milterd.dns import Answer, Resolver, TTLCache, dnsbl_name, observe_cache, parse_nameserver, use_for_spf
from tests.harness.dns import LocalDns


def test_dnsbl_names_ipv4_ipv6_and_mapped() -> None:
    assert dnsbl_name("192.0.2.66", "bl.test") == "66.2.0.192.bl.test"
    assert dnsbl_name("2001:db8::66", "bl.test.") == "6.6.0.0." + "0.0.0.0." * 4 + "0.0.0.0.8.b.d.0.1.0.0.2.bl.test"
    assert dnsbl_name("::ffff:192.0.2.66", "bl.test") == "66.2.0.192.bl.test"
    assert dnsbl_name("not an ip", "bl.test") is None


def test_parse_nameserver() -> None:
    assert parse_nameserver("127.0.0.1") == ("127.0.0.1", 53)
    assert parse_nameserver("127.0.0.1:5300") == ("127.0.0.1", 5300)
    assert parse_nameserver("[::1]:5300") == ("::1", 5300)
    assert parse_nameserver("::1") == ("::1", 53)
    with pytest.raises(ValueError):
        parse_nameserver("resolver.example:53")


def test_cache_is_bounded_and_expires() -> None:
    cache = TTLCache(3)
    for i in range(10):
        cache.put((f"n{i}", "A"), Answer(f"n{i}", "A", "ok", ("192.0.2.1",), ttl=60))
    assert len(cache) == 3
    assert cache.get(("n0", "A")) is None and cache.get(("n9", "A")) is not None
    cache.put(("short", "A"), Answer("short", "A", "ok", ttl=0.05))
    time.sleep(0.1)
    assert cache.get(("short", "A")) is None
    cache.put(("err", "A"), Answer("err", "A", "error"))  # ttl 0: errors are never kept
    assert cache.get(("err", "A")) is None


@pytest.fixture(scope="module")
def local_dns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalDns]:
    server = LocalDns(
        tmp_path_factory.mktemp("dns"),
        ["mail.example.test. 300 IN A 192.0.2.25", 'spf.example.test. TXT "v=spf1 ip4:192.0.2.0/24 -all"', "spf.example.test. MX 10 mail.example.test.", "PTR 192.0.2.10 client.example.test"],
        {"bl.test": ("ip4set", ":127.0.0.2:Listed: $\n192.0.2.66\n")},
    ).start()
    yield server
    server.stop()


def test_queries_through_unbound(local_dns: LocalDns) -> None:
    resolver = Resolver(DnsSection(nameservers=[local_dns.nameserver], timeout=2))
    assert resolver.a("mail.example.test").records == ("192.0.2.25",)
    assert resolver.mx("spf.example.test").records == ("10 mail.example.test",)
    assert resolver.ptr("192.0.2.10").records == ("client.example.test",)
    assert resolver.a("nothing.example.test").status == "nxdomain"
    assert resolver.aaaa("mail.example.test").status == "nodata"
    assert resolver.addresses("mail.example.test").ok
    listed, txt, clean = resolver.query_many([("66.2.0.192.bl.test", "A"), ("66.2.0.192.bl.test", "TXT"), ("1.2.0.192.bl.test", "A")])
    assert listed.records == ("127.0.0.2",) and txt.records == ("Listed: 192.0.2.66",) and clean.status == "nxdomain"


def test_pyspf_asks_our_resolver(local_dns: LocalDns) -> None:
    import spf

    resolver = Resolver(DnsSection(nameservers=[local_dns.nameserver], timeout=2))
    saved = spf.DNSLookup
    try:
        use_for_spf(lambda: resolver)
        assert spf.check2(i="192.0.2.5", s="a@spf.example.test", h="h.example.test")[0] == "pass"
        assert spf.check2(i="198.51.100.5", s="a@spf.example.test", h="h.example.test")[0] == "fail"
    finally:
        spf.DNSLookup = saved
    assert ("spf.example.test", "TXT") in resolver.cache._data
    assert "spf.example.test. TXT IN" in local_dns.log()


def test_resolver_that_never_answers_is_an_error_not_a_hang() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        resolver = Resolver(DnsSection(nameservers=[f"127.0.0.1:{silent.getsockname()[1]}"], timeout=0.3))
        answers = resolver.query_many([("a.example.test", "A"), ("b.example.test", "MX")])
        assert [a.status for a in answers] == ["error", "error"]
        assert resolver.query("c.example.test", "A", deadline=time.monotonic() - 1).error == "timeout"
    finally:
        silent.close()


def test_cache_observer_is_told_of_hits_and_misses() -> None:
    """metrics counts the answer cache through this hook (it used to patch TTLCache.get)."""
    seen: list[bool] = []
    cache = TTLCache(10)
    observe_cache(seen.append)
    try:
        cache.put(("a.test", "A"), Answer("a.test", "A", "ok", ("192.0.2.1",), ttl=60))
        assert cache.get(("a.test", "A")) is not None
        assert cache.get(("b.test", "A")) is None
    finally:
        observe_cache(None)
    assert seen == [True, False]
    assert cache.get(("a.test", "A")) is not None and seen == [True, False]
