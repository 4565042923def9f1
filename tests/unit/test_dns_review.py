"""milterd.dns under forged replies (RFC 5452): a fake nameserver on 127.0.0.1 sends crafted
dnspython messages to our UDP client."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Iterator

import dns.message
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


def test_flood_of_forged_replies_does_not_hold_the_caller_past_its_deadline(nameserver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    """Forged datagrams arriving faster than the client reads them (an off-path attacker spraying
    the port; here each one takes 10 ms to read) must not keep it reading after the deadline."""
    read = milterd.dns._reply_to

    def slow_read(wire: bytes, pending: dict[int, tuple[int, dns.message.Message]]) -> Any:
        time.sleep(0.01)
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
    start = time.monotonic()
    answer = resolver.query("a.test", "A")
    elapsed = time.monotonic() - start
    thread.join()
    assert (answer.status, answer.error) == ("error", "timeout")
    assert elapsed < 0.35  # 60 datagrams read one by one: 0.6 s


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
