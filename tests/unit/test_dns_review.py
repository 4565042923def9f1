"""milterd.dns under forged replies (RFC 5452): a fake nameserver on 127.0.0.1 sends crafted
dnspython messages to our UDP client."""

from __future__ import annotations

import socket
import threading
import time
import types
from typing import Any, Iterator

import dns.message
import dns.rcode
import dns.rrset
import pytest

import milterd.dns
from milterd.config import DnsSection
from milterd.dns import Resolver


@pytest.fixture
def nameserver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5.0)
    yield sock
    sock.close()


def _forged_for(query: dns.message.Message) -> bytes:
    """A reply with the query's id from the nameserver's address and port, for another question:
    it passes the id check and is parsed, then dropped."""
    forged = dns.message.make_response(dns.message.make_query("evil.test", "A"))
    forged.answer.append(dns.rrset.from_text("evil.test.", 300, "IN", "A", "203.0.113.66"))
    forged.id = query.id
    return forged.to_wire()


class FakeClock:
    """milterd.dns's time.monotonic(), moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def test_flood_of_forged_replies_does_not_hold_the_caller_past_its_deadline(nameserver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forged datagrams arriving faster than the client reads them (an off-path attacker spraying
    the port; here each one takes 10 ms to read) must not keep it reading after the deadline."""
    read = milterd.dns._reply_to
    clock = FakeClock()  # the client's: a read takes 10 ms of it, whatever the machine's speed
    monkeypatch.setattr(milterd.dns, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    reads: list[float] = []  # the clock when each datagram was read

    def slow_read(wire: bytes, pending: dict[int, tuple[int, dns.message.Message]]) -> Any:
        reads.append(clock.now)
        clock.now += 0.01
        return read(wire, pending)

    monkeypatch.setattr(milterd.dns, "_reply_to", slow_read)

    def flood() -> None:
        wire, client = nameserver.recvfrom(65535)
        datagram = _forged_for(dns.message.from_wire(wire))
        for _ in range(60):
            nameserver.sendto(datagram, client)

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    resolver = Resolver(DnsSection(nameservers=[f"127.0.0.1:{nameserver.getsockname()[1]}"], timeout=0.2, cache_size=10))
    deadline = clock.now + 0.2
    answer = resolver.query("a.test", "A")
    thread.join()
    assert (answer.status, answer.error) == ("error", "timeout")
    # Past the deadline, one datagram per question (and the one there at the deadline's last look): not the other 40.
    assert len([at for at in reads if at >= deadline]) <= 2, reads


def test_replies_queued_by_the_deadline_are_still_taken(nameserver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bound on reading after the deadline keeps the real replies that had already arrived
    (here the client is busy reading the first until past the deadline)."""
    read = milterd.dns._reply_to

    def slow_read(wire: bytes, pending: dict[int, tuple[int, dns.message.Message]]) -> Any:
        time.sleep(0.15)
        return read(wire, pending)

    monkeypatch.setattr(milterd.dns, "_reply_to", slow_read)

    def answer_all() -> None:
        asked = [nameserver.recvfrom(65535) for _ in range(3)]
        for wire, client in asked:
            query = dns.message.from_wire(wire)
            reply = dns.message.make_response(query)
            reply.answer.append(dns.rrset.from_text(query.question[0].name, 300, "IN", "A", "192.0.2.1"))
            nameserver.sendto(reply.to_wire(), client)

    thread = threading.Thread(target=answer_all, daemon=True)
    thread.start()
    resolver = Resolver(DnsSection(nameservers=[f"127.0.0.1:{nameserver.getsockname()[1]}"], timeout=0.2, cache_size=10))
    answers = resolver.query_many([("a.test", "A"), ("b.test", "A"), ("c.test", "A")])
    thread.join()
    assert [(a.name, a.records) for a in answers] == [(n, ("192.0.2.1",)) for n in ("a.test", "b.test", "c.test")]


# --- TTL of an answer reached through a CNAME chain -------------------------------------

SOA = "test. 600 IN SOA ns.test. hostmaster.test. 1 3600 600 86400 120"


def _serve_forever(sock: socket.socket, *records: str, rcode: int = 0, soa: bool = False) -> None:
    """Answer every query on *sock* with *records* (zone-file lines) in the answer section
    (and the zone's SOA in the authority section), until the socket is closed."""
    def run() -> None:
        while True:
            try:
                wire, client = sock.recvfrom(65535)
            except OSError:
                return
            reply = dns.message.make_response(dns.message.from_wire(wire))
            reply.set_rcode(rcode)
            for text in records:
                reply.answer.append(_rrset(text))
            if soa:
                reply.authority.append(_rrset(SOA))
            sock.sendto(reply.to_wire(), client)

    threading.Thread(target=run, daemon=True).start()


def _rrset(text: str) -> dns.rrset.RRset:
    name, ttl, rdclass, rdtype, data = text.split(None, 4)
    return dns.rrset.from_text(name, int(ttl), rdclass, rdtype, data)


def _resolver(nameserver: socket.socket) -> Resolver:
    return Resolver(DnsSection(nameservers=[f"127.0.0.1:{nameserver.getsockname()[1]}"], timeout=1.0, cache_size=10))


def test_answer_through_a_cname_is_kept_only_for_the_shortest_ttl_of_the_chain(nameserver: socket.socket) -> None:
    """A DKIM selector CNAMEd to an ESP (CNAME TTL 60, key TTL 300): once the CNAME expires it may
    point elsewhere, so the key is kept 60 s, as dnspython's own cache keeps it (ChainingResult.minimum_ttl)."""
    _serve_forever(
        nameserver,
        "sel._domainkey.example.test. 60 IN CNAME sel.dkim.esp.test.",
        'sel.dkim.esp.test. 300 IN TXT "v=DKIM1; p=AAAA"',
    )
    resolver = _resolver(nameserver)
    before = time.monotonic()
    answer = resolver.query("sel._domainkey.example.test", "TXT")
    assert (answer.status, answer.records, answer.ttl) == ("ok", ("v=DKIM1; p=AAAA",), 60.0)
    expires = resolver.cache.expiry(("sel._domainkey.example.test", "TXT"))
    assert expires is not None and expires <= time.monotonic() + 60
    assert expires >= before + 59
    # dnspython's resolver (the fallback) gives the same answer.
    assert resolver._resolve("sel._domainkey.example.test", "TXT", 1.0) == answer


def test_cname_chain_minimum_is_taken_over_every_link(nameserver: socket.socket) -> None:
    _serve_forever(
        nameserver,
        "a.test. 3600 IN CNAME b.test.",
        "b.test. 30 IN CNAME c.test.",
        "c.test. 3600 IN A 192.0.2.1",
    )
    resolver = _resolver(nameserver)
    assert resolver.query("a.test", "A").ttl == 30.0
    assert resolver._resolve("a.test", "A", 1.0).ttl == 30.0


def test_cname_with_ttl_zero_is_not_cached(nameserver: socket.socket) -> None:
    """RFC 1035 §3.2.1: a zero TTL is used for the transaction in progress only."""
    _serve_forever(nameserver, "a.test. 0 IN CNAME b.test.", "b.test. 300 IN A 192.0.2.1")
    resolver = _resolver(nameserver)
    answer = resolver.query("a.test", "A")
    assert (answer.status, answer.ttl) == ("ok", 0.0)
    assert not resolver.cached("a.test", "A")


def test_nodata_through_a_cname_is_kept_no_longer_than_the_cname(nameserver: socket.socket) -> None:
    """The SOA (negative TTL 120) bounds the "no" for the CNAME's target; the CNAME (TTL 30)
    bounds how long the question's name keeps leading there."""
    _serve_forever(nameserver, "a.test. 30 IN CNAME b.test.", soa=True)
    resolver = _resolver(nameserver)
    answer = resolver.query("a.test", "A")
    assert (answer.status, answer.ttl) == ("nodata", 30.0)
    assert resolver._resolve("a.test", "A", 1.0) == answer


def test_nxdomain_through_a_cname_is_kept_no_longer_than_the_cname(nameserver: socket.socket) -> None:
    _serve_forever(nameserver, "a.test. 30 IN CNAME gone.test.", rcode=dns.rcode.NXDOMAIN, soa=True)
    resolver = _resolver(nameserver)
    answer = resolver.query("a.test", "A")
    assert (answer.status, answer.ttl) == ("nxdomain", 30.0)
    assert resolver._resolve("a.test", "A", 1.0) == answer


def test_negative_answer_through_a_long_lived_cname_keeps_the_soa_bound(nameserver: socket.socket) -> None:
    _serve_forever(nameserver, "a.test. 3600 IN CNAME gone.test.", rcode=dns.rcode.NXDOMAIN, soa=True)
    resolver = _resolver(nameserver)
    assert resolver.query("a.test", "A").ttl == 120.0
    assert resolver._resolve("a.test", "A", 1.0).ttl == 120.0
