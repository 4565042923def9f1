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
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import math
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Generic, Hashable, Iterable, Iterator, Literal, Sequence, TypeVar, cast

import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import spf

from .endpoints import split_host_port

if TYPE_CHECKING:
    from .config import DnsSection

log = logging.getLogger("milterd")

Status = Literal["ok", "nxdomain", "nodata", "error"]

#: Longest a negative answer (NXDOMAIN, no data) is kept when the zone gives no SOA.
NEGATIVE_TTL = 60.0
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


def parse_nameserver(spec: str) -> tuple[str, int]:
    """``"IP"``, ``"IP:PORT"``, ``"[IPv6]:PORT"`` or a bare IPv6 address → (ip, port); ValueError otherwise."""
    host, port = split_host_port(spec.strip(), 53)
    ipaddress.ip_address(host)
    return host, port


def reverse_pointer(ip: str) -> str:
    """The in-addr.arpa / ip6.arpa name of *ip* (no trailing dot)."""
    return ipaddress.ip_address(ip).reverse_pointer


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
        address = ipaddress.ip_address(ip)
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
    """The pyspf lookups of one evaluation in one thread: until when all of their answers stay cached."""

    def __init__(self) -> None:
        self.expires = math.inf
        self.lookups = 0

    def saw(self, expires: float | None) -> None:
        """One lookup whose answer leaves the cache at *expires* (None: it was not cached, an error)."""
        self.lookups += 1
        self.expires = min(self.expires, expires if expires is not None else -math.inf)


_trace = threading.local()


@contextlib.contextmanager
def traced_lookups() -> Iterator[LookupTrace]:
    """Trace the pyspf lookups this thread makes inside the block (:meth:`Resolver.spf_lookup`)."""
    trace = LookupTrace()
    previous = getattr(_trace, "current", None)
    _trace.current = trace
    try:
        yield trace
    finally:
        _trace.current = previous


class Resolver:
    """DNS for checks: ``[dns] nameservers`` (else /etc/resolv.conf), bounded, cached, concurrent."""

    def __init__(self, section: "DnsSection") -> None:
        self.timeout = float(section.timeout)
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
    def query(self, name: str, rdtype: str, deadline: float | None = None) -> Answer:
        """Ask for *rdtype* records of *name*, within *deadline* (default: ``timeout`` from now)."""
        key = (name.lower().rstrip("."), rdtype.upper())
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        remaining = (deadline if deadline is not None else self.deadline()) - time.monotonic()
        if remaining <= 0:
            return Answer(key[0], key[1], "error", error="timeout")
        answer = self._resolve(key[0], key[1], remaining)
        self.cache.put(key, answer)
        return answer

    def _resolve(self, name: str, rdtype: str, lifetime: float) -> Answer:
        try:
            result = self._resolver.resolve(name, rdtype, lifetime=lifetime, raise_on_no_answer=False, search=False)
        except dns.resolver.NXDOMAIN as exc:
            return Answer(name, rdtype, "nxdomain", ttl=_negative_ttl(exc.responses().values()))
        except dns.exception.Timeout:
            return Answer(name, rdtype, "error", error="timeout")
        except dns.resolver.NoNameservers as exc:
            return Answer(name, rdtype, "error", error=_short(exc))
        except Exception as exc:  # noqa: BLE001 - any resolver failure is an "error" answer
            return Answer(name, rdtype, "error", error=_short(exc))
        if result.rrset is None:
            return Answer(name, rdtype, "nodata", ttl=_negative_ttl([result.response]))
        rdata = tuple(result.rrset)
        ttl = min(float(result.rrset.ttl), MAX_TTL)
        return Answer(name, rdtype, "ok", tuple(_text(r) for r in rdata), rdata, ttl)

    def submit(self, name: str, rdtype: str, deadline: float | None = None) -> "Future[Answer]":
        """Start a query in the background; collect it with :meth:`collect`."""
        cached = self.cache.get((name.lower().rstrip("."), rdtype.upper()))
        if cached is not None:
            future: Future[Answer] = Future()
            future.set_result(cached)
            return future
        return self._executor().submit(self.query, name, rdtype, deadline)

    def collect(self, futures: Sequence["Future[Answer]"], queries: Sequence[tuple[str, str]], deadline: float) -> list[Answer]:
        """The answers of *futures* (started for *queries*); those not done by *deadline* are timeouts."""
        wait_futures(futures, timeout=max(0.0, deadline - time.monotonic()))
        answers = []
        for future, (name, rdtype) in zip(futures, queries, strict=False):
            if future.done() and future.exception() is None:
                answers.append(future.result())
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
        cached = [self.cache.get((name.lower().rstrip("."), rdtype.upper())) for name, rdtype in queries]
        missing = [(query, i) for i, (query, answer) in enumerate(zip(queries, cached, strict=True)) if answer is None]
        if not missing:
            return cast("list[Answer]", cached)
        futures = [self._executor().submit(self.query, name, rdtype, deadline) for (name, rdtype), _ in missing]
        for answer, (_, i) in zip(self.collect(futures, [query for query, _ in missing], deadline), missing, strict=True):
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
        """pyspf's ``DNSLookup`` signature, answered from this resolver (see :func:`use_for_spf`)."""
        deadline = time.monotonic() + min(float(timeout or self.timeout), self.timeout)
        answer = self.query(name, qtype, deadline)
        trace: LookupTrace | None = getattr(_trace, "current", None)
        if trace is not None:
            trace.saw(self.cache.expiry((name.lower().rstrip("."), qtype.upper())))
        if answer.failed:
            raise spf.TempError(f"DNS {answer.error or 'error'}")
        found: list[tuple[tuple[str, str], Any]] = []
        for rdata in answer.rdata:
            if qtype in ("A", "AAAA"):
                found.append(((name, qtype), rdata.address))
            elif qtype == "MX":
                found.append(((name, qtype), (rdata.preference, rdata.exchange)))
            elif qtype == "PTR":
                found.append(((name, qtype), rdata.target.to_text(True)))
            elif qtype in ("TXT", "SPF"):
                found.append(((name, qtype), rdata.strings))
        return found

    def close(self) -> None:
        """Stop the background query threads."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)


def use_for_spf(get_resolver: Callable[[], Resolver]) -> None:
    """Make pyspf ask our resolver: *get_resolver* returns this process's :class:`Resolver`."""
    def lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20.0) -> list[tuple[tuple[str, str], Any]]:
        return get_resolver().spf_lookup(name, qtype, strict, timeout)

    spf.DNSLookup = lookup


def _text(rdata: Any) -> str:
    if rdata.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
        return str(rdata.address)
    if rdata.rdtype == dns.rdatatype.PTR:
        return str(rdata.target.to_text(True))
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
