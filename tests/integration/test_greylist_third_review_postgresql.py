"""Greylisting, third review, on PostgreSQL (a fresh database per test): the purge deletes a
backlog of expired triplets batch by batch, and still never waits for a row a message holds."""

from __future__ import annotations

import datetime as dt
from typing import Any, Iterator

import pytest
from sqlalchemy import event, select

from milterd import greylist as gl
from milterd.store import Store, schema
from milterd.store import greylist as greylist_store
from tests.harness import pgdb

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture
def store() -> Iterator[Store]:
    with pgdb.upgraded_store("these tests") as store:
        yield store


def test_purge_deletes_in_batches_and_skips_a_held_row(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(greylist_store, "PURGE_BATCH", 2, raising=False)
    monkeypatch.setattr(greylist_store, "PURGE_PAUSE", 0.0, raising=False)
    writes = [gl.Write(gl.Triplet("192.0.2.0/24", "spam@bot.example", f"r{i}@x"), "new", NOW, NOW - dt.timedelta(hours=1, seconds=i))
              for i in range(6)]
    store.greylist.record(writes + [gl.Write(gl.Triplet("192.0.2.0/24", "a@x", "live@x"), "pass", NOW, NOW + dt.timedelta(days=1))], now=NOW)
    deletes: list[int] = []

    def after(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM GREYLIST "):
            deletes.append(cursor.rowcount)

    held = select(schema.greylist.c.id).where(schema.greylist.c.recipient == "r3@x").with_for_update()
    with store.engine.connect() as connection:
        transaction = connection.begin()
        assert connection.execute(held).all()  # a message writing r3 holds its row
        event.listen(store.engine, "after_cursor_execute", after)
        try:
            assert store.greylist.purge(86400, now=NOW) == (5, 0)
        finally:
            event.remove(store.engine, "after_cursor_execute", after)
            transaction.rollback()
    assert max(deletes) <= 2 and sum(deletes) == 5
    assert sorted(r["recipient"] for r in store.greylist.list_triplets(limit=None)) == ["live@x", "r3@x"]
    assert store.greylist.purge(86400, now=NOW) == (1, 0)  # the next purge takes it
