"""Links before a listed one must not hide it from the URI lists: the links kept are bounded by host, not first-come."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from milterd.config import Config
from milterd.content import mimetext
from milterd.content.mimetext import extract
from milterd.dns import Answer, Resolver
from milterd.message.model import Envelope, Session
from milterd.message.pipeline import Pipeline
from milterd.services import build

HEAD = b"From: Alice <alice@example.org>\r\nTo: bob@example.com\r\nSubject: hi\r\nMessage-ID: <1@example.org>\r\n"
LISTED = {("evil.example.dbl.spamhaus.org", "A"): ["127.0.1.2"]}


@pytest.fixture
def dns_table(monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[tuple[str, str], list[str]]], list[str]]:
    """Answer the resolver's queries from a table (NXDOMAIN otherwise); the names asked."""

    def install(records: dict[tuple[str, str], list[str]]) -> list[str]:
        asked: list[str] = []

        def resolve_many(self: Resolver, keys: list[tuple[str, str]], deadline: float) -> list[Answer]:
            asked.extend(name for name, _ in keys)
            return [
                Answer(name, rdtype, "ok", tuple(records[(name, rdtype)]), ttl=60) if (name, rdtype) in records
                else Answer(name, rdtype, "nxdomain", ttl=60)
                for name, rdtype in keys
            ]

        monkeypatch.setattr(Resolver, "_resolve_many", resolve_many)
        return asked

    return install


@pytest.fixture
def pipeline(tmp_path: Path) -> Iterator[Pipeline]:
    """The real pipeline, greylisting off, DNS only through the (patched) resolver."""
    settings = {
        "milter.hostname": "mx.test",
        "database.url": f"sqlite:///{tmp_path / 'log.sqlite'}",
        "rules.dir": "",
        "dns.nameservers": ["127.0.0.1:9"],
        "greylist.enabled": False,
    }
    services = build(Config().with_changes(settings))
    services.store.ensure_schema(True)
    made = Pipeline(services)
    yield made
    made.shutdown()
    services.close()


def run_message(pipeline: Pipeline, message: bytes) -> Envelope:
    """*message* through every stage of the pipeline; its envelope (the hits in ``hits``)."""
    session = Session(client_addr="192.0.2.10", client_name="mail.example.org", helo="mail.example.org", family="inet")
    pipeline.connect(session)
    pipeline.helo(session)
    env = pipeline.new_envelope(session)
    env.sender = "alice@example.org"
    env.queue_id = "QID1"
    pipeline.mail(session, env)
    pipeline.rcpt(session, env, "bob@example.com")
    pipeline.data(session, env)
    head, _, body = message.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        pipeline.header(session, env, name.decode(), value.strip())
    pipeline.eoh(session, env)
    pipeline.body(session, env, body)
    try:
        pipeline.eom(session, env)
        return env
    finally:
        pipeline.finish(session, env)


def symbols(env: Envelope) -> set[str]:
    return {hit.symbol for hit in env.hits}


def test_a_thousand_links_to_a_skipped_domain_do_not_hide_a_listed_one(pipeline: Pipeline, dns_table: Any) -> None:
    asked = dns_table(LISTED)
    padding = b"".join(b"http://www.google.com/?%d\r\n" % i for i in range(1000))
    env = run_message(pipeline, HEAD + b"\r\n" + padding + b"Click http://evil.example/login now\r\n")
    assert "evil.example.dbl.spamhaus.org" in asked  # the old code kept the first 1,000 links: never asked
    assert "URIBL_DBL_SPAM" in symbols(env)
    assert not any("google.com" in name for name in asked)  # skipped: no lookup spent on the padding


def test_repeated_hosts_in_html_leave_room_for_a_new_one(pipeline: Pipeline, dns_table: Any) -> None:
    dns_table(LISTED)
    padding = "".join(f'<a href="https://{host}/p{i}">x</a><img src="http://img.{host}/{i}.png">' for i in range(700) for host in ("www.google.com", "paypal.com"))
    html = f"<html><body>{padding}<p><a href='http://evil.example/login'>Log in</a></p></body></html>".encode()
    env = run_message(pipeline, HEAD + b"Content-Type: text/html\r\n\r\n" + html + b"\r\n")
    assert "URIBL_DBL_SPAM" in symbols(env)  # the old parser kept a part's first 1,000 links


def test_extract_keeps_the_first_link_of_every_host() -> None:
    body = "".join(f"http://www.google.com/?{i} https://goo.gl/{i}\r\n" for i in range(3000)) + "see www.evil.example/x\r\n"
    found = extract(HEAD + b"\r\n" + body.encode())
    assert found.uris[-1] == "http://www.evil.example/x"  # the old code: the first 1,000 links only
    assert found.uris[:-1] == [f"{link}{i}" for i in range(500) for link in ("http://www.google.com/?", "https://goo.gl/")]
    assert found.error == ""


def kept_hosts(links: list[str]) -> set[str]:
    return {uri.split("/")[2] for uri in extract(HEAD + b"\r\n" + "\r\n".join(links).encode()).uris}


def test_past_max_hosts_which_are_kept_is_drawn_not_first_come(monkeypatch: pytest.MonkeyPatch) -> None:
    # 3,000 distinct hosts under a skipped domain, then a listed one: the old code kept the first 1,000
    # links, so the listed host never; then each host was kept with probability MAX_HOSTS / 3,001; now the
    # listed domain keeps its host always (chosen by registrable domain), and google.com's 999 are drawn,
    # whatever the links' order and repetition.
    links = [f"http://x{i}.google.com/" for i in range(3000)] + ["http://evil.example/"]
    drawn = set()
    for salt in range(30):
        monkeypatch.setattr(mimetext, "_HOST_SALT", salt, raising=False)
        hosts = kept_hosts(links)
        assert len(hosts) == 1000  # MAX_HOSTS
        assert "evil.example" in hosts
        drawn.add(frozenset(hosts))
        assert max(int(host[1:].split(".")[0]) for host in hosts if host != "evil.example") >= 2000  # not the first ones
        if salt < 3:
            shuffled = links * 2
            random.Random(salt).shuffle(shuffled)
            assert kept_hosts(shuffled) == hosts
    assert len(drawn) == 30


def test_a_hundred_thousand_distinct_hosts_stay_cheap(monkeypatch: pytest.MonkeyPatch) -> None:
    body = "".join(f"http://h{i}.example/p\r\n" for i in range(100_000)).encode()
    raw = HEAD + b"\r\n" + body
    looked_at = [0]  # links offered to the kept set: the work per link (host, rank, heap)
    add = mimetext._Links.add

    def counted(self: Any, uri: str, followed: bool = True) -> bool:
        looked_at[0] += 1
        return add(self, uri, followed)

    monkeypatch.setattr(mimetext._Links, "add", counted)
    tracemalloc.start()
    try:
        found = extract(raw)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Drawn among the MAX_LINKS_SCANNED looked at, not the first ones (the old code kept h0 to h999).
    assert max(int(uri[8:].split(".")[0]) for uri in found.uris) >= 2000
    assert max(int(uri[8:].split(".")[0]) for uri in found.uris) < mimetext.MAX_LINKS_SCANNED
    assert found.truncated and len(found.uris) == mimetext.MAX_HOSTS
    assert peak < 20_000_000, f"{peak / 1e6:.0f} MB"
    assert looked_at[0] <= 20_000 + 1, looked_at  # MAX_LINKS_SCANNED of the 100,000 (the one past it only says so)
