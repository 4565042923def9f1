"""Two MX hosts sharing one PostgreSQL store run the learner's housekeeping at the same moment: each counted the
table, then deleted the excess over its bound, so the second deleted a second excess (600 digests kept of 1,000
became 200).  One host's expiry now waits for the other's to commit, and counts what it left."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any, Callable

from sqlalchemy import event, func, insert, select

from milterd.config import DatabaseSection
from milterd.store import Store
from milterd.store.learner import LearnerStore, day_number, messages_table, tokens_table
from tests.harness import pgdb

NOW = dt.datetime(2026, 12, 6, tzinfo=dt.timezone.utc)


def filled(store: Store) -> None:
    with store.engine.begin() as connection:
        connection.execute(insert(messages_table), [{"digest": f"d{i:04}", "label": "spam", "time": NOW - dt.timedelta(days=10, seconds=-i)} for i in range(1000)])
        connection.execute(insert(tokens_table), [{"token": i, "spam": 5, "ham": 5, "atime": day_number(NOW) - 60 + i % 50} for i in range(1000)])


def count(store: Store, table: Any) -> int:
    with store.engine.connect() as connection:
        return int(connection.execute(select(func.count()).select_from(table)).scalar() or 0)


def raced(first: Store, second: Store, job: Callable[[LearnerStore], int], at: Callable[[str], bool] = lambda s: "LIMIT" in s) -> tuple[int, int]:
    """*job* on *first*, held between its count and its delete (the first DELETE whose text *at* accepts, upper-cased)
    until *job* on *second* is done (2 s at most)."""
    reached, go = threading.Event(), threading.Event()

    def hold(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("DELETE") and at(statement.upper()) and not reached.is_set():
            reached.set()  # it has counted
            go.wait(2)

    event.listen(first.engine, "before_cursor_execute", hold)
    results: dict[str, int] = {}
    held = threading.Thread(target=lambda: results.__setitem__("first", job(LearnerStore(first.engine))))
    held.start()
    assert reached.wait(10)
    other = threading.Thread(target=lambda: results.__setitem__("second", job(LearnerStore(second.engine))))
    other.start()
    other.join(2)  # the old code: done at once, its delete committed before the first host's
    go.set()
    held.join()
    other.join()
    event.remove(first.engine, "before_cursor_execute", hold)
    return results["first"], results["second"]


def test_fix_two_hosts_dropping_digests_at_once_keep_the_bound() -> None:
    with pgdb.upgraded_store("the learner's housekeeping on two hosts") as host_a:
        host_b = Store(DatabaseSection(url=str(host_a.engine.url.render_as_string(hide_password=False))))
        try:
            filled(host_a)
            first, second = raced(host_a, host_b, lambda learner: learner.drop_learned(600))
            assert count(host_a, messages_table) == 600, (first, second)
            assert first + second == 400
            first, second = raced(host_a, host_b, lambda learner: learner.expire(NOW - dt.timedelta(days=365), 1, 600))
            assert count(host_a, tokens_table) == 600, (first, second)
            assert first + second == 400
        finally:
            host_b.close()


def test_two_hosts_deleting_the_excess_over_max_tokens_in_batches_keep_the_bound() -> None:
    """The excess is chosen in one read and deleted in batches (one DELETE of millions held learners and SQLite's
    write lock): a host held after its choice, before its first batch, while the other expires, deletes nothing more."""
    with pgdb.upgraded_store("the learner's max_tokens expiry on two hosts") as host_a:
        host_b = Store(DatabaseSection(url=str(host_a.engine.url.render_as_string(hide_password=False))))
        try:
            filled(host_a)
            first, second = raced(host_a, host_b, lambda learner: learner.expire(NOW - dt.timedelta(days=365), 1, 600), at=lambda s: "LIMIT" not in s)
            assert count(host_a, tokens_table) == 600, (first, second)
            assert (first, second) == (0, 400)
            with host_a.engine.connect() as connection:
                kept = sorted(connection.execute(select(tokens_table.c.token)).scalars())
            assert kept == [i for i in range(1000) if i % 50 >= 20]  # the least recently learned went
        finally:
            host_b.close()
