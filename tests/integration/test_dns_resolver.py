"""The resolver and pyspf against a private unbound (and rbldnsd for a DNS list)."""

from __future__ import annotations

from typing import Iterator

import pytest
import spf

from milterd.config import DnsSection
from milterd.dns import Resolver, use_for_spf
from tests.harness.dns import LocalDns


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
    resolver = Resolver(DnsSection(nameservers=[local_dns.nameserver], timeout=2))
    saved = spf.DNSLookup
    try:
        use_for_spf(lambda: resolver)
        assert spf.check2(i="192.0.2.5", s="a@spf.example.test", h="h.example.test")[0] == "pass"
        assert spf.check2(i="198.51.100.5", s="a@spf.example.test", h="h.example.test")[0] == "fail"
    finally:
        spf.DNSLookup = saved
    assert resolver.cache.expiry(("spf.example.test", "TXT")) is not None  # pyspf's TXT answer is in our cache
    assert "spf.example.test. TXT IN" in local_dns.log()
