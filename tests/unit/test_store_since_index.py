"""``rules stats/whatif --since`` read the period's rows from its first, found through ix_messages_time.

The batches walk the primary key; with only ``time >= since`` beside it, the first batch
made SQLite (and PostgreSQL) step through every older row of the log: months of rows
for ``--since 1h``.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import event, insert

from milterd.config import DatabaseSection
from milterd.store import MessageRecord, Store, schema

OLD, RECENT = 20000, 30


def _store(tmp_path: Path) -> Store:
    store = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 'log.sqlite'}"))
    store.upgrade()
    start = dt.datetime(2026, 1, 1)
    with store.engine.begin() as connection:
        rows = [MessageRecord(action="accept", time=start + dt.timedelta(minutes=n)).as_row() for n in range(OLD)]
        connection.execute(insert(schema.messages), rows)
    recent = dt.datetime(2026, 12, 1)
    # Committed out of time order, as workers do: one row of the period has a lower id than an older one.
    late = [recent + dt.timedelta(seconds=n) for n in range(RECENT)]
    late.insert(5, recent - dt.timedelta(days=1))
    with store.engine.begin() as connection:
        connection.execute(insert(schema.messages), [MessageRecord(action="accept", time=t).as_row() for t in late])
    return store


def _steps(store: Store, since: dt.datetime) -> tuple[int, int]:
    """The rows iter_messages yields from *since*, and the SQLite VM steps it took (in units of 100)."""
    store.engine.dispose()
    steps = [0]

    def count(dbapi: Any, _record: Any) -> None:
        assert isinstance(dbapi, sqlite3.Connection)

        def tick() -> int:
            steps[0] += 1
            return 0
        dbapi.set_progress_handler(tick, 100)

    event.listen(store.engine, "connect", count)
    try:
        rows = list(store.iter_messages(since=since))
    finally:
        event.remove(store.engine, "connect", count)
    return len(rows), steps[0]


def test_since_reads_the_period_from_its_first_row_not_the_whole_log(tmp_path: Path) -> None:
    store = _store(tmp_path)
    since = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)
    found, steps = _steps(store, since)
    assert found == RECENT  # the out-of-order older row is left out
    _, whole = _steps(store, dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc))
    assert steps * 20 < whole  # 30 rows read, not 20,000 stepped over
    store.close()


def test_a_period_with_no_row_reads_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    assert _steps(store, dt.datetime(2027, 1, 1, tzinfo=dt.timezone.utc))[0] == 0
    store.close()
