"""``[database] log_retention``: the message log's rows older than it are deleted hourly, in short transactions,
but those a quarantined message still points at (before, every message added a row for ever)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest
from alembic import command
from sqlalchemy import func, inspect, select

from milterd import maintenance
from milterd import store as store_module
from milterd.config import Config, DatabaseSection
from milterd.store import MessageRecord, Store, schema
from milterd.store.quarantine import QuarantineWrite

NOW = dt.datetime(2026, 12, 6, 4, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 'log.sqlite'}"))
    store.upgrade()
    yield store
    store.close()


def logged(store: Store, queue_id: str, days_ago: float, quarantined: bool = False) -> None:
    when = NOW - dt.timedelta(days=days_ago)
    record = MessageRecord(action="quarantine" if quarantined else "accept", time=when, queue_id=queue_id)
    held = None
    if quarantined:
        row = {"time": when, "mta_host": "", "queue_id": queue_id, "client_addr": "", "client_name": "", "helo": "", "sender": "",
               "recipients": ["b@example.org"], "subject": "", "score": 13.0, "reason": "score", "symbols": {}, "size": 4,
               "mode": "discard", "release_count": 0, "learned_ham": False}
        held = QuarantineWrite(row, lambda: [b"x\r\n\r\n"])
    store.log_message(record, held)


def queue_ids(store: Store) -> list[str]:
    with store.engine.connect() as connection:
        return sorted(str(q) for q in connection.execute(select(schema.messages.c.queue_id)).scalars())


def old_rows_go_but_those_of_held_messages(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """The purge on *store* (SQLite here, PostgreSQL in tests/integration/test_log_retention_pg.py)."""
    monkeypatch.setattr(store_module, "LOG_PURGE_BATCH", 2)  # several transactions
    for n in range(5):
        logged(store, f"OLD{n}", 100 + n)
    logged(store, "HELD", 120, quarantined=True)
    logged(store, "NEW", 10)
    assert store.purge_log(NOW - dt.timedelta(days=90)) == 5
    assert queue_ids(store) == ["HELD", "NEW"]


def test_fix_old_rows_go_but_those_of_held_messages(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    old_rows_go_but_those_of_held_messages(store, monkeypatch)
    assert store.purge_log(NOW - dt.timedelta(days=90)) == 0
    with store.engine.connect() as connection:  # the quarantined message keeps its log row
        assert connection.execute(select(func.count()).select_from(schema.quarantine).where(schema.quarantine.c.message_log_id.is_not(None))).scalar() == 1


def quarantine_links_are_indexed(store: Store) -> None:
    """Schema 0005's index, which the purge's deletes (ON DELETE SET NULL) and its "still held" test look up: without
    it each deleted row scanned the quarantine, and a batch held SQLite's write lock 18 s with 40,000 quarantined."""
    indexes = {index["name"]: index["column_names"] for index in inspect(store.engine).get_indexes("quarantine")}
    assert indexes["ix_quarantine_message_log_id"] == ["message_log_id"]
    with store.engine.begin() as connection:
        command.downgrade(store._alembic_config(connection), "0004")
    assert "ix_quarantine_message_log_id" not in {index["name"] for index in inspect(store.engine).get_indexes("quarantine")}
    assert store.upgrade() == store.head_version()


def test_fix_the_quarantine_s_link_to_the_log_is_indexed(store: Store) -> None:
    quarantine_links_are_indexed(store)


def test_the_job_runs_hourly_unless_retention_is_off(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    job = next(job for job in maintenance.JOBS if job.name == "log-retention")
    services: Any = SimpleNamespace(config=Config(), store=store)
    assert job.interval(services) == 3600 and services.config.database.log_retention == 90 * 86400
    monkeypatch.setattr(maintenance, "utcnow", lambda: NOW)
    logged(store, "OLD", 91)
    logged(store, "NEW", 89)
    assert job.run(services) == "deleted 1 log row"
    assert queue_ids(store) == ["NEW"]
    services.config = Config.model_validate({"database": {"log_retention": 0}})
    assert job.interval(services) == 0
