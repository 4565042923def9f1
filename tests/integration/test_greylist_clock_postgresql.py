"""Greylisting by the database server's clock on real PostgreSQL (a fresh database
per run): the offset measured against the server is small here (one machine,
one clock), a greylist round works with it, and the clock is read once, not per
message.  tests/unit/test_greylist_clock.py fakes a server whose clock is off."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any, Iterator

import pytest
from sqlalchemy import event, update

from milterd import greylist as gl
from milterd.checks.greylist import Greylist
from milterd.clock import utcnow
from milterd.config import Config, DatabaseSection, GreylistSection
from milterd.message.model import Envelope, Session, Spool
from milterd.services import build
from milterd.store import Store, schema
from tests.harness import greylist as greylist_harness
from tests.harness import pgdb

DELAY = 300
CONFIG = GreylistSection(enabled=True, delay=DELAY, retry_window=3600, expire=86400)
TRIPLET = gl.Triplet("192.0.2.0/24", "alice@example.org", "bob@example.com")


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with pgdb.required_database("the shared-clock tests") as url:
        yield url


# The fixture: the store at this module's database, greylisting's tables emptied.
store = greylist_harness.store


def clock_queries(store: Store) -> list[str]:
    """The statements reading the server's clock on *store*'s engine, from now on."""
    found: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if "clock_timestamp" in statement:
            found.append(statement)

    event.listen(store.engine, "before_cursor_execute", seen)
    return found


def fake_the_delay(store: Store, seconds: float) -> None:
    """Move every triplet's first attempt *seconds* into the past (instead of waiting)."""
    table = schema.greylist
    with store.engine.begin() as connection:
        connection.execute(update(table).values(first_seen=table.c.first_seen - dt.timedelta(seconds=seconds)))


def test_the_offset_to_the_real_server_is_small(store: Store) -> None:
    reading = store.greylist.read_clock()
    assert reading is not None and reading.database.tzinfo is not None
    assert reading.before <= reading.after
    assert abs(reading.offset.total_seconds()) < 5
    now = store.greylist.now()
    assert abs((now - utcnow()).total_seconds()) < 5
    assert abs(store.greylist.clock_offset().total_seconds()) < 5


def test_a_greylist_round_by_the_server_clock(store: Store) -> None:
    queries = clock_queries(store)
    first = gl.check_triplet(store.greylist, TRIPLET, CONFIG)
    assert first.kind == "new"
    assert gl.check_triplet(store.greylist, TRIPLET, CONFIG).kind == "early"
    fake_the_delay(store, DELAY + 1)
    assert gl.check_triplet(store.greylist, TRIPLET, CONFIG).kind == "pass"
    assert gl.check_triplet(store.greylist, TRIPLET, CONFIG).kind == "known"
    assert len(queries) == 1  # one reading of the clock, not one per attempt


def test_the_check_reads_the_server_clock_once(store: Store, database: str) -> None:
    changes = {"database.url": database, "greylist.enabled": True, "greylist.whitelist_providers": False, "greylist.delay": DELAY}
    services = build(Config().with_changes(changes))
    [check] = [c for c in services.checks if isinstance(c, Greylist)]

    def rcpt(recipient: str) -> list[str]:
        session, envelope = Session(client_addr="192.0.2.1"), Envelope(spool=Spool(1024), sender="alice@example.org")
        hits = [h.symbol for h in check.on_rcpt(session, envelope, recipient)]
        check.on_abort(session, envelope)
        return hits

    try:
        queries = clock_queries(services.store)
        assert [rcpt(f"r{i}@example.com") for i in range(10)] == [["GREYLIST"]] * 10
        fake_the_delay(store, DELAY + 1)
        assert [rcpt(f"r{i}@example.com") for i in range(10)] == [["GREYLIST_PASSED"]] * 10
        assert len(queries) == 1
    finally:
        services.close()


def test_a_server_that_does_not_answer_leaves_this_host_clock(caplog: pytest.LogCaptureFixture) -> None:
    # Nothing listens on port 1: the reading fails at once, and the offset stays 0.
    store = Store(DatabaseSection(url=f"postgresql+psycopg://{pgdb.USER}@{pgdb.HOST}:1/none", busy_timeout=1))
    try:
        with caplog.at_level(logging.WARNING, logger="milterd"):
            now = store.greylist.now()
        assert abs((now - utcnow()).total_seconds()) < 2
        assert store.greylist.clock_offset() == dt.timedelta(0)
        assert "cannot read the clock of the database server 127.0.0.1" in caplog.text
    finally:
        store.close()
