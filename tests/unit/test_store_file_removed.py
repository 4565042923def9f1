"""A SQLite store file removed or replaced under a running milterd: its pooled connections kept writing to the
removed file (rows, quarantined messages too, that nothing will ever read), and quarantined mail was answered DISCARD
(the sender told 250).  A connection to a file no longer at the store's path is now replaced: the removed file's
path then holds an empty database and every write fails (451); a file put in its place is written to."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from milterd.config import DatabaseSection
from milterd.store import MessageRecord, Store, engine, utcnow
from milterd.store.errors import StoreError
from milterd.store.quarantine import QuarantineWrite

RAW = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"


def record(action: str, queue_id: str) -> MessageRecord:
    return MessageRecord(action=action, time=utcnow(), mta_host="mx.test", queue_id=queue_id, sender="a@example.org",
                         recipients=["b@example.com"], subject="x", score=13.0)


def quarantined(queue_id: str) -> QuarantineWrite:
    row = {"time": utcnow(), "mta_host": "mx.test", "queue_id": queue_id, "client_addr": "192.0.2.1", "client_name": "unknown",
           "helo": "h", "sender": "a@example.org", "recipients": ["b@example.com"], "subject": "x", "score": 13.0,
           "reason": "score", "symbols": {}, "size": len(RAW), "mode": "discard", "release_count": 0, "learned_ham": False}
    return QuarantineWrite(row, lambda: [RAW])


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    built = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 'db' / 'milterd.sqlite'}"))
    built.upgrade()
    built.log_message(record("accept", "Q0"))  # a connection kept by the log row, others in the pool
    built.log_message(record("quarantine", "Q1"), quarantined("Q1"))
    yield built
    built.close()


def _remove(directory: Path) -> None:
    for path in directory.glob("milterd.sqlite*"):
        path.unlink()


@pytest.mark.parametrize("quarantine", [True, False])
def test_writes_after_the_file_is_removed_fail(store: Store, tmp_path: Path, quarantine: bool) -> None:
    _remove(tmp_path / "db")
    with pytest.raises(StoreError):
        store.log_message(record("quarantine" if quarantine else "accept", "Q2"), quarantined("Q2") if quarantine else None)


def test_a_file_put_in_the_removed_one_s_place_is_written_to(store: Store, tmp_path: Path) -> None:
    spare = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 'spare.sqlite'}"))
    spare.upgrade()
    spare.close()
    _remove(tmp_path / "db")
    shutil.copy(tmp_path / "spare.sqlite", tmp_path / "db" / "milterd.sqlite")
    store.log_message(record("accept", "Q3"))
    store.log_message(record("quarantine", "Q4"), quarantined("Q4"))
    assert [row["queue_id"] for row in store.messages(limit=10)] == ["Q4", "Q3"]


def test_a_file_that_cannot_be_made_again_is_a_store_error(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Removed from a directory the service account cannot write (root made the store's files there): making it
    # again raised PermissionError through the pipeline (an internal error, not [database] on_error's answer).
    def refused(path: Path) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(engine, "_create_private", refused)
    _remove(tmp_path / "db")
    for quarantine in (False, True):
        with pytest.raises(StoreError, match="cannot create the SQLite store .*: Permission denied"):
            store.log_message(record("quarantine" if quarantine else "accept", "Q5"), quarantined("Q5") if quarantine else None)
