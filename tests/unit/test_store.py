"""The store's engines: pools that never close a connection while a worker serves mail."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy.pool import QueuePool

from milterd.config import DatabaseSection
from milterd.store import POOL_SIZE, MessageRecord, Store, make_engine


def test_sqlite_pool_has_no_overflow(tmp_path: Path) -> None:
    # An overflow connection is closed after use; closing one from a libmilter
    # thread crashed workers (make_engine's docstring).
    engine = make_engine(f"sqlite:///{tmp_path}/sub/milterd.sqlite")
    assert isinstance(engine.pool, QueuePool)
    assert engine.pool.size() == POOL_SIZE
    assert engine.pool._max_overflow == 0  # noqa: SLF001 - the property under test
    assert (tmp_path / "sub").is_dir()


def test_postgresql_pool_has_no_overflow() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    assert engine.pool._max_overflow == 0  # noqa: SLF001


def test_log_row_round_trip(tmp_path: Path) -> None:
    store = Store(DatabaseSection(url=f"sqlite:///{tmp_path}/m.sqlite"))
    store.upgrade()
    record = MessageRecord(action="accept", queue_id="Q1", sender="a\x00b@example.org", subject="caf\udce9", recipients=["x@example.com"], symbols={"A": 1.5})
    store.log_message(record)
    [row] = store.messages(queue_id="Q1")
    assert row["sender"] == "a\\0b@example.org"  # NUL cannot be stored in PostgreSQL text
    assert row["subject"] == "caf\\udce9"  # nor can an undecodable byte
    assert row["symbols"] == {"A": 1.5}
    assert row["time"].tzinfo is not None
