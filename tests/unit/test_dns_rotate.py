"""resolv.conf's ``options rotate``: milterd's own UDP client asks the nameservers in turn.

With rotate set, every question went to dnspython's resolver, which gives the nameserver it picks first the
whole deadline: with one of two nameservers down, the questions it was picked for failed (DNSBL_TEMPFAIL,
SPF_TEMPERROR…) after the whole [dns] timeout, where a down nameserver is otherwise left at once."""

from __future__ import annotations

import io
from typing import Callable

import dns.nameserver
import dns.resolver
import pytest

from milterd import dns as milterd_dns
from milterd.config import DnsSection
from tests.unit.test_dns_fastpath import Handler, Server, closed_port, no_dnspython, serve, zone

__all__ = ["serve"]  # the fixture, imported for the tests below


def from_resolv_conf(monkeypatch: pytest.MonkeyPatch, *servers: Server | str) -> milterd_dns.Resolver:
    """A resolver of ``[dns] nameservers = []``, built from a resolv.conf with ``options rotate`` naming
    *servers* (their ports put in afterwards: resolv.conf has none)."""
    read = dns.resolver.Resolver.read_resolv_conf

    def resolv_conf(self: dns.resolver.Resolver, f: object = None) -> None:
        read(self, io.StringIO("nameserver 127.0.0.1\noptions rotate\n"))
        self.nameservers = [dns.nameserver.Do53Nameserver(*milterd_dns.parse_nameserver(s if isinstance(s, str) else s.nameserver))
                            for s in servers]

    monkeypatch.setattr(dns.resolver.Resolver, "read_resolv_conf", resolv_conf)
    resolver = milterd_dns.Resolver(DnsSection(nameservers=[], timeout=5.0, cache_size=100))
    assert resolver._resolver.rotate
    return resolver


def test_rotate_in_resolv_conf_keeps_milterd_s_client() -> None:
    configured = dns.resolver.Resolver(configure=False)
    configured.read_resolv_conf(io.StringIO("nameserver 127.0.0.1\nnameserver 127.0.0.2\noptions rotate\n"))
    assert configured.rotate
    assert milterd_dns._udp_servers(configured) == [(2, ("127.0.0.1", 53)), (2, ("127.0.0.2", 53))]


def test_a_down_nameserver_is_left_at_once_under_rotate(serve: Callable[[Handler], Server], monkeypatch: pytest.MonkeyPatch) -> None:
    good = serve(zone)
    resolver = from_resolv_conf(monkeypatch, closed_port(), good)
    no_dnspython(resolver)  # dnspython's resolver waited the whole deadline on the down one
    answers = [resolver.query(f"n{i}.test", "A") for i in range(6)]
    assert [a.status for a in answers] == ["nxdomain"] * 6
    assert len(good.queries("udp")) == 6


def test_each_nameserver_is_asked_first_in_turn(serve: Callable[[Handler], Server], monkeypatch: pytest.MonkeyPatch) -> None:
    first, second = serve(zone), serve(zone)
    resolver = from_resolv_conf(monkeypatch, first, second)
    for i in range(4):
        assert resolver.query(f"n{i}.test", "A").status == "nxdomain"
    assert len(first.queries("udp")) == 2 and len(second.queries("udp")) == 2


def test_a_silent_nameserver_once_demoted_is_not_asked_first_in_its_turn(serve: Callable[[Handler], Server], monkeypatch: pytest.MonkeyPatch) -> None:
    # Rotation turned over the demoted one too: it started every other question, each waiting half the timeout.
    silent, good = serve(lambda q, t: []), serve(zone)
    resolver = from_resolv_conf(monkeypatch, silent, good)
    resolver.timeout = 0.4
    for i in range(6):
        assert resolver.query(f"n{i}.test", "A").status == "nxdomain"
    # The first question only, and whether it is down; then it is last until the demotion ends.
    assert [q.question[0].name.to_text() for q in silent.queries("udp")] == ["n0.test.", "localhost."]
    assert len(good.queries("udp")) == 6
