"""Virus notices sent once, on PostgreSQL: schema 0004 up and down, and digests claiming at once.

A fresh database per run; no mail is sent (``reinject.send`` is replaced by the recorder of
tests/unit/test_virus_notices_once.py).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import update

from milterd import quarantine as quarantine_module
from milterd.config import load_config
from milterd.quarantine import Quarantine
from milterd.store import Store, schema
from milterd.store.quarantine import QuarantineStore
from tests.harness import pgdb
from tests.harness.quarantine import quarantine_config
from tests.unit.test_virus_notices_once import LONG_AGO, Outbox, add, downgrade_keeps_messages


@pytest.fixture()
def quarantine(tmp_path: Path) -> Iterator[Quarantine]:
    with pgdb.required_database("the virus-notice tests") as url:
        config = load_config(quarantine_config(tmp_path / "milter.conf", url))
        store = Store(config.database)
        assert store.upgrade() == store.head_version()
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


def test_claims_at_once_keep_every_recipient(quarantine: Quarantine) -> None:
    recipients = [f"r{i}@example.com" for i in range(8)]
    row_id = add(quarantine, recipients)
    start = threading.Barrier(len(recipients))

    def record(recipient: str) -> None:
        repo = QuarantineStore(quarantine.store.engine)
        start.wait()
        assert repo.claim_notice(row_id, recipient)

    threads = [threading.Thread(target=record, args=(r,)) for r in recipients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(quarantine.get(row_id)["notified"]) == recipients


def test_of_claims_at_once_of_one_notice_exactly_one_wins(quarantine: Quarantine) -> None:
    """Each claim on its own engine (another host), all released at the same moment."""
    row_id = add(quarantine, ["bob@example.com"])
    count = 8
    start = threading.Barrier(count)
    won: list[bool] = []

    def claim() -> None:
        store = Store(quarantine.config.database)
        try:
            repo = QuarantineStore(store.engine)
            start.wait()
            won.append(repo.claim_notice(row_id, "bob@example.com"))
        finally:
            store.close()

    threads = [threading.Thread(target=claim) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(won) == [False] * (count - 1) + [True]
    assert quarantine.get(row_id)["notified"] == ["bob@example.com"]


def test_a_claim_waits_for_the_row_and_then_sees_the_other_claim(quarantine: Quarantine) -> None:
    """The interleaving that sent two notices: the other claim holds the row while this one reads it."""
    row_id = add(quarantine, ["bob@example.com", "carol@example.com"])
    other = Store(quarantine.config.database)
    result: list[bool] = []
    try:
        with other.engine.begin() as connection:
            row = schema.quarantine.c.id == row_id
            connection.execute(update(schema.quarantine).where(row).values(notified=schema.quarantine.c.notified))
            waiting = threading.Thread(target=lambda: result.append(quarantine.repo.claim_notice(row_id, "bob@example.com")))
            waiting.start()
            waiting.join(1.0)
            assert waiting.is_alive() and result == []  # blocked on the row, not reading the list before it
            connection.execute(update(schema.quarantine).where(row).values(notified=["bob@example.com"]))
        waiting.join(10.0)
    finally:
        other.close()
    assert result == [False]
    assert quarantine.get(row_id)["notified"] == ["bob@example.com"]


def test_two_hosts_digests_at_the_same_minute_tell_each_recipient_once(quarantine: Quarantine, outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both runs read the rows, then both notify at once: each recipient gets one notice."""
    recipients = [f"r{i}@example.com" for i in range(6)]
    row_id = add(quarantine, recipients)
    other = Quarantine(Store(quarantine.config.database), quarantine.config)
    both_read = threading.Barrier(2)
    counts: list[int] = []

    def run(host: Quarantine) -> None:
        read_rows = host.rows

        def rows(**kwargs: Any) -> list[dict[str, Any]]:
            found = read_rows(**kwargs)
            both_read.wait()
            return found

        monkeypatch.setattr(host, "rows", rows)
        counts.append(host.notify_virus_recipients(LONG_AGO))

    try:
        threads = [threading.Thread(target=run, args=(host,)) for host in (quarantine, other)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        other.store.close()
    assert sum(counts) == len(recipients) and len(counts) == 2
    assert sorted(outbox.sent) == recipients
    assert sorted(quarantine.get(row_id)["notified"]) == recipients


def test_the_downgrade_drops_only_the_column(quarantine: Quarantine) -> None:
    downgrade_keeps_messages(quarantine)
