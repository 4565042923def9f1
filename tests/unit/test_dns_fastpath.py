"""milterd.dns: the UDP client that asks cache misses (issue #14) gives the answers dnspython's resolver gives.

A tiny in-process DNS server (a thread on 127.0.0.1, UDP and TCP on one port, built with
dnspython's message API) answers as each test tells it; most tests compare the client's
answer with :meth:`Resolver._resolve`'s (dnspython's ``Resolver.resolve``) for the same reply.
"""

from __future__ import annotations

import socket
import threading
import time
import types
from concurrent.futures import Future
from typing import Callable, Iterator

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

import milterd.dns
from milterd.config import Config, DnsSection
from milterd.dns import EDNS_PAYLOAD, MAX_TTL, Answer, Resolver, observe_cache
from milterd.services import build

#: What the server sends for a query: datagrams (bytes) and, for a tuple ("from-other-port", bytes),
#: one sent from another socket.
Reply = list["bytes | tuple[str, bytes]"]
Handler = Callable[[dns.message.Message, str], Reply]

SOA = "ns.test. hostmaster.test. 1 3600 600 86400 120"


class Server:
    """UDP + TCP DNS on one 127.0.0.1 port, answering through *handler*; records what it was asked."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.asked: list[tuple[str, dns.message.Message]] = []
        self._lock = threading.Lock()
        while True:
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.port = self.udp.getsockname()[1]
            self.tcp = socket.socket()
            try:
                self.tcp.bind(("127.0.0.1", self.port))
                break
            except OSError:
                self.udp.close()
                self.tcp.close()
        self.tcp.listen(16)
        self.other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.other.bind(("127.0.0.1", 0))
        self._stop = False
        self._threads = [threading.Thread(target=self._serve_udp, daemon=True), threading.Thread(target=self._serve_tcp, daemon=True)]
        for thread in self._threads:
            thread.start()

    @property
    def nameserver(self) -> str:
        return f"127.0.0.1:{self.port}"

    def queries(self, transport: str | None = None) -> list[dns.message.Message]:
        with self._lock:
            return [q for t, q in self.asked if transport is None or t == transport]

    def _record(self, transport: str, wire: bytes) -> dns.message.Message | None:
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # noqa: BLE001 - not a query: nothing to answer
            return None
        with self._lock:
            self.asked.append((transport, query))
        return query

    def _serve_udp(self) -> None:
        while not self._stop:
            try:
                wire, client = self.udp.recvfrom(65535)
            except OSError:
                return
            query = self._record("udp", wire)
            if query is None:
                continue
            for datagram in self.handler(query, "udp"):
                if isinstance(datagram, tuple):
                    self.other.sendto(datagram[1], client)
                else:
                    self.udp.sendto(datagram, client)

    def _serve_tcp(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                return
            with conn:
                try:
                    size = int.from_bytes(_read(conn, 2), "big")
                    query = self._record("tcp", _read(conn, size))
                    if query is None:
                        continue
                    for reply in self.handler(query, "tcp"):
                        if isinstance(reply, bytes):
                            conn.sendall(len(reply).to_bytes(2, "big") + reply)
                except OSError:
                    continue

    def close(self) -> None:
        self._stop = True
        for sock in (self.udp, self.tcp, self.other):
            sock.close()


def _read(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], Server]]:
    servers: list[Server] = []

    def start(handler: Handler) -> Server:
        servers.append(Server(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def resolver_for(*servers: Server | str, timeout: float = 1.0) -> Resolver:
    return Resolver(DnsSection(nameservers=[s if isinstance(s, str) else s.nameserver for s in servers], timeout=timeout, cache_size=100))


def response(query: dns.message.Message, *answer: str, rcode: int = dns.rcode.NOERROR, authority: tuple[str, ...] = ()) -> dns.message.Message:
    """A reply to *query*: answer and authority records in zone-file form ("NAME TTL IN TYPE DATA")."""
    reply = dns.message.make_response(query)
    reply.set_rcode(rcode)
    for text in answer:
        reply.answer.append(_rrset(text))
    for text in authority:
        reply.authority.append(_rrset(text))
    return reply


def _rrset(text: str) -> dns.rrset.RRset:
    name, ttl, rdclass, rdtype, data = text.split(None, 4)
    return dns.rrset.from_text(name, int(ttl), rdclass, rdtype, data)


def zone(query: dns.message.Message, transport: str) -> Reply:
    """A small zone: a.test A, big.test A (huge TTL), www.test CNAME a.test, mail.test (no A),
    everything else NXDOMAIN, with the zone's SOA in the authority section."""
    question = query.question[0]
    name, rdtype = question.name.to_text(), dns.rdatatype.to_text(question.rdtype)
    soa = (f"test. 600 IN SOA {SOA}",)
    if (name, rdtype) == ("a.test.", "A"):
        reply = response(query, "a.test. 300 IN A 192.0.2.1", "a.test. 300 IN A 192.0.2.2")
    elif (name, rdtype) == ("big.test.", "A"):
        reply = response(query, "big.test. 999999 IN A 192.0.2.9")
    elif (name, rdtype) == ("www.test.", "A"):
        reply = response(query, "www.test. 60 IN CNAME a.test.", "a.test. 300 IN A 192.0.2.1")
    elif name in ("a.test.", "mail.test.", "www.test."):
        reply = response(query, authority=soa)
    elif name.startswith("n") and name.endswith(".many.test."):
        # n<K>.many.test: the address says which question it answers (concurrency test).
        number = int(name[1:].split(".")[0])
        reply = response(query, f"{name} 300 IN A 10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}")
    else:
        reply = response(query, rcode=dns.rcode.NXDOMAIN, authority=soa)
    return [reply.to_wire()]


def same_as_dnspython(resolver: Resolver, name: str, rdtype: str) -> Answer:
    """The client's answer, checked equal to dnspython's resolver's for the same question."""
    answer = resolver.query(name, rdtype)
    assert answer == resolver._resolve(name.lower().rstrip("."), rdtype.upper(), 1.0)
    return answer


# --- answers ------------------------------------------------------------------


def test_a_records(serve: Callable[[Handler], Server]) -> None:
    server = serve(zone)
    resolver = resolver_for(server)
    answer = same_as_dnspython(resolver, "A.test.", "a")
    assert (answer.name, answer.rdtype, answer.status, answer.records, answer.ttl) == ("a.test", "A", "ok", ("192.0.2.1", "192.0.2.2"), 300.0)
    assert [r.address for r in answer.rdata] == ["192.0.2.1", "192.0.2.2"]
    assert same_as_dnspython(resolver, "big.test", "A").ttl == MAX_TTL
    # Our question went by UDP only, once per query, and it is the one dnspython's resolver sends.
    ours, theirs = server.queries("udp")[0], server.queries("udp")[1]
    assert ours.to_wire()[2:] == theirs.to_wire()[2:] and not server.queries("tcp")


def test_cname_chain_is_followed(serve: Callable[[Handler], Server]) -> None:
    answer = same_as_dnspython(resolver_for(serve(zone)), "www.test", "A")
    # Kept for the chain's shortest TTL (the CNAME's 60 s), not the target's 300 s.
    assert (answer.status, answer.records, answer.ttl) == ("ok", ("192.0.2.1",), 60.0)


def test_nxdomain_and_nodata_keep_the_soa_negative_ttl(serve: Callable[[Handler], Server]) -> None:
    resolver = resolver_for(serve(zone))
    nx = same_as_dnspython(resolver, "nothing.test", "A")
    assert (nx.status, nx.ttl, nx.records) == ("nxdomain", 120.0, ())
    nodata = same_as_dnspython(resolver, "mail.test", "A")
    assert (nodata.status, nodata.ttl) == ("nodata", 120.0)
    # A CNAME to a name without the type: no data, as dnspython says.
    assert same_as_dnspython(resolver, "www.test", "MX").status == "nodata"


def test_negative_answer_without_soa_is_kept_the_default_time(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda q, t: [response(q, rcode=dns.rcode.NXDOMAIN).to_wire()])
    assert same_as_dnspython(resolver_for(server), "x.test", "TXT").ttl == milterd.dns.NEGATIVE_TTL


def test_nxdomain_after_a_cname(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda q, t: [response(q, f"{q.question[0].name} 60 IN CNAME gone.test.", rcode=dns.rcode.NXDOMAIN, authority=(f"test. 600 IN SOA {SOA}",)).to_wire()])
    assert same_as_dnspython(resolver_for(server), "alias.test", "A").status == "nxdomain"


def test_text_records_are_joined(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda q, t: [response(q, f'{q.question[0].name} 300 IN TXT "v=spf1 " "-all"').to_wire()])
    answer = same_as_dnspython(resolver_for(server), "t.test", "TXT")
    assert answer.records == ("v=spf1 -all",)


# --- left to dnspython's resolver -----------------------------------------------


def test_servfail_goes_to_dnspython_and_is_an_error(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda q, t: [response(q, rcode=dns.rcode.SERVFAIL).to_wire()])
    resolver = resolver_for(server)
    answer = resolver.query("x.test", "A")
    assert answer.status == "error" and "SERVFAIL" in answer.error
    assert len(server.queries("udp")) == 2  # ours, then dnspython's
    assert answer == resolver._resolve("x.test", "A", 1.0)


def test_refused_without_question_goes_to_dnspython(serve: Callable[[Handler], Server]) -> None:
    def refuse(query: dns.message.Message, transport: str) -> Reply:
        reply = dns.message.make_response(query)
        reply.question = []
        reply.set_rcode(dns.rcode.REFUSED)
        return [reply.to_wire()]

    resolver = resolver_for(serve(refuse))
    answer = resolver.query("x.test", "A")
    assert answer.status == "error" and answer == resolver._resolve("x.test", "A", 1.0)


def test_nxdomain_that_answers_the_question_goes_to_dnspython(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda q, t: [response(q, f"{q.question[0].name} 60 IN A 192.0.2.1", rcode=dns.rcode.NXDOMAIN).to_wire()])
    resolver = resolver_for(server)
    answer = resolver.query("x.test", "A")
    assert answer.status == "error" and answer == resolver._resolve("x.test", "A", 1.0)


def test_truncated_reply_is_asked_again_over_tcp(serve: Callable[[Handler], Server]) -> None:
    def truncate(query: dns.message.Message, transport: str) -> Reply:
        if transport == "udp":
            reply = response(query)
            reply.flags |= dns.flags.TC
            return [reply.to_wire()]
        return zone(query, transport)

    server = serve(truncate)
    resolver = resolver_for(server)
    answers = resolver.query_many([("a.test", "A"), ("www.test", "A")])
    assert [a.records for a in answers] == [("192.0.2.1", "192.0.2.2"), ("192.0.2.1",)]
    assert len(server.queries("tcp")) == 2


def test_truncated_reply_to_another_question_is_ignored(serve: Callable[[Handler], Server]) -> None:
    def spoof_tc(query: dns.message.Message, transport: str) -> Reply:
        forged = response(dns.message.make_query("other.test", "A"))
        forged.id = query.id
        forged.flags |= dns.flags.TC
        return [forged.to_wire(), *zone(query, transport)]

    server = serve(spoof_tc)
    assert resolver_for(server).query("a.test", "A").records == ("192.0.2.1", "192.0.2.2")
    assert len(server.queries()) == 1  # neither asked again by dnspython's resolver nor over TCP


def test_questions_the_client_does_not_send(serve: Callable[[Handler], Server]) -> None:
    """A meta type, an unknown type: dnspython's resolver makes the error answer.  A name no DNS name can be
    (a label of 64 octets) does not exist, unasked (tests/unit/test_dns_literal_names.py)."""
    server = serve(zone)
    resolver = resolver_for(server)
    for name, rdtype in (("a.test", "ANY"), ("a.test", "NOSUCHTYPE")):
        answer = resolver.query(name, rdtype)
        assert answer.status == "error" and answer == resolver._resolve(name, rdtype, 1.0)
    assert resolver.query("a" * 64 + ".test", "A").status == "nxdomain"
    assert server.queries() == []


def test_resolver_without_udp_nameserver_uses_dnspython() -> None:
    resolver = resolver_for("127.0.0.1:9")
    resolver._resolver.nameservers = ["https://resolver.invalid/dns-query"]
    assert milterd.dns._udp_servers(resolver._resolver) == []
    resolver._resolver.nameservers = ["127.0.0.1", "https://resolver.invalid/dns-query", "127.0.0.2"]
    # The nameservers up to the first the client does not ask (rotate or not: tests/unit/test_dns_rotate.py).
    assert milterd.dns._udp_servers(resolver._resolver) == [(socket.AF_INET, ("127.0.0.1", 53))]
    resolver._resolver.nameservers = ["127.0.0.1", "::1"]
    assert milterd.dns._udp_servers(resolver._resolver) == [(socket.AF_INET, ("127.0.0.1", 53)), (socket.AF_INET6, ("::1", 53))]


# --- time ------------------------------------------------------------------------


class FakeClock:
    """milterd.dns's time.monotonic(), moved only by the waits of :class:`ClockedSocket`."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class ClockedSocket(socket.socket):
    """A real socket whose wait for a datagram that is not there takes its whole timeout on :attr:`clock`, not in real time."""

    clock: FakeClock
    sent: list[bytes]

    def settimeout(self, value: float | None) -> None:
        self.wait = value
        super().settimeout(0.0)

    def send(self, data: bytes, *args: int) -> int:  # type: ignore[override]
        self.sent.append(data)
        return super().send(data, *args)

    def recv(self, size: int, *args: int) -> bytes:
        try:
            return super().recv(size, *args)
        except BlockingIOError:
            wait = getattr(self, "wait", None)
            assert wait is not None, "a wait for a datagram without a timeout"
            self.clock.now += wait
            raise TimeoutError from None


def test_silent_server_is_a_timeout_within_the_deadline(serve: Callable[[Handler], Server], monkeypatch: pytest.MonkeyPatch) -> None:
    server = serve(lambda q, t: [])
    clock = FakeClock()
    monkeypatch.setattr(milterd.dns, "time", types.SimpleNamespace(monotonic=clock.monotonic))
    monkeypatch.setattr(ClockedSocket, "clock", clock, raising=False)
    monkeypatch.setattr(ClockedSocket, "sent", [], raising=False)
    monkeypatch.setattr(socket, "socket", ClockedSocket)  # the client's; the server's are made already
    resolver = resolver_for(server, timeout=0.3)
    start = clock.now
    answers = resolver.query_many([("a.test", "A"), ("b.test", "MX"), ("c.test", "TXT")])
    assert [(a.status, a.error) for a in answers] == [("error", "timeout")] * 3
    assert clock.now - start == pytest.approx(0.3)  # waited to the deadline, not less, not more
    start = clock.now
    assert resolver.query("d.test", "A", deadline=clock.now + 0.1).error == "timeout"
    assert clock.now - start == pytest.approx(0.1)
    start = clock.now
    assert resolver.query("e.test", "A", deadline=clock.now - 1).error == "timeout"
    assert clock.now == start and len(ClockedSocket.sent) == 4  # nothing is sent past the deadline
    for _ in range(6000):  # the server's thread records the datagrams: wait for it (no bound on the test's time)
        if len(server.queries()) >= 4:
            break
        time.sleep(0.01)
    assert len(server.queries()) == 4


def names(server: Server) -> list[str]:
    """The names *server* was asked for over UDP, in order."""
    return [q.question[0].name.to_text() for q in server.queries("udp")]


def test_silent_first_of_two_nameservers_leaves_its_questions_to_the_second(serve: Callable[[Handler], Server], caplog: pytest.LogCaptureFixture) -> None:
    """A first nameserver that is down (a host that drops) made every question a timeout, the second never asked."""
    silent, good = serve(lambda q, t: []), serve(zone)
    resolver = resolver_for(silent, good, timeout=1.0)
    no_dnspython(resolver)
    answers = resolver.query_many([("a.test", "A"), ("nothing.test", "A")])
    assert [(a.status, a.records) for a in answers] == [("ok", ("192.0.2.1", "192.0.2.2")), ("nxdomain", ())]
    assert sorted(names(good)) == ["a.test.", "nothing.test."]
    assert f"nameserver [127.0.0.1]:{silent.port} did not answer in time: [127.0.0.1]:{good.port} is asked first" in caplog.text
    # The next questions go to the second one first: the silent one is not waited for again.
    assert resolver.query("www.test", "A").ok
    assert names(silent) == ["a.test.", "nothing.test.", "localhost."] and names(good)[-1] == "www.test."  # localhost: is it down?


def test_the_configured_order_comes_back_after_a_while(serve: Callable[[Handler], Server], monkeypatch: pytest.MonkeyPatch) -> None:
    """The first nameserver configured is usually the one meant (a local resolver): not left behind for good."""
    silent, good = serve(lambda q, t: []), serve(zone)
    resolver = resolver_for(silent, good, timeout=0.4)
    no_dnspython(resolver)
    assert resolver.query("a.test", "A").ok
    assert resolver._order[0] == resolver._servers[1]
    monkeypatch.setattr(resolver, "_reorder_at", time.monotonic())  # DEMOTED_FOR has passed
    assert resolver.query("www.test", "A").ok
    assert names(silent) == ["a.test.", "localhost.", "www.test.", "localhost."]  # asked first again, then left again
    assert resolver._order[0] == resolver._servers[1] and resolver._reorder_at > time.monotonic() + 50


def test_a_first_nameserver_silent_on_one_name_only_stays_first(serve: Callable[[Handler], Server], caplog: pytest.LogCaptureFixture) -> None:
    """A client's own name (its HELO, its sender's domain) whose nameservers it holds back made the local resolver
    look down: every DNS list query of the worker went to the second, a public resolver the lists refuse, for a minute."""
    local = serve(lambda q, t: [] if q.question[0].name.to_text() == "slow.attacker.test." else zone(q, t))
    public = serve(zone)
    resolver = resolver_for(local, public, timeout=1.0)
    no_dnspython(resolver)
    assert resolver.query("slow.attacker.test", "A").status == "nxdomain"  # the second one's answer
    assert resolver._order[0] == resolver._servers[0] and "asked first" not in caplog.text
    assert resolver.query("a.test", "A").ok
    assert names(local)[-1] == "a.test." and names(public) == ["slow.attacker.test."]


def test_a_first_nameserver_silent_on_a_dns_list_s_names_is_passed_over(serve: Callable[[Handler], Server], caplog: pytest.LogCaptureFixture) -> None:
    """Second look: a local resolver whose own upstream is down answers "localhost" itself but nothing else; it was
    kept first, and every lookup waited half the timeout for as long as the outage lasted.  A DNS list's names are
    no client's: silent on them, it is passed over for a minute, as before."""
    def local(query: dns.message.Message, transport: str) -> Reply:
        return zone(query, transport) if query.question[0].name.to_text() == "localhost." else []

    first, public = serve(local), serve(zone)
    resolver = Resolver(DnsSection(nameservers=[first.nameserver, public.nameserver], timeout=1.0, cache_size=100), ["zen.spamhaus.example"])
    no_dnspython(resolver)
    assert resolver.query("a.test", "A").ok  # a client's name: kept first (it answers localhost)
    assert resolver._order[0] == resolver._servers[0]
    assert resolver.query("2.0.0.127.zen.spamhaus.example", "A").status == "nxdomain"  # the list's name: passed over
    assert resolver._order[0] == resolver._servers[1] and "is asked first for the next 60s" in caplog.text


def test_the_workers_resolver_knows_the_shipped_dns_lists() -> None:
    services = build(Config.model_validate({"dns": {"nameservers": ["127.0.0.1:9"]}}))
    assert {".zen.spamhaus.org", ".dbl.spamhaus.org", ".list.dnswl.org"} <= set(services.resolver._list_suffixes)


def test_a_slow_first_nameserver_still_answers_after_the_second_is_asked(serve: Callable[[Handler], Server]) -> None:
    """Past its share of the time the second nameserver is asked too, and the first one's reply is still taken."""

    def slow(query: dns.message.Message, transport: str) -> Reply:
        time.sleep(1.4)
        return zone(query, transport)

    first, silent = serve(slow), serve(lambda q, t: [])
    resolver = resolver_for(first, silent, timeout=2.0)  # the second is asked at 1 s
    no_dnspython(resolver)
    assert resolver.query("a.test", "A").records == ("192.0.2.1", "192.0.2.2")
    assert names(silent) == ["a.test."]
    assert resolver._order[0] == resolver._servers[0]  # it replied: still asked first


def test_two_silent_nameservers_then_one_that_answers(serve: Callable[[Handler], Server]) -> None:
    silent1, silent2, good = serve(lambda q, t: []), serve(lambda q, t: []), serve(zone)
    resolver = resolver_for(silent1, silent2, good, timeout=1.5)
    no_dnspython(resolver)
    assert resolver.query("a.test", "A").ok
    assert resolver._order == [resolver._servers[2], resolver._servers[0], resolver._servers[1]]


def test_every_nameserver_silent_is_a_timeout(serve: Callable[[Handler], Server]) -> None:
    silent1, silent2 = serve(lambda q, t: []), serve(lambda q, t: [])
    resolver = resolver_for(silent1, silent2, timeout=0.3)
    no_dnspython(resolver)
    assert [(a.status, a.error) for a in resolver.query_many([("a.test", "A"), ("b.test", "A")])] == [("error", "timeout")] * 2
    assert names(silent1) == names(silent2) == ["a.test.", "b.test."]
    assert resolver._order == resolver._servers  # nobody replied: nobody is preferred


def test_answer_for_some_questions_timeout_for_the_others(serve: Callable[[Handler], Server]) -> None:
    server = serve(lambda q, t: zone(q, t) if q.question[0].name.to_text() == "a.test." else [])
    answers = resolver_for(server, timeout=0.3).query_many([("x.test", "A"), ("a.test", "A")])
    assert [a.status for a in answers] == ["error", "ok"]


def closed_port() -> str:
    """A 127.0.0.1 UDP port nothing listens on: a datagram sent there gets an ICMP port unreachable."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    return f"127.0.0.1:{port}"


def no_dnspython(resolver: Resolver) -> None:
    """Make the resolver fail the test if it hands a question to dnspython's resolver (which waits out the deadline)."""
    def refuse(*args: object) -> Answer:
        raise AssertionError(f"dnspython's resolver asked for {args}")

    resolver._resolve = refuse  # type: ignore[method-assign]


def test_refusing_nameserver_is_an_error_at_once_not_a_timeout() -> None:
    """A resolver that is down (nothing on its port) made every stage wait the whole [dns] timeout."""
    resolver = resolver_for(closed_port(), timeout=5.0)
    no_dnspython(resolver)
    answers = resolver.query_many([("a.test", "A"), ("b.test", "A"), ("c.test", "MX")])
    assert [(a.status, a.error) for a in answers] == [("error", "connection refused")] * 3
    assert resolver.query("d.test", "TXT").error == "connection refused"
    assert len(resolver.cache) == 0  # an error is not kept: the resolver is asked again when it is back


def test_refused_questions_go_to_the_next_nameserver(serve: Callable[[Handler], Server]) -> None:
    good = serve(zone)
    resolver = resolver_for(closed_port(), closed_port(), good, timeout=5.0)
    no_dnspython(resolver)
    answers = resolver.query_many([("a.test", "A"), ("nothing.test", "A")])
    assert [(a.status, a.records) for a in answers] == [("ok", ("192.0.2.1", "192.0.2.2")), ("nxdomain", ())]
    assert sorted(q.question[0].name.to_text() for q in good.queries("udp")) == ["a.test.", "nothing.test."]
    # The refusing ones are asked last from now on.
    assert resolver._order == [resolver._servers[2], resolver._servers[0], resolver._servers[1]]


def test_a_nameserver_that_answers_is_the_only_one_asked(serve: Callable[[Handler], Server]) -> None:
    first, second = serve(zone), serve(zone)
    resolver = resolver_for(first, second)
    assert resolver.query("a.test", "A").ok
    assert len(first.queries()) == 1 and second.queries() == []
    assert resolver._order == resolver._servers


def test_refused_by_every_nameserver_the_client_asks_is_left_to_dnspython_when_it_knows_others() -> None:
    """Behind a nameserver our client does not ask (DNS-over-HTTPS), dnspython's resolver may still answer."""
    resolver = resolver_for(closed_port(), timeout=0.3)
    resolver._resolver.nameservers = [*resolver._resolver.nameservers, "https://resolver.invalid/dns-query"]
    resolver._servers_all = False
    asked: list[str] = []
    resolver._resolve = lambda name, rdtype, lifetime: asked.append(name) or Answer(name, rdtype, "error", error="dnspython")  # type: ignore[method-assign, func-returns-value]
    assert resolver.query("a.test", "A").error == "dnspython"
    assert asked == ["a.test"]


# --- spoofing ------------------------------------------------------------------------


def test_forged_replies_are_ignored(serve: Callable[[Handler], Server]) -> None:
    """Wrong id, wrong question, garbage, a reply from another port: all dropped, the real reply taken."""

    def forge(query: dns.message.Message, transport: str) -> Reply:
        name = query.question[0].name.to_text()
        wrong_id = response(query, f"{name} 300 IN A 203.0.113.1")
        wrong_id.id = (query.id + 1) % 65536
        wrong_question = response(dns.message.make_query("evil.test", "A"), "evil.test. 300 IN A 203.0.113.2")
        wrong_question.id = query.id
        not_a_response = dns.message.make_query(name, "A")
        not_a_response.id = query.id
        from_elsewhere = response(query, f"{name} 300 IN A 203.0.113.3").to_wire()
        garbage = query.id.to_bytes(2, "big") + b"\x81\x80garbage"
        return [wrong_id.to_wire(), wrong_question.to_wire(), not_a_response.to_wire(), ("from-other-port", from_elsewhere), garbage, b"\x00", *zone(query, transport)]

    resolver = resolver_for(serve(forge))
    assert resolver.query("a.test", "A").records == ("192.0.2.1", "192.0.2.2")
    answers = resolver.query_many([("www.test", "A"), ("nothing.test", "A")])
    assert [(a.status, a.records) for a in answers] == [("ok", ("192.0.2.1",)), ("nxdomain", ())]


# --- query_many, the cache, threads ----------------------------------------------------


def test_query_many_keeps_order_duplicates_and_cache(serve: Callable[[Handler], Server]) -> None:
    server = serve(zone)
    resolver = resolver_for(server)
    cached = Answer("cached.test", "A", "ok", ("192.0.2.7",), ttl=60)
    resolver.cache.put(("cached.test", "A"), cached)
    seen: list[bool] = []
    observe_cache(seen.append)
    try:
        answers = resolver.query_many([("a.test", "A"), ("cached.test", "A"), ("nothing.test", "A"), ("a.test", "A"), ("Mail.Test.", "a")])
    finally:
        observe_cache(None)
    assert [a.status for a in answers] == ["ok", "ok", "nxdomain", "ok", "nodata"]
    assert answers[1] is cached and answers[4].name == "mail.test"
    assert seen == [False, True, False, False, False]  # one lookup each, no second one per miss
    assert len(server.queries()) == 4 and resolver._pool is None
    # The answers are cached for their TTL: asked again, no query.
    assert resolver.query_many([("a.test", "A"), ("nothing.test", "A")]) == [answers[0], answers[2]]
    assert len(server.queries()) == 4


def test_many_concurrent_callers(serve: Callable[[Handler], Server]) -> None:
    server = serve(zone)
    resolver = resolver_for(server, timeout=5.0)
    failures: list[str] = []

    def caller(t: int) -> None:
        for k in range(25):
            base = (t * 100 + k * 4) % 16_000_000
            names = [f"n{base + j}.many.test" for j in range(4)]
            answers = [resolver.query(names[0], "A")] if k % 2 else resolver.query_many([(n, "A") for n in names])
            for name, answer in zip(names, answers, strict=False):
                number = int(name[1:].split(".")[0])
                expected = f"10.{number // 65536 % 256}.{number // 256 % 256}.{number % 256}"
                if answer.records != (expected,):
                    failures.append(f"{name}: {answer}")

    threads = [threading.Thread(target=caller, args=(t,)) for t in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert len(server.queries()) == 16 * (13 * 4 + 12)


def test_questions_announce_edns0_with_a_1232_byte_payload(serve: Callable[[Handler], Server]) -> None:
    # A 2048-bit DKIM key's TXT record is larger than 512 bytes: without EDNS it would be truncated and asked again over TCP.
    server = serve(zone)
    resolver = resolver_for(server)
    resolver.query("a.test", "A")
    resolver.query_many([("x.test", "A"), ("y.test", "TXT")])
    sent = server.queries("udp")
    assert len(sent) == 3
    assert all(q.edns == 0 and q.payload == EDNS_PAYLOAD == 1232 for q in sent)


def test_submit_hands_a_cached_answer_back_as_it_is_and_collect_takes_both_kinds(serve: Callable[[Handler], Server]) -> None:
    server = serve(zone)
    resolver = resolver_for(server)
    first = resolver.query("a.test", "A")
    cached = resolver.submit("A.test.", "a")
    assert cached is first  # no Future, no thread
    started = resolver.submit("mail.test", "A")
    assert not isinstance(started, Answer)
    deadline = resolver.deadline()
    answers = resolver.collect([cached, started], [("a.test", "A"), ("mail.test", "A")], deadline)
    assert [(a.name, a.status) for a in answers] == [("a.test", "ok"), ("mail.test", "nodata")]
    resolver.close()


def test_a_query_left_waiting_for_a_busy_pool_is_asked_by_the_collector(serve: Callable[[Handler], Server]) -> None:
    """Every thread of the pool held (by lookups a silent DNS list keeps waiting): a listed client's question
    queued behind them timed out unasked, and its listing was recorded as a DNS error."""
    server = serve(lambda q, t: [response(q, f"{q.question[0].name.to_text()} 60 IN A 127.0.0.2").to_wire()])
    resolver = resolver_for(server)
    release = threading.Event()
    pool = resolver._executor()
    busy = [pool.submit(release.wait, 10) for _ in range(pool._max_workers)]
    try:
        queued = resolver.submit("2.0.0.127.zen.test", "A")
        assert not isinstance(queued, Answer)
        [answer] = resolver.collect([queued], [("2.0.0.127.zen.test", "A")], resolver.deadline())
        assert (answer.status, answer.records) == ("ok", ("127.0.0.2",))
        assert queued.cancelled()
    finally:
        release.set()
        for future in busy:
            future.result(10)
        resolver.close()


def test_a_query_its_thread_reached_after_its_deadline_is_asked_by_the_collector(serve: Callable[[Handler], Server]) -> None:
    """Started at connect, collected at MAIL (delay_reject): a thread free only after the connect deadline
    answered "timeout" without asking, and MAIL took that as the list's DNS error."""
    server = serve(lambda q, t: [response(q, f"{q.question[0].name.to_text()} 60 IN A 127.0.0.2").to_wire()])
    resolver = resolver_for(server)
    late = resolver.submit("2.0.0.127.zen.test", "A", time.monotonic() - 1)  # its deadline passed before a thread took it
    assert not isinstance(late, Answer)
    assert late.result(10) is None and server.queries() == []
    [answer] = resolver.collect([late], [("2.0.0.127.zen.test", "A")], resolver.deadline())
    assert (answer.status, answer.records) == ("ok", ("127.0.0.2",))
    resolver.close()


def slow_listing(q: dns.message.Message, t: str) -> list[bytes]:
    time.sleep(0.2)  # a nameserver that answers in 0.2 s
    return [response(q, f"{q.question[0].name.to_text()} 60 IN A 127.0.0.2").to_wire()]


def test_a_query_its_thread_reached_with_too_little_time_left_is_asked_by_the_collector(serve: Callable[[Handler], Server]) -> None:
    """A thread free 0.1 s before the connect deadline asked with 0.1 s against a nameserver taking 0.2 s: a
    timeout, though MAIL's collector had a whole deadline to wait in."""
    resolver = resolver_for(serve(slow_listing))  # timeout 1 s
    short = resolver.submit("2.0.0.127.zen.test", "A", time.monotonic() + 0.1)
    assert not isinstance(short, Answer) and short.result(10) is None
    [answer] = resolver.collect([short], [("2.0.0.127.zen.test", "A")], resolver.deadline())
    assert (answer.status, answer.records) == ("ok", ("127.0.0.2",))
    resolver.close()


def test_a_query_a_thread_took_too_late_while_the_collector_waited_is_asked_by_it(serve: Callable[[Handler], Server]) -> None:
    resolver = resolver_for(serve(slow_listing))
    running: Future[Answer | None] = Future()
    assert running.set_running_or_notify_cancel()  # a thread has it: cancel() cannot take it back
    timer = threading.Timer(0.2, running.set_result, (None,))  # ... and finds it too late to ask
    timer.start()
    [answer] = resolver.collect([running], [("2.0.0.127.zen.test", "A")], resolver.deadline())
    timer.join()
    assert (answer.status, answer.records) == ("ok", ("127.0.0.2",))
    resolver.close()


# --- doctor's probe ------------------------------------------------------------------


def test_probe_tells_each_kind_of_nameserver_apart(serve: Callable[[Handler], Server]) -> None:
    answering = serve(lambda q, t: [response(q, rcode=dns.rcode.REFUSED).to_wire()])  # an error code is a reply
    silent = serve(lambda q, t: [])
    resolver = resolver_for(answering, silent, closed_port())
    states = [milterd.dns.probe_nameserver(server, 0.3) for server in resolver.udp_nameservers]
    assert states == ["answers", "did not answer in time", "refused"]
    assert [q.question[0].name.to_text() for q in answering.queries("udp")] == ["."]
