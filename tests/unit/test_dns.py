"""milterd.dns: names, the bounded cache, and real queries against a private unbound."""

from __future__ import annotations

import socket
import time

import pytest

from milterd.config import DnsSection
from milterd.dns import Answer, Resolver, TTLCache, dnsbl_name, observe_cache, parse_nameserver


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


def _silent_resolver(silent: socket.socket) -> Resolver:
    return Resolver(DnsSection(nameservers=[f"127.0.0.1:{silent.getsockname()[1]}"], timeout=0.3))


def test_query_many_answers_cached_queries_without_threads_or_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 15: answers in the cache are returned in place; only the others are asked (issue 14: from
    the calling thread, by the UDP client, not through the query threads)."""
    import milterd.dns

    waits: list[int] = []
    real_wait = milterd.dns.wait_futures
    monkeypatch.setattr(milterd.dns, "wait_futures", lambda futures, timeout=None: (waits.append(len(futures)), real_wait(futures, timeout=timeout))[1])
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        resolver = _silent_resolver(silent)
        a = Answer("a.test", "A", "ok", ("192.0.2.1",), ttl=60)
        mx = Answer("b.test", "MX", "nodata", ttl=60)
        resolver.cache.put(("a.test", "A"), a)
        resolver.cache.put(("b.test", "MX"), mx)
        assert resolver.query_many([("A.test.", "a"), ("b.test", "MX")]) == [a, mx]
        assert waits == [] and resolver._pool is None
        # One uncached query among cached ones: the order holds, only that one is asked (and times out).
        answers = resolver.query_many([("a.test", "A"), ("c.test", "A"), ("b.test", "MX")])
        assert answers[0] is a and answers[2] is mx
        assert (answers[1].name, answers[1].rdtype, answers[1].status) == ("c.test", "A", "error")
        assert waits == [] and resolver._pool is None
    finally:
        silent.close()
