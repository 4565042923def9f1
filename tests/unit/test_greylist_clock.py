"""Greylisting by the shared database's clock: several MX hosts write and compare
the times of one PostgreSQL store, so every "now" greylisting uses is the
database server's (this host's clock plus the measured offset), read at most
once a minute per process; on SQLite it is this host's clock, and nothing is asked.

The database's clock is faked here (``GreylistStore.read_clock`` replaced on a
SQLite store); tests/integration/test_greylist_clock_postgresql.py reads a real one.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import types
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import event, insert, select

from milterd import clock as clock_module
from milterd import greylist as gl
from milterd.checks.greylist import Greylist
from milterd.clock import ClockReading, DatabaseClock, utcnow
from milterd.config import Config, GreylistSection
from milterd.message.model import Envelope, Session, Spool
from milterd.services import build
from milterd.store import Store, StoreError, schema
from milterd.store.greylist import GreylistStore
from tests.harness import greylist as greylist_harness

DELAY = 300
NETWORK = "192.0.2.0/24"
CONFIG = GreylistSection(enabled=True, delay=DELAY, retry_window=3600, expire=86400, auto_whitelist_after=5)
TRIPLET = gl.Triplet(NETWORK, "alice@example.org", "bob@example.com")
#: This host's clock is 10 minutes behind the database server's.
BEHIND = dt.timedelta(minutes=10)


# --- DatabaseClock with a fake reading and a fake monotonic clock -------------------
class FakeTime:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.value = 1000.0

    def monotonic(self) -> float:
        return self.value


@pytest.fixture
def fake_time(monkeypatch: pytest.MonkeyPatch) -> FakeTime:
    fake = FakeTime()
    monkeypatch.setattr(clock_module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def reader(skew: dt.timedelta, calls: list[str]) -> Callable[[], ClockReading]:
    """A database clock *skew* ahead of this host's; each reading appended to *calls*."""
    def read() -> ClockReading:
        calls.append("read")
        before = utcnow()
        return ClockReading(before, before + skew, before)
    return read


def close(a: dt.datetime, b: dt.datetime, seconds: float = 2.0) -> bool:
    return abs((a - b).total_seconds()) < seconds


def test_offset_is_the_database_time_minus_the_middle_of_the_round_trip() -> None:
    t = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
    reading = ClockReading(t, t + dt.timedelta(seconds=601), t + dt.timedelta(seconds=2))
    assert reading.offset == dt.timedelta(seconds=600)


def test_offset_is_measured_at_first_use_then_once_per_interval(fake_time: FakeTime) -> None:
    calls: list[str] = []
    clock = DatabaseClock(reader(BEHIND, calls), interval=60)
    for _ in range(100):
        assert close(clock.now(), utcnow() + BEHIND)
    assert calls == ["read"]  # one query, not one per message
    fake_time.value += 59.9
    clock.now()
    assert calls == ["read"]
    fake_time.value += 0.1
    clock.now()
    clock.now()
    assert calls == ["read", "read"]


def test_a_failed_reading_keeps_the_last_offset(fake_time: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    readings: list[Any] = [BEHIND, StoreError("cannot read the database's clock: OperationalError: gone"), -BEHIND]
    calls: list[str] = []

    def read() -> ClockReading:
        calls.append("read")
        value = readings.pop(0)
        if isinstance(value, Exception):
            raise value
        now = utcnow()
        return ClockReading(now, now + value, now)

    clock = DatabaseClock(read, interval=60)
    assert close(clock.now(), utcnow() + BEHIND)
    fake_time.value += 60
    with caplog.at_level(logging.WARNING, logger="milterd"):
        assert close(clock.now(), utcnow() + BEHIND)  # the failure keeps 10 minutes
    assert clock.offset == BEHIND and "cannot read the clock" in caplog.text
    assert close(clock.now(), utcnow() + BEHIND) and calls == ["read", "read"]  # not asked again at once
    fake_time.value += 60
    assert close(clock.now(), utcnow() - BEHIND) and len(calls) == 3


def test_a_failed_first_reading_is_offset_zero(fake_time: FakeTime) -> None:
    def read() -> ClockReading:
        raise RuntimeError("no server")

    clock = DatabaseClock(read)
    assert close(clock.now(), utcnow()) and clock.offset == dt.timedelta(0)


def test_every_thread_waits_for_the_first_reading_to_end() -> None:
    """A second thread that asked while the first reading was under way got the host's own clock (offset 0): it
    passed the measuring thread's check because the attempt was marked before the database was read."""
    started, release = threading.Event(), threading.Event()

    def read() -> ClockReading:
        started.set()
        release.wait(10)
        before = utcnow()
        return ClockReading(before, before + dt.timedelta(hours=1), before)

    clock = DatabaseClock(read)
    offsets: dict[str, dt.timedelta] = {}
    first = threading.Thread(target=lambda: offsets.__setitem__("first", clock.now() - utcnow()))
    first.start()
    assert started.wait(10)
    second = threading.Thread(target=lambda: offsets.__setitem__("second", clock.now() - utcnow()))
    second.start()
    second.join(0.3)  # before the fix it had its answer by now; after it, it waits for the reading
    release.set()
    first.join(10)
    second.join(10)
    assert close(dt.datetime(2000, 1, 1) + offsets["second"], dt.datetime(2000, 1, 1, 1))
    assert close(dt.datetime(2000, 1, 1) + offsets["first"], dt.datetime(2000, 1, 1, 1))


def test_no_clock_of_its_own_is_never_asked_again(fake_time: FakeTime) -> None:
    calls: list[str] = []

    def read() -> None:
        calls.append("read")

    clock = DatabaseClock(read)
    for _ in range(3):
        assert close(clock.now(), utcnow())
        fake_time.value += 3600
    assert calls == ["read"] and clock.offset == dt.timedelta(0)


def test_a_large_offset_is_logged_once(fake_time: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    clock = DatabaseClock(reader(BEHIND, []), interval=60, name="the database server db.example")
    with caplog.at_level(logging.WARNING, logger="milterd"):
        for _ in range(3):
            clock.now()
            fake_time.value += 60
    warnings = [r.getMessage() for r in caplog.records if "clock offset" in r.getMessage()]
    assert len(warnings) == 1
    assert "+600.0s" in warnings[0] and "db.example is 600.0s ahead of this host's" in warnings[0] and "NTP" in warnings[0]


def test_a_small_offset_is_not_logged(fake_time: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    clock = DatabaseClock(reader(dt.timedelta(seconds=-20), []))
    with caplog.at_level(logging.WARNING, logger="milterd"):
        clock.now()
    assert "clock offset" not in caplog.text


# --- the store and the check, with a database clock 10 minutes ahead of this host ---
@pytest.fixture(scope="module")
def database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    yield f"sqlite:///{tmp_path_factory.mktemp('glclock') / 'store.sqlite'}"


# The fixture: the store at this module's database, greylisting's tables emptied.
store = greylist_harness.store


@pytest.fixture
def database_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[dt.timedelta], list[str]]:
    """Give every store a database clock *skew* ahead of this host's (as PostgreSQL's would be);
    the list returned counts its readings."""
    def install(skew: dt.timedelta) -> list[str]:
        calls: list[str] = []
        read = reader(skew, calls)
        # raising=False: on the code before the fix the store had no such method (and ignored it).
        monkeypatch.setattr(GreylistStore, "read_clock", lambda self: read(), raising=False)
        return calls
    return install


def _check(database: str, other: dict[str, object] | None = None, **greylist: object) -> tuple[Any, Greylist]:
    changes: dict[str, object] = dict(other or {})
    changes |= {"database.url": database, "greylist.enabled": True, "greylist.whitelist_providers": False,
                                  "greylist.delay": DELAY, "greylist.retry_window": 3600, "greylist.expire": 86400}
    changes.update({f"greylist.{k}": v for k, v in greylist.items()})
    services = build(Config().with_changes(changes))
    [check] = [c for c in services.checks if isinstance(c, Greylist)]
    return services, check


def rcpt(check: Greylist, recipient: str = "bob@example.com", client: str = "192.0.2.1") -> list[str]:
    session, envelope = Session(client_addr=client), Envelope(spool=Spool(1024), sender="alice@example.org")
    hits = [h.symbol for h in check.on_rcpt(session, envelope, recipient)]
    check.on_abort(session, envelope)
    return hits


def first_attempt_on_another_host(store: Store, at: dt.datetime) -> None:
    """MX A, whose clock is the database's, recorded the first attempt at *at*."""
    gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=at)


def test_a_retry_is_judged_by_the_database_clock(store: Store, database: str, database_clock: Any) -> None:
    calls = database_clock(BEHIND)
    db_now = utcnow() + BEHIND
    # Retried delay + 1 s after the first attempt, by the database's clock; by this
    # host's own clock (10 minutes behind) the first attempt is 299 s in the future.
    first_attempt_on_another_host(store, db_now - dt.timedelta(seconds=DELAY + 1))
    services, check = _check(database)
    try:
        assert rcpt(check) == ["GREYLIST_PASSED"]
        [row] = store.greylist.list_triplets()
        assert row["passed_at"] is not None and close(row["passed_at"], db_now)  # written in the database's time
        assert close(row["expires_at"], db_now + dt.timedelta(seconds=86400))
        for i in range(20):  # more messages: the offset is cached
            assert rcpt(check, f"new{i}@example.com") == ["GREYLIST"]
        assert calls == ["read"]
    finally:
        services.close()


def test_an_early_retry_is_judged_by_the_database_clock(store: Store, database: str, database_clock: Any) -> None:
    database_clock(-BEHIND)  # this host's clock is 10 minutes ahead
    first_attempt_on_another_host(store, utcnow() - BEHIND - dt.timedelta(seconds=60))
    services, check = _check(database)
    try:
        assert rcpt(check) == ["GREYLIST"]  # 60 s after the first attempt, not 660 s
        [row] = store.greylist.list_triplets()
        assert row["passed_at"] is None and row["attempts"] == 2
    finally:
        services.close()


def test_score_mode_judges_by_the_database_clock(store: Store, database: str, database_clock: Any) -> None:
    database_clock(BEHIND)
    first_attempt_on_another_host(store, utcnow() + BEHIND - dt.timedelta(seconds=DELAY + 1))
    services, check = _check(database, {"actions.greylist": 6}, mode="score")
    try:
        session, envelope = Session(client_addr="192.0.2.1"), Envelope(spool=Spool(1024), sender="alice@example.org")
        envelope.recipients.append("bob@example.com")
        status = check.on_score_greylist(session, envelope)
        assert not status.needed and not status.error
    finally:
        services.close()


def test_the_auto_whitelist_is_judged_by_the_database_clock(store: Store, database: str, database_clock: Any) -> None:
    database_clock(-BEHIND)  # this host's clock is 10 minutes ahead
    # The network was last used 86400 - 300 s ago by the database's clock: still whitelisted
    # (by this host's clock it would be 86400 + 300 s ago: expired).
    last_seen = utcnow() - BEHIND - dt.timedelta(seconds=86400 - 300)
    with store.engine.begin() as connection:
        connection.execute(insert(schema.greylist_clients).values(network=NETWORK, passes=5, last_seen=last_seen))
    services, check = _check(database, auto_whitelist_after=5)
    try:
        assert rcpt(check, "fresh@example.com") == []
        # Its use is written back in the database's time.
        with store.engine.connect() as connection:
            written = connection.execute(select(schema.greylist_clients.c.last_seen)).scalar_one()
        assert close(written.replace(tzinfo=dt.timezone.utc), utcnow() - BEHIND)
    finally:
        services.close()


def test_check_triplet_uses_the_database_clock(store: Store, database_clock: Any) -> None:
    database_clock(BEHIND)
    first = gl.check_triplet(store.greylist, TRIPLET, CONFIG)
    assert first.kind == "new" and first.first_seen is not None and close(first.first_seen, utcnow() + BEHIND)
    assert store.greylist.clock_offset() == BEHIND


def test_purge_and_stats_use_the_database_clock(store: Store, database_clock: Any) -> None:
    database_clock(BEHIND)
    gl.check_triplet(store.greylist, TRIPLET, CONFIG, now=utcnow() + BEHIND)
    # Expired a minute ago by the database's clock (9 minutes in the future by this host's).
    other = gl.Triplet(NETWORK, "old@example.org", "bob@example.com")
    gl.check_triplet(store.greylist, other, CONFIG, now=utcnow() + BEHIND - dt.timedelta(seconds=3660))
    assert store.greylist.stats(CONFIG.auto_whitelist_after)["expired"] == 1
    assert store.greylist.purge(CONFIG.expire) == (1, 0)
    assert [r["sender"] for r in store.greylist.list_triplets()] == ["alice@example.org"]


def test_a_failing_clock_query_never_fails_the_check(store: Store, database: str, monkeypatch: pytest.MonkeyPatch,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    def broken(self: GreylistStore) -> ClockReading:
        raise StoreError("cannot read the database's clock: OperationalError: server closed the connection")

    monkeypatch.setattr(GreylistStore, "read_clock", broken, raising=False)
    services, check = _check(database)
    try:
        with caplog.at_level(logging.WARNING, logger="milterd"):
            assert rcpt(check) == ["GREYLIST"]
        assert "cannot read the clock" in caplog.text
        [row] = store.greylist.list_triplets()
        assert close(row["first_seen"], utcnow())  # offset 0: this host's clock
    finally:
        services.close()


def test_sqlite_asks_nothing(store: Store) -> None:
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    assert store.greylist.read_clock() is None
    assert close(store.greylist.now(), utcnow()) and store.greylist.clock_offset() == dt.timedelta(0)
    assert statements == []


def test_a_slow_reading_is_not_used_and_is_tried_again_soon(fake_time: FakeTime, caplog: pytest.LogCaptureFixture) -> None:
    # A stall of 6 s between the two local readings would put the offset 3 s off for a
    # whole interval: enough for another MX host to pass a 3-second greylisting early.
    stall = dt.timedelta(seconds=6)
    readings = [(stall, dt.timedelta(0)), (dt.timedelta(milliseconds=2), BEHIND)]
    calls: list[str] = []

    def read() -> ClockReading:
        calls.append("read")
        round_trip, skew = readings.pop(0)
        before = utcnow()
        return ClockReading(before, before + skew, before + round_trip)

    clock = DatabaseClock(read, interval=60)
    with caplog.at_level(logging.WARNING, logger="milterd"):
        assert close(clock.now(), utcnow(), seconds=0.5) and clock.offset == dt.timedelta(0)
    assert "took 6.0s to read: not used" in caplog.text
    fake_time.value += clock_module.RETRY_AFTER - 0.1
    clock.now()
    assert calls == ["read"]
    fake_time.value += 0.1
    assert close(clock.now(), utcnow() + BEHIND) and calls == ["read", "read"]
    fake_time.value += 30
    clock.now()
    assert calls == ["read", "read"]  # a good reading: the next one an interval later


# --- a clock put right ---------------------------------------------------------------
@pytest.mark.parametrize("off", [dt.timedelta(days=1), dt.timedelta(hours=1), dt.timedelta(seconds=30)])
def test_a_triplet_first_seen_while_the_clock_ran_fast_waits_the_delay_not_the_error(store: Store, off: dt.timedelta) -> None:
    """First seen with the clock *off* fast (or now slow by that much): the retry was deferred for the delay plus
    the error ("try again in 86100 seconds", found by review); it starts again, and passes once the delay is over."""
    greylist = GreylistStore(store.engine)
    now = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)
    assert gl.check_triplet(greylist, TRIPLET, CONFIG, now=now + off).kind == "new"
    retry = gl.check_triplet(greylist, TRIPLET, CONFIG, now=now + dt.timedelta(seconds=10))
    assert (retry.kind, retry.wait) == ("expired", DELAY)
    assert gl.check_triplet(greylist, TRIPLET, CONFIG, now=now + dt.timedelta(seconds=20)).kind == "early"
    assert gl.check_triplet(greylist, TRIPLET, CONFIG, now=now + dt.timedelta(seconds=10 + DELAY)).kind == "pass"
