"""The DNS resolver of a worker: bounded in time, cached, concurrent.

Checks ask :class:`Resolver` for records and get an :class:`Answer` back,
never an exception: a timeout, a SERVFAIL or an unreachable resolver is an
answer whose ``status`` is ``"error"``, so that a check can emit a symbol
saying so and go on.  ``[dns] timeout`` bounds each stage: a check takes a
deadline (:meth:`Resolver.deadline`) and every query it makes at that stage
shares it.  Answers, negative ones included, are cached per process for
their TTL in a bounded LRU table.  pyspf is pointed at the same resolver
(:meth:`Resolver.spf_lookup`); :func:`traced_lookups` tells the SPF check
until when the answers of one evaluation stay in that table, so that it can
keep the evaluation's result exactly as long.

A query that misses the cache is sent by our own small UDP client
(:meth:`Resolver._ask_udp`) from the calling thread, all of one
:meth:`Resolver.query_many` call on one socket: dnspython's
``Resolver.resolve`` costs about 0.3 ms of CPU per query, and through a
query thread a Future, a Condition and a thread wake-up more, on the hot path
of every new client.  The client builds and reads messages with dnspython's
message API and gives the same answers; whatever it does not handle
(truncated replies, SERVFAIL and other rcodes, odd CNAME chains, TSIG,
DNS-over-HTTPS…) is left to dnspython's resolver, as before.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import itertools
import logging
import math
import select
import socket
import threading
import time
import unicodedata
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, Hashable, Iterable, Iterator, Literal, Sequence, TypeVar, Union, cast

import dns.exception
import dns.inet
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdatatype
import dns.resolver
import idna
import spf

from .endpoints import split_host_port

if TYPE_CHECKING:
    from .config import DnsSection

log = logging.getLogger("milterd")

Status = Literal["ok", "nxdomain", "nodata", "error"]

#: Seconds a nameserver that left its questions to another is asked after the others (:meth:`Resolver._demote`).
DEMOTED_FOR = 60.0
#: The question that tells a nameserver silent on one name from one that is down (:meth:`Resolver._demote`):
#: "localhost", which resolvers answer themselves (RFC 6761 6.3), and no client chooses.
LIVENESS_QUESTION = ("localhost.", "A")
#: Longest the question of :data:`LIVENESS_QUESTION` is waited for (seconds; less when [dns] timeout is shorter).
LIVENESS_TIMEOUT = 0.5

#: Longest a negative answer (NXDOMAIN, no data) is kept when the zone gives no SOA.
NEGATIVE_TTL = 60.0
#: The UDP payload size announced with EDNS0 (RFC 6891), the size DNS flag day 2020 recommends.
EDNS_PAYLOAD = 1232
#: Longest any answer is kept, whatever its TTL says.
MAX_TTL = 86400.0


@dataclass(frozen=True)
class Answer:
    """The outcome of one query: records as text (and as dnspython rdata), or why there are none."""

    name: str
    rdtype: str
    status: Status
    records: tuple[str, ...] = ()
    rdata: tuple[Any, ...] = ()
    ttl: float = 0.0
    error: str = ""

    @property
    def ok(self) -> bool:
        """Records were found."""
        return self.status == "ok"

    @property
    def failed(self) -> bool:
        """The question could not be answered (timeout, SERVFAIL, no resolver)."""
        return self.status == "error"

    @property
    def missing(self) -> bool:
        """The name or the record type does not exist."""
        return self.status in ("nxdomain", "nodata")


def cache_key(name: str, rdtype: str) -> tuple[str, str]:
    """The answer cache's key of a question, and the question asked: the name's :func:`comparable_name`
    (case folded, without its trailing dot, its U-labels as IDNA2008 A-labels), the type upper-cased.

    Encoded here, not by dnspython: its codec is IDNA2003 unless the ``idna`` package happens to be
    installed, and IDNA2003 asks about ``strasse.example`` for ``straße.example``, another domain
    with its own owner, whose SPF record would then judge mail from the first.
    """
    # A name IDNA refuses stays non-ASCII (comparable_name): _resolve_many answers it, never dnspython.
    return comparable_name(name), rdtype.upper()


def literal_name(name: str) -> str:
    """*name* as dnspython's text form must write it to mean the name itself: a backslash escaped.

    Names come from mail (pyspf's expansion of a sender's local part, a signature's ``s=``), never in DNS's
    text form: ``"ceo\\1"@victim.example`` expanded by ``exists:%{l}._spf.%{d}`` was parsed as an escape
    (BadEscape: a temporary error, and SPF's fail became SPF_TEMPERROR, DMARC's reject DMARC_TEMPFAIL).
    """
    return name.replace("\\", "\\\\") if "\\" in name else name


def name_text(name: dns.name.Name) -> str:
    """A name found in DNS (a PTR's target, an MX host) as a name from mail is written, which the resolver asks
    as itself (:func:`literal_name`): its labels joined, not escaped (dnspython's text form writes "mail host" as
    ``mail\\032host``, which would be asked as those characters).  The root is "."."""
    labels = [label.decode("utf-8", "replace") for label in name.relativize(dns.name.root).labels]
    return ".".join(labels) or "."


def parses(name: str) -> bool:
    """Whether dnspython takes *name* (in :func:`literal_name`'s form) as a DNS name: one it refuses (a label over
    63 octets, a name over 255, an empty label) does not exist, and is answered so, not as a DNS error."""
    if len(name) <= 63 and "\\" not in name and ".." not in name and not name.startswith("."):
        return True  # shorter than a label may be, no escape, no empty label: nothing to refuse
    try:
        dns.name.from_text(name)
    except dns.exception.DNSException:
        return False
    return True


def comparable_name(name: str) -> str:
    """The form two domain names are compared in: :func:`domain_name`, or where IDNA refuses the name,
    the name case folded without its trailing dot (it then equals only itself however it is cased)."""
    return domain_name(name) or fold_case(name).rstrip(".")


def domain_name(name: str) -> str | None:
    """The DNS form of the domain *name*: case folded (:func:`fold_case`), its trailing dot removed,
    its U-labels as IDNA2008 A-labels (:func:`a_label`); None when IDNA refuses it.

    The one normalisation of a domain that is looked up, signed for or compared with a looked-up one:
    ``Bücher.Example.`` is ``xn--bcher-kva.example``, ``example.ΤΕΣΤΣ`` is ``example.τεστσ``'s A-labels
    (``str.lower()`` would make it ``example.τεστς``, another domain).
    """
    return a_label(fold_case(name).rstrip("."))


def fold_case(name: str) -> str:
    """*name* lower-cased letter by letter.

    ``str.lower()`` writes a word-final ``Σ`` as ``ς`` (Unicode's Final_Sigma rule), and ``ς`` is
    another IDNA2008 label than the ``σ`` that UTS #46 (and so a browser, a registry) maps ``Σ`` to:
    ``example.ΤΕΣΤΣ`` would be asked as ``example.τεστς``, another domain with its own owner.
    """
    return name.lower() if name.isascii() else "".join(c.lower() for c in name)


#: ZWJ and ZWNJ, dropped before the mapping (see :func:`a_label`).
_JOINERS = dict.fromkeys((0x200C, 0x200D))


def a_label(name: str) -> str | None:
    """*name* with its U-labels converted to A-labels (RFC 7489 §6.6.1), or None when it cannot be.

    As browsers and registries convert them: UTS #46's mapping, non-transitional (IDNA2008), with the
    ``idna`` package's tables of a current Unicode.  ``faß.example`` is ``xn--fa-hia.example``, not
    IDNA2003's ``fass.example``, another domain with its own owner and policy; ``ₑvil.test`` (a
    character newer than IDNA2003's Unicode 3.2) is ``evil.test``; a right-to-left label ending in a
    digit is converted (RFC 5893), where IDNA2003 refused it.  ZWJ and ZWNJ are dropped, as IDNA2003
    dropped them: ``bank<ZWJ>.example`` looks like bank.example and gets its policy.
    """
    if name.isascii():
        return name
    mapped = uts46_mapped(name)
    if mapped is None:
        return None
    labels = mapped.split(".")  # the mapping made every IDNA full stop a "."
    if len(labels) > 1 and not labels[-1]:
        labels.pop()  # a trailing dot
    converted = [label if label.isascii() else "xn--" + label.encode("punycode").decode("ascii") for label in labels]
    if not all(0 < len(label) < 64 for label in converted):  # as IDNA refuses an empty or overlong label
        return None
    return ".".join(converted)


def uts46_mapped(name: str) -> str | None:
    """*name* as UTS #46 maps it (:func:`a_label`'s first step, its U-labels kept): ``ｅｖｉｌ。ｔｏｐ`` is
    ``evil.top``; None for a code point UTS #46 disallows (a browser refuses the name too)."""
    pieces = []
    for char in name.translate(_JOINERS):
        mapped = char.lower() if char < "\x80" else _uts46(char)
        if mapped is None:
            return None
        pieces.append(mapped)
    return unicodedata.normalize("NFC", "".join(pieces))


@functools.lru_cache(maxsize=4096)
def _uts46(char: str) -> str | None:
    """UTS #46's mapping of one non-ASCII *char* ("" for one it ignores), None for one it disallows.

    Mapped a character at a time (the mapping is one, and NFC of the whole is taken after): ``idna``
    refuses a whole name of more than 1,024 characters, and 1,030 ignored variation selectors inside
    ``pay…pal.com``, which a reader does not see, made the From domain no domain, so no DMARC policy."""
    try:
        return idna.uts46_remap(char, std3_rules=False)
    except idna.IDNAError:
        return None


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``"IP"``, ``"IP:PORT"``, ``"[IPv6]:PORT"`` or a bare IPv6 address → (ip, port); ValueError otherwise."""
    host, port = split_host_port(spec.strip(), 53)
    ipaddress.ip_address(host)
    return host, port


def unscoped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """*address* without an IPv6 zone (``fe80::1%eth0`` → ``fe80::1``): the zone names an interface
    of this host, it is not part of any DNS name (and CPython's ``reverse_pointer`` and
    ``exploded`` raise ValueError on a scoped address)."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return ipaddress.IPv6Address(int(address))
    return address


@functools.lru_cache(maxsize=1024)
def reverse_pointer(ip: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The in-addr.arpa / ip6.arpa name of *ip* (no trailing dot); ValueError for text that is no address.

    Remembered per process: asked at connect and again at MAIL FROM for the same few clients.
    """
    return unscoped(ipaddress.ip_address(ip) if isinstance(ip, str) else ip).reverse_pointer


def dnsbl_name(ip: str, zone: str) -> str | None:
    """The name to look up *ip* in DNS list *zone*: reversed octets for IPv4, nibbles for IPv6.

    An IPv4-mapped IPv6 address is looked up as IPv4; None for an unparsable address.
    """
    prefix = _reversed_address(ip) if len(ip) <= 64 else _reversed_address.__wrapped__(ip)
    return None if prefix is None else f"{prefix}.{zone.strip('.')}"


@functools.lru_cache(maxsize=1024)
def _reversed_address(ip: str) -> str | None:
    # Asked once per DNS list for the same client: the address is parsed once.
    try:
        address = unscoped(ipaddress.ip_address(ip))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if isinstance(address, ipaddress.IPv4Address):
        return ".".join(reversed(str(address).split(".")))
    return ".".join(reversed(address.exploded.replace(":", "")))


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

#: Told of every lookup in an answer cache: True for a hit, False for a miss.
CacheObserver = Callable[[bool], None]
_cache_observer: CacheObserver | None = None


def observe_cache(observer: CacheObserver | None) -> None:
    """Tell *observer* of every answer-cache lookup in this process (metrics counts them); None stops it.

    Set before the workers fork: they inherit it.
    """
    global _cache_observer
    _cache_observer = observer


class ExpiringLRU(Generic[K, V]):
    """A bounded LRU table whose entries also expire (thread-safe)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        """The live entry for *key*, or None."""
        with self._lock:
            item = self._data.get(key)
            if item is None:
                return None
            expires, value = item
            if expires <= time.monotonic():
                del self._data[key]
                return None
            self._data.move_to_end(key)
            return value

    def expiry(self, key: K) -> float | None:
        """When the entry for *key* expires (``time.monotonic()``), or None when there is none (not moved)."""
        with self._lock:
            item = self._data.get(key)
        return item[0] if item is not None else None

    def put(self, key: K, value: V, expires: float) -> None:
        """Keep *value* until *expires* (``time.monotonic()``), evicting the least recently used entries beyond the size;
        a past expiry keeps nothing."""
        if self.size <= 0 or expires <= time.monotonic():
            return
        with self._lock:
            self._data[key] = (expires, value)
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class TTLCache:
    """The resolver's answers, each kept for its TTL in an :class:`ExpiringLRU`; every lookup is told to the cache observer."""

    def __init__(self, size: int) -> None:
        self._table: ExpiringLRU[tuple[str, str], Answer] = ExpiringLRU(size)

    def get(self, key: tuple[str, str]) -> Answer | None:
        """The live entry for *key*, or None."""
        answer = self._table.get(key)
        observer = _cache_observer
        if observer is not None:
            observer(answer is not None)
        return answer

    def expiry(self, key: tuple[str, str]) -> float | None:
        """When the entry for *key* expires (``time.monotonic()``), or None when there is none (not counted, not moved)."""
        return self._table.expiry(key)

    def put(self, key: tuple[str, str], answer: Answer) -> None:
        """Keep *answer* for its TTL (an answer without one, an error, is not kept)."""
        if answer.ttl > 0:
            self._table.put(key, answer, time.monotonic() + answer.ttl)

    def __len__(self) -> int:
        return len(self._table)


class LookupTrace:
    """The pyspf lookups of one evaluation in one thread: until when all of their answers stay cached, and the
    evaluation's deadline (``time.monotonic()``), which bounds every one of them."""

    def __init__(self, deadline: float = math.inf) -> None:
        self.expires = math.inf
        self.lookups = 0
        self.deadline = deadline

    def saw(self, expires: float | None) -> None:
        """One lookup whose answer leaves the cache at *expires* (None: it was not cached, an error)."""
        self.lookups += 1
        self.expires = min(self.expires, expires if expires is not None else -math.inf)


_trace = threading.local()


@contextlib.contextmanager
def traced_lookups(deadline: float = math.inf) -> Iterator[LookupTrace]:
    """Trace the pyspf lookups this thread makes inside the block (:meth:`Resolver.spf_lookup`), none of them
    waiting past *deadline*."""
    trace = LookupTrace(deadline)
    previous = getattr(_trace, "current", None)
    _trace.current = trace
    try:
        yield trace
    finally:
        _trace.current = previous


#: A query started by :meth:`Resolver.submit`: its answer when it was cached, else the background query.
Pending = Union["Future[Answer | None]", Answer]


def _unasked(pending: "Future[Answer | None]") -> bool:
    """Whether *pending* ended without asking (its thread came to it after its deadline: :meth:`Resolver.submit`)."""
    return pending.done() and pending.exception() is None and pending.result() is None


def server_name(server: tuple[int, tuple[str, int]]) -> str:
    """A nameserver (address family, (ip, port)) as ip, or [ip]:port when the port is not 53."""
    ip, port = server[1]
    return ip if port == 53 else f"[{ip}]:{port}"


def probe_nameserver(server: tuple[int, tuple[str, int]], timeout: float, question: tuple[str, str] = (".", "NS")) -> str:
    """How *server* takes *question* (by default the root's NS) within *timeout* seconds: "answers" (any reply,
    an error code included), "refused", "could not be asked" or "did not answer in time"."""
    request = dns.message.make_query(*question)
    exchange = _Exchange.send(server, [(0, request)])
    deadline = time.monotonic() + timeout
    try:
        while exchange.sock is not None and (remaining := deadline - time.monotonic()) > 0:
            exchange.sock.settimeout(remaining)
            wire = exchange.recv()
            if wire is None:
                break
            if _reply_to(wire, exchange.pending) is not None:
                return "answers"
    finally:
        exchange.close()
    return exchange.why


@dataclass
class _Exchange:
    """The questions sent to one nameserver over one connected UDP socket, and what became of it."""

    server: tuple[int, tuple[str, int]]
    sock: socket.socket | None
    #: The questions not answered by this nameserver yet, by id.
    pending: dict[int, tuple[int, dns.message.Message]]
    #: "refused" (an ICMP port unreachable), "failed" (no socket, unreachable…), else "open": still
    #: listened to, or silent to the end once the exchange is over.
    state: str = "open"
    #: Whether it sent a reply to any question.
    replied: bool = False

    @classmethod
    def send(cls, server: tuple[int, tuple[str, int]], requests: Sequence[tuple[int, dns.message.Message]]) -> "_Exchange":
        """Send *requests* to *server* from a new connected socket (connected: the kernel drops datagrams
        from any other address or port, and tells of an ICMP port unreachable)."""
        family, address = server
        exchange = cls(server, None, {request.id: (i, request) for i, request in requests})
        try:
            exchange.sock = socket.socket(family, socket.SOCK_DGRAM)
        except OSError:
            exchange.state = "failed"  # no socket (EMFILE, ENOBUFS…)
            return exchange
        try:
            exchange.sock.connect(address)
            for _, request in requests:
                exchange.sock.send(request.to_wire())
        except ConnectionRefusedError:
            exchange.close("refused")
        except OSError:
            exchange.close("failed")
        return exchange

    @property
    def name(self) -> str:
        """The nameserver as ip or [ip]:port."""
        return server_name(self.server)

    @property
    def why(self) -> str:
        """What this nameserver did instead of answering."""
        return {"refused": "refused", "failed": "could not be asked"}.get(self.state, "did not answer in time")

    def recv(self) -> bytes | None:
        """A datagram from the socket (within its timeout); None when none came, or the socket failed (closed then)."""
        if self.sock is None:
            return None
        try:
            return self.sock.recv(65535)
        except (TimeoutError, BlockingIOError):
            return None
        except ConnectionRefusedError:
            self.close("refused")
        except OSError:
            self.close("failed")  # unreachable…: another nameserver, else dnspython's resolver
        return None

    def close(self, state: str | None = None) -> None:
        """Stop listening; *state* says why (else it stays as it is: "open" was silent to the end)."""
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if state is not None:
            self.state = state


class Resolver:
    """DNS for checks: ``[dns] nameservers`` (else /etc/resolv.conf), bounded, cached, concurrent."""

    def __init__(self, section: "DnsSection", list_zones: Iterable[str] = ()) -> None:
        self.timeout = float(section.timeout)
        #: The DNS list zones the checks ask, as ".zone" suffixes: their names are no client's, so a nameserver
        #: silent on them is down, not held back by a client (:meth:`_demote`).
        self._list_suffixes = tuple(dict.fromkeys("." + zone.lower().strip(".") for zone in list_zones if zone.strip(".")))
        if section.nameservers:
            self._resolver = dns.resolver.Resolver(configure=False)
            servers = []
            for spec in section.nameservers:
                ip, port = parse_nameserver(spec)
                servers.append(dns.nameserver.Do53Nameserver(ip, port))
            self._resolver.nameservers = servers
        else:
            try:
                self._resolver = dns.resolver.Resolver(configure=True)
            except Exception:  # noqa: BLE001 - no resolv.conf: every query fails, as "error"
                self._resolver = dns.resolver.Resolver(configure=False)
                self._resolver.nameservers = ["127.0.0.1"]
        self._resolver.timeout = self.timeout
        self._resolver.lifetime = self.timeout
        self._resolver.retry_servfail = False
        # EDNS0 with a 1232-byte payload (DNS flag day 2020): a 2048-bit DKIM key's TXT
        # record does not fit in 512 bytes, and without EDNS every such lookup is
        # truncated and asked again over TCP.
        self._resolver.use_edns(0, 0, EDNS_PAYLOAD)
        self._servers = _udp_servers(self._resolver)
        #: The nameservers in the order they are asked: those that failed us last (:meth:`_demote`) at the end.
        self._order = list(self._servers)
        #: resolv.conf's ``options rotate``: each question batch starts at the next nameserver of the order in turn.
        self._rotate = bool(self._resolver.rotate)
        self._turn = itertools.count()
        self._demoted: frozenset[tuple[int, tuple[str, int]]] = frozenset()  # those _demote put last, until _reorder_at
        self._reorder_at = math.inf  # when a demotion (_demote) ends
        # Every nameserver is one our client asks: when all refuse, nobody else could answer.
        self._servers_all = len(self._servers) == len(self._resolver.nameservers)
        self.cache = TTLCache(section.cache_size)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    # --- time -------------------------------------------------------------
    def deadline(self) -> float:
        """A deadline ``timeout`` seconds from now (``time.monotonic()``) for one stage."""
        return time.monotonic() + self.timeout

    def stage_deadline(self, deadlines: dict[str, float], stage: str) -> float:
        """The deadline of *stage* shared by every check at it (kept in a session's or envelope's ``dns_deadlines``)."""
        if stage not in deadlines:
            deadlines[stage] = self.deadline()
        return deadlines[stage]

    # --- queries ------------------------------------------------------------
    def cached(self, name: str, rdtype: str) -> bool:
        """Whether asking for *rdtype* of *name* now would be answered from the cache (not counted as a lookup)."""
        expires = self.cache.expiry(cache_key(name, rdtype))
        return expires is not None and expires > time.monotonic()

    def query(self, name: str, rdtype: str, deadline: float | None = None) -> Answer:
        """Ask for *rdtype* records of *name*, within *deadline* (default: ``timeout`` from now)."""
        key = cache_key(name, rdtype)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        answer = self._resolve_many([key], deadline if deadline is not None else self.deadline())[0]
        self.cache.put(key, answer)
        return answer

    def _resolve_many(self, keys: Sequence[tuple[str, str]], deadline: float) -> list[Answer]:
        """The answers to *keys* (:func:`cache_key` form), by our UDP client, else by dnspython's resolver;
        all timeouts once *deadline* has passed."""
        if deadline <= time.monotonic():
            return [Answer(name, rdtype, "error", error="timeout") for name, rdtype in keys]
        # A name still not ASCII is one IDNA refuses (cache_key): no DNS name, so no such domain.  Never
        # handed to dnspython, whose IDNA2003 would ask about another name ("…ß" over 63 octets as "…ss").
        answers: list[Answer | None] = [None if name.isascii() else Answer(name, rdtype, "nxdomain") for name, rdtype in keys]
        keys = [(literal_name(name), rdtype) for name, rdtype in keys]
        for i, (name, rdtype) in enumerate(keys):
            if answers[i] is None and not parses(name):
                answers[i] = Answer(name, rdtype, "nxdomain")
        if self._servers:
            self._ask_udp(keys, deadline, answers)
        for i, answer in enumerate(answers):
            if answer is None:
                answers[i] = self._fallback(keys[i], deadline)
        return cast("list[Answer]", answers)

    def _fallback(self, key: tuple[str, str], deadline: float) -> Answer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return Answer(key[0], key[1], "error", error="timeout")
        return self._resolve(key[0], key[1], remaining)

    def _ask_udp(self, keys: Sequence[tuple[str, str]], deadline: float, answers: list[Answer | None]) -> None:
        """Ask the nameservers for *keys* over UDP and fill in *answers* by position.

        The nameservers are asked in :attr:`_order`, each over one connected UDP socket.
        The next one is asked for what is still unanswered when those asked so far refused
        (an ICMP port unreachable: nothing listens there) or could not be sent to, or once
        they have been silent for their share of the time (the time left split between the
        nameservers: a host that is down, a firewall that drops), and the replies of those
        asked before are still taken.  dnspython's resolver gives the first nameserver the
        whole deadline, and hears no refusal (an unconnected socket): with the first
        nameserver down, every question waited the whole deadline and failed, a second
        nameserver in resolv.conf never asked.  One that leaves its questions to a later one
        goes to the end of the order for a minute (:meth:`_demote`), so the next messages do not wait for it.

        Left unanswered at *deadline*: ``"timeout"``; refused by every nameserver:
        ``"connection refused"`` at once; anything else is left None for dnspython's resolver.
        """
        asked = self._requests(keys, answers)
        if not asked:
            return
        start = time.monotonic()
        order = self._asking_order(start)
        share = (deadline - start) / len(order)
        exchanges: list[_Exchange] = []
        late = 0
        try:
            while waiting := [(i, request) for i, request in asked if answers[i] is None]:
                listening = [e for e in exchanges if e.sock is not None]
                next_at = start + share * len(exchanges)
                if len(exchanges) < len(order) and (not listening or time.monotonic() >= next_at):
                    exchanges.append(_Exchange.send(order[len(exchanges)], waiting))
                    continue
                if not listening:
                    break
                until = deadline if len(exchanges) == len(order) else min(next_at, deadline)
                if deadline <= time.monotonic():
                    # Past the deadline, only what has already arrived, and no more datagrams than there are
                    # questions: forged ones that keep arriving (a flood) must not hold the caller.
                    late += 1
                    if late > len(keys):
                        break
                if not self._receive(listening, until, keys, deadline, answers) and deadline <= time.monotonic():
                    break
        finally:
            for exchange in exchanges:
                exchange.close()
        unanswered = [i for i, _ in asked if answers[i] is None]
        # Any left None after this are asked by dnspython's resolver.
        if unanswered and (error := self._unanswered_error(exchanges, len(order))):
            for i in unanswered:
                answers[i] = Answer(keys[i][0], keys[i][1], "error", error=error)
        if len(exchanges) > 1:
            self._demote(exchanges, keys)

    def _unanswered_error(self, exchanges: Sequence["_Exchange"], servers: int) -> str:
        """The error of the questions no nameserver answered: "timeout" when one stayed silent, "connection
        refused" when all *servers* refused and nobody else could answer; "" to leave them to dnspython's resolver."""
        if any(e.state == "open" for e in exchanges):
            return "timeout"
        if self._servers_all and len(exchanges) == servers and all(e.state == "refused" for e in exchanges):
            return "connection refused"
        return ""

    def _requests(self, keys: Sequence[tuple[str, str]], answers: list[Answer | None]) -> list[tuple[int, dns.message.Message]]:
        """(position, query) for each of *keys* unanswered that our client sends, each with its own id."""
        ids: set[int] = set()
        asked = []
        for i, key in enumerate(keys):
            request = self._request(*key) if answers[i] is None else None
            if request is None:
                continue
            while request.id in ids:
                request.set_random_id()
            ids.add(request.id)
            asked.append((i, request))
        return asked

    def _receive(self, exchanges: Sequence["_Exchange"], until: float, keys: Sequence[tuple[str, str]], deadline: float, answers: list[Answer | None]) -> bool:
        """Take the datagrams that arrive on *exchanges*' sockets by *until* and fill in *answers*;
        whether any came (or a refusal).  Once *until* has passed, one datagram already there at most."""
        listening = [(e, e.sock) for e in exchanges if e.sock is not None]
        if len(listening) == 1:
            # One socket (nearly always): read until its questions are answered; its timeout is a poll(2).
            exchange, sock = listening[0]
            came = False
            while exchange.pending and exchange.sock is not None:
                timeout = until - time.monotonic()
                sock.settimeout(max(timeout, 0.0))
                wire = exchange.recv()
                if wire is None:
                    return came or exchange.sock is None
                came = True
                self._take(exchanges, exchange, wire, keys, deadline, answers)
                if timeout <= 0:
                    break
            return came
        try:
            readable, _, _ = select.select([sock for _, sock in listening], [], [], max(until - time.monotonic(), 0.0))
        except (OSError, ValueError):
            return False
        for exchange, sock in listening:
            if sock in readable:
                sock.settimeout(0.0)
                wire = exchange.recv()
                if wire is not None:
                    self._take(exchanges, exchange, wire, keys, deadline, answers)
        return bool(readable)

    def _take(self, exchanges: Sequence["_Exchange"], exchange: "_Exchange", wire: bytes, keys: Sequence[tuple[str, str]], deadline: float, answers: list[Answer | None]) -> None:
        """Fill in the answer that *wire*, a datagram from *exchange*'s nameserver, gives (if it is a reply to one of its questions)."""
        reply = _reply_to(wire, exchange.pending)
        if reply is None:
            return
        i, request, response = reply
        exchange.replied = True
        for other in exchanges:
            other.pending.pop(request.id, None)  # answered: no longer waited for from anyone
        if answers[i] is not None:
            return
        answer = _answer_from(keys[i], response) if response is not None else None
        # Not ours to read: dnspython's resolver asks now (TCP for a truncated reply),
        # while the other replies wait in the sockets' buffers.
        answers[i] = answer if answer is not None else self._fallback(keys[i], deadline)

    def _asking_order(self, now: float) -> list[tuple[int, tuple[str, int]]]:
        """The order the nameservers are asked in now: :attr:`_order` (the configured one again once a demotion
        has ended); under ``options rotate`` the nameservers not demoted take turns at its head, the demoted
        ones stay last (a silent one started every other question otherwise)."""
        if now >= self._reorder_at:
            self._order, self._reorder_at, self._demoted = self._servers, math.inf, frozenset()  # the configured order again
        order = self._order
        if not self._rotate:
            return order
        live = [server for server in order if server not in self._demoted]
        if not live:
            return order
        turn = next(self._turn) % len(live)
        return live[turn:] + live[:turn] + [server for server in order if server in self._demoted]

    def _demote(self, exchanges: Sequence["_Exchange"], keys: Sequence[tuple[str, str]] = ()) -> None:
        """Move the nameservers that were asked before the first one that replied to the end of the order,
        for :data:`DEMOTED_FOR` seconds: the first one configured is usually the one meant (a local resolver
        that public DNS lists answer), and one slow answer must not leave it behind for good.

        One that was only silent is demoted only if it does not answer :data:`LIVENESS_QUESTION` either, or it
        was asked names of the DNS lists (*keys*, the questions, under ``list_zones``): a recursive resolver
        waits for a name's own nameservers, and a client chooses names (its HELO, its sender's domain, its PTR)
        whose nameservers it runs.  Held back on purpose, they moved every DNS list query of the worker to a
        public resolver, which the lists refuse, for a minute.  A list's names are the list's: a resolver
        silent on them (its own upstream down) is passed over as before.
        """
        first = next((k for k, e in enumerate(exchanges) if e.replied), 0)
        if not first:
            return
        timeout = min(LIVENESS_TIMEOUT, self.timeout / 2)
        lists = any(name.lower().rstrip(".").endswith(self._list_suffixes) for name, _ in keys) if self._list_suffixes else False
        left = [e for e in exchanges[:first] if e.state != "open" or lists or probe_nameserver(e.server, timeout, LIVENESS_QUESTION) != "answers"]
        if not left:
            return
        passed = [e.server for e in left]
        order = self._order
        kept = [server for server in order if server not in passed]
        if order[len(kept):] == passed:
            return  # another thread has reordered them already
        self._order = kept + passed
        self._demoted = self._demoted | frozenset(passed)
        self._reorder_at = time.monotonic() + DEMOTED_FOR
        log.warning("nameserver %s %s: %s is asked first for the next %gs", ", ".join(e.name for e in left),
                    " or ".join(sorted({e.why for e in left})), exchanges[first].name, DEMOTED_FOR)

    def _request(self, name: str, rdtype: str) -> dns.message.Message | None:
        """The query dnspython's resolver would send for *name*/*rdtype*; None for one it would refuse or fail on."""
        try:
            request = dns.message.make_query(name, rdtype)
        except Exception:  # noqa: BLE001 - a bad name or type: dnspython's resolver makes the error answer
            return None
        if dns.rdatatype.is_metatype(request.question[0].rdtype):
            return None
        resolver = self._resolver
        request.use_edns(resolver.edns, resolver.ednsflags, resolver.payload, options=resolver.ednsoptions)
        if resolver.flags is not None:
            request.flags = resolver.flags
        return request

    def _resolve(self, name: str, rdtype: str, lifetime: float) -> Answer:
        try:
            result = self._resolver.resolve(name, rdtype, lifetime=lifetime, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            responses = exc.responses().values()
            return Answer(name, rdtype, "nxdomain", ttl=min([_negative_ttl(responses), *(_chain_ttl(r) for r in responses)]))
        except dns.exception.Timeout:
            return Answer(name, rdtype, "error", error="timeout")
        except dns.resolver.NoNameservers as exc:
            return Answer(name, rdtype, "error", error=_short(exc))
        except Exception as exc:  # noqa: BLE001 - any resolver failure is an "error" answer
            return Answer(name, rdtype, "error", error=_short(exc))
        return _found(name, rdtype, result.chaining_result, result.response)

    def submit(self, name: str, rdtype: str, deadline: float | None = None) -> "Pending":
        """Start a query in the background; collect it with :meth:`collect`.

        A cached answer is returned as it is: no Future, lock or thread for the usual case.
        """
        cached = self.cache.get(cache_key(name, rdtype))
        if cached is not None:
            return cached
        return self._executor().submit(self._query_in_time, name, rdtype, deadline if deadline is not None else self.deadline())

    def _query_in_time(self, name: str, rdtype: str, deadline: float) -> Answer | None:
        """:meth:`query` for a pool thread; None when the thread came to it with less than half of ``timeout``
        left before *deadline* (too little for a nameserver to answer in), so it was not asked: :meth:`collect`
        asks it then, within its own deadline (at MAIL, say, for a lookup started at connect)."""
        if deadline - time.monotonic() < self.timeout / 2 and self.cache.get(cache_key(name, rdtype)) is None:
            return None
        return self.query(name, rdtype, deadline)

    def collect(self, pending: Sequence["Pending"], queries: Sequence[tuple[str, str]], deadline: float) -> list[Answer]:
        """The answers of *pending* (started by :meth:`submit` for *queries*); those not done by *deadline* are timeouts.

        A query still waiting for a thread of the pool is asked here, by the caller, within *deadline*: the
        threads may all be held by lookups a silent nameserver keeps waiting, and a query left in the queue
        would time out unasked (one dead DNS list made the others' listings count as DNS errors).
        """
        waiting = [i for i, p in enumerate(pending) if not isinstance(p, Answer) and (p.cancel() or _unasked(p))]
        asked_here = dict(zip(waiting, self.query_many([queries[i] for i in waiting], deadline), strict=True)) if waiting else {}
        futures = [p for i, p in enumerate(pending) if not isinstance(p, Answer) and i not in asked_here]
        if futures:
            wait_futures(futures, timeout=max(0.0, deadline - time.monotonic()))
            # Those a thread took meanwhile, too late to ask (its result None): asked here, in the time left.
            late = [i for i, p in enumerate(pending) if not isinstance(p, Answer) and i not in asked_here and _unasked(p)]
            if late:
                asked_here.update(zip(late, self.query_many([queries[i] for i in late], deadline), strict=True))
        answers = []
        for index, (item, (name, rdtype)) in enumerate(zip(pending, queries, strict=False)):
            if index in asked_here:
                answers.append(asked_here[index])
            elif isinstance(item, Answer):
                answers.append(item)
            elif item.done() and item.exception() is None and item.result() is not None:
                answers.append(cast(Answer, item.result()))
            else:
                answers.append(Answer(name, rdtype.upper(), "error", error="timeout"))
        return answers

    def query_many(self, queries: Sequence[tuple[str, str]], deadline: float | None = None) -> list[Answer]:
        """Several queries at once, answers in the same order."""
        deadline = deadline if deadline is not None else self.deadline()
        if len(queries) == 1:
            return [self.query(queries[0][0], queries[0][1], deadline)]
        # Cached answers are taken here; only the others go to the query threads (no
        # Future, lock or wait per cached answer: most answers are cached).
        cached = [self.cache.get(cache_key(name, rdtype)) for name, rdtype in queries]
        missing = [(query, i) for i, (query, answer) in enumerate(zip(queries, cached, strict=True)) if answer is None]
        if not missing:
            return cast("list[Answer]", cached)
        keys = [cache_key(name, rdtype) for (name, rdtype), _ in missing]
        for key, answer, (_, i) in zip(keys, self._resolve_many(keys, deadline), missing, strict=True):
            self.cache.put(key, answer)
            cached[i] = answer
        return cast("list[Answer]", cached)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="dns")
            return self._pool

    # --- helpers ------------------------------------------------------------
    def a(self, name: str, deadline: float | None = None) -> Answer:
        """IPv4 addresses of *name*."""
        return self.query(name, "A", deadline)

    def aaaa(self, name: str, deadline: float | None = None) -> Answer:
        """IPv6 addresses of *name*."""
        return self.query(name, "AAAA", deadline)

    def mx(self, name: str, deadline: float | None = None) -> Answer:
        """MX records of *name*, as ``"PREFERENCE HOST"``."""
        return self.query(name, "MX", deadline)

    def txt(self, name: str, deadline: float | None = None) -> Answer:
        """TXT records of *name*, each one's strings joined."""
        return self.query(name, "TXT", deadline)

    def ptr(self, ip: str, deadline: float | None = None) -> Answer:
        """The PTR names of address *ip* (no trailing dot)."""
        try:
            name = reverse_pointer(ip)
        except ValueError:
            return Answer(ip, "PTR", "error", error="not an IP address")
        return self.query(name, "PTR", deadline)

    def addresses(self, name: str, deadline: float | None = None) -> Answer:
        """A and AAAA of *name* together: ok if either has records, error if both failed."""
        a, aaaa = self.query_many([(name, "A"), (name, "AAAA")], deadline)
        records = a.records + aaaa.records
        if records:
            return Answer(name, "A+AAAA", "ok", records, a.rdata + aaaa.rdata, min(a.ttl or MAX_TTL, aaaa.ttl or MAX_TTL))
        if a.failed and aaaa.failed:
            return Answer(name, "A+AAAA", "error", error=a.error)
        if a.failed or aaaa.failed:
            # One family failed, the other had nothing: we cannot say the name has no address.
            return Answer(name, "A+AAAA", "error", error=(a.error or aaaa.error))
        status: Status = "nxdomain" if a.status == "nxdomain" else "nodata"
        return Answer(name, "A+AAAA", status)

    # --- pyspf ------------------------------------------------------------
    def spf_lookup(self, name: str, qtype: str, strict: Any = True, timeout: float = 20.0) -> list[tuple[tuple[str, str], Any]]:
        """pyspf's ``DNSLookup`` signature, answered from this resolver (see :func:`use_for_spf`), by the
        deadline of the evaluation (:func:`traced_lookups`) at the latest: past it, only from the cache."""
        trace: LookupTrace | None = getattr(_trace, "current", None)
        deadline = time.monotonic() + min(float(timeout or self.timeout), self.timeout)
        # pyspf counts only the time of lookups that answer against its querytime, and its ptr mechanism goes
        # on after each error: ten PTR names that never answer, asked for each of ten ptr: terms, held MAIL
        # FROM 200 s with a 2 s budget.  Past the evaluation's deadline, query() answers a timeout at once.
        answer = self.query(name, qtype, min(deadline, trace.deadline) if trace is not None else deadline)
        if trace is not None:
            trace.saw(self.cache.expiry(cache_key(name, qtype)))
        if answer.failed:
            raise spf.TempError(f"DNS {answer.error or 'error'}")
        found: list[tuple[tuple[str, str], Any]] = []
        for rdata in answer.rdata:
            if qtype in ("A", "AAAA"):
                found.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                found.append(((name, qtype), (rdata.preference, name_text(rdata.exchange))))
            elif qtype == "PTR":
                found.append(((name, qtype), name_text(rdata.target)))
            elif qtype in ("TXT", "SPF"):
                found.append(((name, qtype), rdata.strings))
        return found

    @property
    def udp_nameservers(self) -> list[tuple[int, tuple[str, int]]]:
        """The nameservers our UDP client asks, as configured: (address family, (ip, port))."""
        return list(self._servers)

    def close(self) -> None:
        """Stop the background query threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def use_for_spf(get_resolver: Callable[[], Resolver]) -> None:
    """Make pyspf ask our resolver: *get_resolver* returns this process's :class:`Resolver`."""
    def lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20.0) -> list[tuple[tuple[str, str], Any]]:
        return get_resolver().spf_lookup(name, qtype, strict, timeout)

    spf.DNSLookup = lookup


def _udp_servers(resolver: dns.resolver.Resolver) -> list[tuple[int, tuple[str, int]]]:
    """(address family, (ip, port)) of the resolver's nameservers our UDP client asks, in order: those
    before the first it does not (DNS-over-HTTPS…); none when the resolver is set up in a way the
    client does not copy (TSIG, a cache).  Rotation (resolv.conf's ``options rotate``) it does copy: handed to
    dnspython, whose first nameserver waits the whole deadline, a nameserver that was down failed the questions
    it was asked first."""
    if resolver.keyname is not None or resolver.cache is not None:
        return []
    servers = []
    for nameserver in resolver.nameservers:
        if isinstance(nameserver, str) and dns.inet.is_address(nameserver):
            address, port = nameserver, resolver.nameserver_ports.get(nameserver, resolver.port)
        elif type(nameserver) is dns.nameserver.Do53Nameserver:
            address, port = nameserver.address, nameserver.port
        else:
            break
        servers.append((dns.inet.af_for_address(address), (address, port)))
    return servers


def _reply_to(wire: bytes, pending: dict[int, tuple[int, dns.message.Message]]) -> tuple[int, dns.message.Message, dns.message.Message | None] | None:
    """(position, request, response) for a datagram answering one of *pending* (by id), response None
    for a truncated reply; None for any other datagram, ignored as dnspython ignores it (spoofed,
    late, malformed)."""
    entry = pending.get(int.from_bytes(wire[:2], "big")) if len(wire) >= 2 else None
    if entry is None:
        return None
    i, request = entry
    try:
        response = dns.message.from_wire(wire, raise_on_truncation=True)
    except dns.message.Truncated as exc:
        return (i, request, None) if request.is_response(exc.message()) else None
    except Exception:  # noqa: BLE001 - malformed: keep waiting for the real reply
        return None
    return (i, request, response) if request.is_response(response) else None


def _answer_from(key: tuple[str, str], response: dns.message.Message) -> Answer | None:
    """Our answer from *response* as :meth:`Resolver._resolve` gives it; None for a reply that
    dnspython's resolver must judge (any rcode but NOERROR and NXDOMAIN, a chain it refuses)."""
    name, rdtype = key
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) or not isinstance(response, dns.message.QueryMessage):
        return None
    if not response.answer:
        # Nothing to chain through: what resolve_chaining() would find (no records; it cannot fail
        # then), without its walk up the name for the SOA, which _negative_ttl() does not use.
        status: Status = "nxdomain" if rcode == dns.rcode.NXDOMAIN else "nodata"
        return Answer(name, rdtype, status, ttl=_negative_ttl([response]))
    try:
        # dnspython's resolver follows the CNAME chain with resolve_chaining(), and refuses a reply
        # it fails on (too long a chain, an NXDOMAIN that answers the question).
        chain = response.resolve_chaining()
    except Exception:  # noqa: BLE001 - dnspython's resolver drops that server: let it decide
        return None
    if rcode == dns.rcode.NXDOMAIN:
        return Answer(name, rdtype, "nxdomain", ttl=min(_negative_ttl([response]), _cname_ttl(chain.cnames)))
    return _found(name, rdtype, chain, response)


def _found(name: str, rdtype: str, chain: dns.message.ChainingResult, response: Any) -> Answer:
    """The answer for a NOERROR *response*: the records at the end of its CNAME *chain*, else no data.

    Kept no longer than any CNAME of the chain (as dnspython's ``ChainingResult.minimum_ttl``):
    once one expires, the name may lead elsewhere (a re-pointed DKIM selector).
    """
    rrset = chain.answer
    if rrset is None:
        return Answer(name, rdtype, "nodata", ttl=min(_negative_ttl([response]), _cname_ttl(chain.cnames)))
    rdata = tuple(rrset)
    ttl = min(float(rrset.ttl), _cname_ttl(chain.cnames), MAX_TTL)
    return Answer(name, rdtype, "ok", tuple(_text(r) for r in rdata), rdata, ttl)


def _cname_ttl(cnames: Iterable[Any]) -> float:
    """The shortest TTL of the CNAME RRsets of a chain; infinite when there are none."""
    return float(min((rrset.ttl for rrset in cnames), default=math.inf))


def _chain_ttl(response: Any) -> float:
    """:func:`_cname_ttl` of the CNAME chain in *response*; infinite when it has none or cannot be followed."""
    try:
        return _cname_ttl(response.resolve_chaining().cnames)
    except Exception:  # noqa: BLE001 - dnspython's resolver already accepted this reply: nothing to bound
        return math.inf


def _text(rdata: Any) -> str:
    if rdata.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(rdata.address)
    if rdata.rdtype == dns.rdatatype.PTR:
        return name_text(rdata.target)
    if rdata.rdtype == dns.rdatatype.MX:
        return f"{rdata.preference} {rdata.exchange.to_text(True) or '.'}"
    if rdata.rdtype == dns.rdatatype.TXT:
        return b"".join(rdata.strings).decode("utf-8", "replace")
    return str(rdata.to_text())


def _negative_ttl(responses: Iterable[Any]) -> float:
    # RFC 2308: the SOA in the authority section bounds how long "no" may be kept.
    for response in responses:
        for rrset in getattr(response, "authority", ()) or ():
            if rrset.rdtype == dns.rdatatype.SOA:
                return float(min(rrset.ttl, rrset[0].minimum, NEGATIVE_TTL * 5))
    return NEGATIVE_TTL


def _short(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
