"""Virus notices sent once, on PostgreSQL: schema 0004 up and down, and digests recording at once.

A fresh database per run; no mail is sent (``reinject.send`` is replaced by the recorder of
tests/unit/test_virus_notices_once.py).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator

import pytest

from milterd import quarantine as quarantine_module
from milterd.config import load_config
from milterd.quarantine import Quarantine
from milterd.store import Store
from milterd.store.quarantine import QuarantineStore
from tests.harness import pgdb
from tests.harness.quarantine import quarantine_config
from tests.unit.test_virus_notices_once import LONG_AGO, Outbox, add, downgrade_keeps_messages


@pytest.fixture()
def quarantine(tmp_path: Path) -> Iterator[Quarantine]:
    why = pgdb.available()
    if why:
        pytest.fail(f"PostgreSQL is needed: {why}")
    with pgdb.temporary_database() as url:
        config = load_config(quarantine_config(tmp_path / "milter.conf", url))
        store = Store(config.database)
        assert store.upgrade() == "0004"
        try:
            yield Quarantine(store, config)
        finally:
            store.close()


@pytest.fixture()
def outbox(monkeypatch: pytest.MonkeyPatch) -> Outbox:
    box = Outbox()
    monkeypatch.setattr(quarantine_module.reinject, "send", box.send)
    return box


def test_each_recipient_is_told_once_and_a_refused_one_again(quarantine: Quarantine, outbox: Outbox) -> None:
    row_id = add(quarantine, ["bob@example.com", "carol@example.com"])
    outbox.refuse = {"bob@example.com"}
    failed: list[str] = []
    assert quarantine.notify_virus_recipients(LONG_AGO, failed) == 1 and len(failed) == 1
    outbox.refuse = set()
    assert quarantine.notify_virus_recipients(LONG_AGO) == 1
    assert quarantine.notify_virus_recipients(LONG_AGO) == 0
    assert outbox.sent == ["carol@example.com", "bob@example.com"]
    assert quarantine.get(row_id)["notified"] == ["carol@example.com", "bob@example.com"]


def test_recordings_at_once_keep_every_recipient(quarantine: Quarantine) -> None:
    recipients = [f"r{i}@example.com" for i in range(8)]
    row_id = add(quarantine, recipients)
    start = threading.Barrier(len(recipients))

    def record(recipient: str) -> None:
        repo = QuarantineStore(quarantine.store.engine)
        start.wait()
        repo.record_notified(row_id, recipient)

    threads = [threading.Thread(target=record, args=(r,)) for r in recipients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(quarantine.get(row_id)["notified"]) == recipients


def test_the_downgrade_drops_only_the_column(quarantine: Quarantine) -> None:
    downgrade_keeps_messages(quarantine)
