"""A quarantined message's commit on SQLite is synced before milterd answers: the store runs WAL with
``synchronous=NORMAL``, which syncs the log only at checkpoints, and a message quarantined in ``discard`` mode
exists nowhere else once Postfix has its answer (the sender was told 250, Postfix's copy is deleted)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import event

from milterd.config import DatabaseSection
from milterd.store import MessageRecord, Store, utcnow
from milterd.store.quarantine import QuarantineWrite

RAW = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    built = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 'store.sqlite'}"))
    built.upgrade()
    yield built
    built.close()


def record(action: str) -> MessageRecord:
    return MessageRecord(action=action, time=utcnow(), mta_host="mx.test", queue_id="QID", sender="a@example.org",
                         recipients=["b@example.com"], subject="x", score=13.0)


def quarantined() -> QuarantineWrite:
    row = {"time": utcnow(), "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
           "sender": "a@example.org", "recipients": ["b@example.com"], "subject": "x", "score": 13.0, "reason": "score",
           "symbols": {}, "size": len(RAW), "mode": "discard", "release_count": 0, "learned_ham": False}
    return QuarantineWrite(row, lambda: [RAW])


def _synchronous(dbapi_connection: Any) -> int:
    return int(dbapi_connection.execute("PRAGMA synchronous").fetchone()[0])


def test_a_quarantined_message_is_committed_with_full_sync_and_the_connection_given_back_normal(store: Store) -> None:
    at_commit: list[int] = []
    event.listen(store.engine, "commit", lambda connection: at_commit.append(_synchronous(connection.connection.dbapi_connection)))
    store.log_message(record("quarantine"), quarantined())
    assert at_commit[0] == 2  # FULL: the WAL synced at this commit (then the setting given back, its own commit)
    with store.engine.connect() as connection:  # the pool's one connection, back to its usual setting
        assert _synchronous(connection.connection.dbapi_connection) == 1
    assert store.messages(limit=1)[0]["action"] == "quarantine"


def test_other_log_rows_keep_normal_sync(store: Store) -> None:
    # The message itself is Postfix's to deliver: a row lost at a power cut costs no mail, and a sync a
    # message would cost every message.
    store.log_message(record("accept"))
    with store.engine.connect() as connection:
        assert _synchronous(connection.connection.dbapi_connection) == 1
