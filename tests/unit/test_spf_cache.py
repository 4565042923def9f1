"""The SPF check's per-worker results (milterd/checks/spf.py): the result pyspf would give, kept as long as its DNS answers."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
import spf

import milterd.checks.spf as spf_check
from milterd.checks.spf import SpfResults, evaluate
from milterd.config import DnsSection
from milterd.dns import Answer, Resolver, use_for_spf


class Clock:
    """time.monotonic, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Zone:
    """The records a fake upstream serves: name → (type, values, TTL); counts the questions."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], tuple[list[str], float]] = {}
        self.asked: list[tuple[str, str]] = []
        self.broken: set[tuple[str, str]] = set()

    def resolve(self, name: str, rdtype: str, lifetime: float) -> Answer:
        self.asked.append((name, rdtype))
        if (name, rdtype) in self.broken:
            return Answer(name, rdtype, "error", error="SERVFAIL")
        found = self.records.get((name, rdtype))
        if found is None:
            return Answer(name, rdtype, "nxdomain", ttl=60.0)
        values, ttl = found
        if rdtype == "TXT":
            rdata = tuple(SimpleNamespace(strings=(v.encode(),)) for v in values)
        else:
            rdata = tuple(SimpleNamespace(address=v) for v in values)
        return Answer(name, rdtype, "ok", tuple(values), rdata, ttl)


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Zone, Clock, list[tuple[str, str, str]]]]:
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    zone = Zone()
    resolver = Resolver(DnsSection(nameservers=["127.0.0.1:1"], timeout=2.0))
    # Every question goes to the fake upstream: no nameserver for our UDP client, dnspython's path replaced.
    monkeypatch.setattr(resolver, "_servers", [])
    monkeypatch.setattr(resolver, "_resolve", zone.resolve)
    before = spf.DNSLookup
    use_for_spf(lambda: resolver)
    evaluated: list[tuple[str, str, str]] = []
    real = spf_check._Query.check

    def counting(query: Any) -> Any:
        evaluated.append((query.i, query.s, query.h))
        return real(query)

    monkeypatch.setattr(spf_check._Query, "check", counting)
    try:
        yield zone, clock, evaluated
    finally:
        spf.DNSLookup = before


def fresh(client: str, sender: str, helo: str) -> tuple[str, str]:
    """What pyspf says without the results table (asking the same resolver)."""
    result, explanation = spf.query(i=client, s=sender, h=helo, timeout=2.0, querytime=2.0).check()[::2]
    return str(result), str(explanation)


def test_a_result_is_reused_until_its_shortest_ttl_ends(world: tuple[Zone, Clock, list[tuple[str, str, str]]]) -> None:
    zone, clock, evaluated = world
    zone.records[("example.org", "TXT")] = (["v=spf1 a:mail.example.org -all"], 300.0)
    zone.records[("mail.example.org", "A")] = (["192.0.2.10"], 30.0)
    results = SpfResults()
    first = evaluate("192.0.2.10", "alice@example.org", "mx.example.net", 2.0, results)
    assert first[0] == "pass" and first == fresh("192.0.2.10", "alice@example.org", "mx.example.net")
    assert evaluate("192.0.2.10", "alice@example.org", "mx.example.net", 2.0, results) == first
    assert len(evaluated) == 1  # the second answer came from the table
    assert evaluate("192.0.2.99", "alice@example.org", "mx.example.net", 2.0, results)[0] == "fail"
    assert len(evaluated) == 2  # another client is another evaluation
    clock.now += 29
    evaluate("192.0.2.10", "alice@example.org", "mx.example.net", 2.0, results)
    assert len(evaluated) == 2
    zone.records[("mail.example.org", "A")] = (["192.0.2.11"], 30.0)  # the A record changes; its TTL runs out
    clock.now += 2
    assert evaluate("192.0.2.10", "alice@example.org", "mx.example.net", 2.0, results)[0] == "fail"
    assert len(evaluated) == 3
    assert ("mail.example.org", "A") in zone.asked[-1:]


def test_a_whole_sender_is_the_key_because_macros_may_name_its_local_part(world: tuple[Zone, Clock, list[tuple[str, str, str]]]) -> None:
    zone, _, evaluated = world
    zone.records[("example.org", "TXT")] = (["v=spf1 exists:%{l}.allowed.example.org -all"], 300.0)
    zone.records[("alice.allowed.example.org", "A")] = (["127.0.0.2"], 300.0)
    results = SpfResults()
    verdicts = [evaluate("192.0.2.10", s, "mx.example.net", 2.0, results)[0] for s in ("alice@example.org", "bob@example.org", "alice@example.org", "bob@example.org")]
    assert verdicts == ["pass", "fail", "pass", "fail"]
    assert len(evaluated) == 2
    assert [fresh("192.0.2.10", s, "mx.example.net")[0] for s in ("alice@example.org", "bob@example.org")] == ["pass", "fail"]


def test_errors_and_temperrors_are_not_kept(world: tuple[Zone, Clock, list[tuple[str, str, str]]]) -> None:
    zone, _, evaluated = world
    zone.records[("example.org", "TXT")] = (["v=spf1 a:mail.example.org -all"], 300.0)
    zone.broken.add(("mail.example.org", "A"))
    results = SpfResults()
    assert evaluate("192.0.2.10", "a@example.org", "h.example", 2.0, results)[0] == "temperror"
    assert evaluate("192.0.2.10", "a@example.org", "h.example", 2.0, results)[0] == "temperror"
    assert len(evaluated) == 2 and len(results) == 0
    zone.broken.clear()
    zone.records[("mail.example.org", "A")] = (["192.0.2.10"], 300.0)
    assert evaluate("192.0.2.10", "a@example.org", "h.example", 2.0, results)[0] == "pass"  # the outage is over at once
    assert len(results) == 1


def test_a_zero_ttl_answer_keeps_nothing(world: tuple[Zone, Clock, list[tuple[str, str, str]]]) -> None:
    zone, _, evaluated = world
    zone.records[("example.org", "TXT")] = (["v=spf1 ip4:192.0.2.0/24 -all"], 0.0)
    results = SpfResults()
    for _ in range(2):
        assert evaluate("192.0.2.10", "a@example.org", "h.example", 2.0, results)[0] == "pass"
    assert len(evaluated) == 2 and len(results) == 0


def test_the_table_is_bounded_and_least_recently_used_goes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock()
    monkeypatch.setattr(time, "monotonic", clock)
    results = SpfResults(2)
    results.put(("1", "a", "h"), ("pass", ""), clock.now + 60)
    results.put(("2", "a", "h"), ("fail", ""), clock.now + 60)
    assert results.get(("1", "a", "h")) == ("pass", "")
    results.put(("3", "a", "h"), ("none", ""), clock.now + 60)
    assert results.get(("2", "a", "h")) is None and results.get(("1", "a", "h")) == ("pass", "")
    results.put(("4", "a", "h"), ("none", ""), clock.now)  # already expired: not kept
    assert results.get(("4", "a", "h")) is None
    clock.now += 61
    assert results.get(("1", "a", "h")) is None and len(results) == 1
