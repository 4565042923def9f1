"""The scan-result cache: keys, expiry, bound, and the spamd check's key."""

from __future__ import annotations

from milterd.checks.spamassassin import scan_key
from milterd.message.model import Envelope, Session, Spool
from milterd.scanners.cache import ResultCache, content_key


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_content_key_separates_fields_and_content() -> None:
    assert content_key(["ab", "c"], [b"x"]) != content_key(["a", "bc"], [b"x"])
    assert content_key(["a"], [b"xy"]) == content_key(["a"], [b"x", b"y"])  # chunking does not matter
    assert content_key(["a"], [b"xy"]) != content_key(["a"], [b"xz"])
    assert content_key([], [b""]) != content_key([""], [b""])


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache: ResultCache[str] = ResultCache(10, 60, clock=clock)
    cache.put(b"k", "v")
    clock.now += 59
    assert cache.get(b"k") == ("v", 59)
    clock.now += 1
    assert cache.get(b"k") is None
    assert len(cache) == 0 and (cache.hits, cache.misses) == (1, 1)


def test_least_recently_used_entries_go_first() -> None:
    cache: ResultCache[int] = ResultCache(2, 60, clock=Clock())
    cache.put(b"a", 1)
    cache.put(b"b", 2)
    assert cache.get(b"a") is not None  # a is now the most recent
    cache.put(b"c", 3)
    assert cache.get(b"b") is None and cache.get(b"a") is not None and cache.get(b"c") is not None
    assert len(cache) == 2


def test_size_or_ttl_zero_keeps_nothing() -> None:
    for cache in (ResultCache[int](0, 60), ResultCache[int](10, 0)):
        cache.put(b"a", 1)
        assert not cache.enabled and cache.get(b"a") is None and len(cache) == 0


def _transaction(body: bytes = b"Hello\r\n", client: str = "192.0.2.1", helo: str = "mx.example.org", queue_id: str = "ABC123") -> tuple[Session, Envelope]:
    session = Session(client_addr=client, client_name="mx.example.org", helo=helo)
    spool = Spool(1 << 20)
    spool.write(body)
    envelope = Envelope(spool, sender="a@example.org", recipients=["b@example.com"], queue_id=queue_id,
                        headers=[("Subject", b" hi"), ("Received", b" from x by y; date")])
    return session, envelope


def test_scan_key_ignores_the_queue_id_but_not_content_client_or_recipients() -> None:
    base = scan_key(*_transaction(), user="")
    assert scan_key(*_transaction(queue_id="DEF456"), user="") == base  # a retry gets a new queue id
    assert scan_key(*_transaction(body=b"Hello!\r\n"), user="") != base
    assert scan_key(*_transaction(client="192.0.2.2"), user="") != base
    assert scan_key(*_transaction(helo="other.example.org"), user="") != base
    assert scan_key(*_transaction(), user="bob") != base
    session, envelope = _transaction()
    envelope.recipients.append("c@example.com")
    assert scan_key(session, envelope, "") != base
    session, envelope = _transaction()
    envelope.headers[1] = ("Received", b" from z by y; date")
    assert scan_key(session, envelope, "") != base
