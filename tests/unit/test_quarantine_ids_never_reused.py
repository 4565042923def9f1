"""A quarantine id is never given twice on SQLite (schema 0007), and a database of another application is named so.

SQLite gave ``quarantine.id`` (INTEGER PRIMARY KEY without AUTOINCREMENT) max(id) + 1: once the newest rows
were purged or deleted, the next quarantined message got the id a digest had printed in ``milterd quarantine
release N``, and that command, run later, released another message to that message's recipients.

A database whose ``alembic_version`` holds another application's revision was reported as upgraded by a
newer milterd.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from sqlalchemy import insert, select

from milterd.cli import main
from milterd.config import DatabaseSection, load_config
from milterd.diagnostics import probe_database
from milterd.quarantine import Quarantine
from milterd.store import MessageRecord, Store, StoreError, schema, utcnow
from milterd.store.quarantine import QuarantineWrite
from tests.harness import quarantine as quarantine_harness

# The fixtures: a SQLite store in the test's directory (conf) and its quarantine, its schema current.
conf = quarantine_harness.conf
quarantine = quarantine_harness.quarantine

RAW = b"From: a@example.org\r\nSubject: held\r\n\r\nbody\r\n"


def quarantine_row(queue_id: str, when: dt.datetime) -> dict[str, Any]:
    """The columns of a quarantine row but its id, log row and message."""
    return {
        "time": when, "mta_host": "mx.test", "queue_id": queue_id, "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
        "sender": "a@example.org", "recipients": ["bob@example.com"], "subject": "held", "score": 13.0, "reason": "score 13.0 >= 12",
        "symbols": {}, "size": len(RAW), "mode": "discard", "release_count": 0, "learned_ham": False,
    }


def add(store: Store, queue_id: str, age: dt.timedelta = dt.timedelta(0)) -> int:
    """Quarantine one message as the pipeline does (log row and quarantine row, one transaction); its id."""
    when = utcnow() - age
    record = MessageRecord(action="quarantine", time=when, queue_id=queue_id, sender="a@example.org", recipients=["bob@example.com"])
    store.log_message(record, QuarantineWrite(quarantine_row(queue_id, when), lambda: [RAW[:10], RAW[10:]]))
    with store.engine.connect() as connection:
        return int(connection.execute(select(schema.quarantine.c.id).where(schema.quarantine.c.queue_id == queue_id)).scalar_one())


def test_deleting_the_newest_does_not_give_its_id_again(quarantine: Quarantine) -> None:
    store = quarantine.store
    first, second = add(store, "A"), add(store, "B")
    assert quarantine.repo.delete([second]) == 1  # `milterd quarantine delete` of the newest
    third = add(store, "C")
    assert third > max(first, second)
    assert quarantine.repo.get(second) is None and quarantine.get(third)["queue_id"] == "C"


def test_purging_every_row_does_not_give_their_ids_again(quarantine: Quarantine) -> None:
    store = quarantine.store
    issued = [add(store, "A", dt.timedelta(days=40)), add(store, "B", dt.timedelta(days=40))]
    assert quarantine.repo.purge(utcnow() - dt.timedelta(days=30)) == 2  # a quiet site's retention purge
    assert quarantine.rows() == []
    issued.append(add(store, "C"))
    assert issued[-1] > max(issued[:-1])
    quarantine.repo.delete([issued[-1]])
    issued.append(add(store, "D"))
    assert issued == sorted(set(issued))


def test_ids_above_rows_written_without_the_record(quarantine: Quarantine) -> None:
    """Rows an older milterd wrote on this schema (max(id) above the record), and a record deleted by hand."""
    store = quarantine.store
    add(store, "A")
    with store.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM quarantine_chunks")  # (their foreign key)
        connection.exec_driver_sql("UPDATE quarantine SET id = 40")
    assert add(store, "B") == 41
    with store.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM quarantine_high_water")
    assert add(store, "C") == 42


def stored(store: Store) -> tuple[list[Any], list[Any]]:
    """Every quarantine row (its id, queue id and size) and every piece, in order."""
    with store.engine.connect() as connection:
        rows = connection.exec_driver_sql("SELECT id, queue_id, size FROM quarantine ORDER BY id").all()
        chunks = connection.exec_driver_sql("SELECT quarantine_id, chunk_ind, data FROM quarantine_chunks ORDER BY 1, 2").all()
    return [tuple(r) for r in rows], [tuple(c) for c in chunks]


def test_a_0006_database_upgrades_with_every_message_and_no_id_given_again(tmp_path: Path) -> None:
    store = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 'old.sqlite'}"))
    try:
        with store.engine.begin() as connection:
            command.upgrade(store._alembic_config(connection), "0006")  # noqa: SLF001 - staging an older schema
        assert store.schema_version() == "0006"
        with store.engine.begin() as connection:
            for queue_id in ("A", "B", "C"):  # as milterd wrote them at 0006: SQLite's own ids
                row_id = connection.execute(insert(schema.quarantine).values(quarantine_row(queue_id, utcnow()))).inserted_primary_key[0]
                connection.execute(insert(schema.quarantine_chunks), [
                    {"quarantine_id": row_id, "chunk_ind": 0, "data": RAW[:10]}, {"quarantine_id": row_id, "chunk_ind": 1, "data": RAW[10:]},
                ])
        before = stored(store)
        assert [r[0] for r in before[0]] == [1, 2, 3] and len(before[1]) == 6
        # The upgrade runs with PRAGMA foreign_keys=ON: a rebuilt quarantine table would cascade to its pieces.
        assert store.upgrade() == store.head_version() == "0007"
        assert stored(store) == before
        with store.engine.begin() as connection:
            connection.exec_driver_sql("DELETE FROM quarantine WHERE id = 3")  # the newest, gone
        assert add(store, "D") == 4
        # The downgrade drops only the new table: every message kept.
        with store.engine.begin() as connection:
            command.downgrade(store._alembic_config(connection), "0006")  # noqa: SLF001
        assert store.schema_version() == "0006"
        after = stored(store)
        assert [r[1] for r in after[0]] == ["A", "B", "D"] and len(after[1]) == 6
        assert store.upgrade() == "0007"
        assert stored(store) == after
    finally:
        store.close()


FOREIGN = "3f2a9c1b7d4e"


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    """A milter.conf whose SQLite database holds another application's alembic revision and none of milterd's tables."""
    database = tmp_path / "other.sqlite"
    with sqlite3.connect(database) as connection:
        connection.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
        connection.execute("INSERT INTO alembic_version VALUES (?)", (FOREIGN,))
        connection.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY)")
    connection.close()
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{database}"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    return conf


def says_another_application(text: str) -> bool:
    return (f"revision {FOREIGN} is not one of milterd's" in text and "another application's schema" in text
            and "4-digit numbers, 0001 to 0007" in text and "milterd's tables are missing" in text
            and "database of its own" in text and "newer milterd" not in text and "Traceback" not in text)


def test_another_applications_database_is_named_so(foreign: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["db", "upgrade", "-c", str(foreign)]) == 1
    assert says_another_application(capsys.readouterr().err)
    assert main(["db", "version", "-c", str(foreign)]) == 1
    assert says_another_application(capsys.readouterr().err)
    assert main(["quarantine", "list", "-c", str(foreign)]) == 1  # failed in SQL's words ("no such table")
    err = capsys.readouterr().err
    assert says_another_application(err) and "no such table" not in err, err
    for auto_upgrade in (True, False):  # serve's check
        store = Store(load_config(foreign).database)
        with pytest.raises(StoreError) as refused:
            store.ensure_schema(auto_upgrade)
        store.close()
        assert says_another_application(str(refused.value))
    finding = probe_database(load_config(foreign))[0]
    assert finding.status == "fail" and says_another_application(finding.detail)
    with sqlite3.connect(foreign.parent / "other.sqlite") as connection:  # left as it was
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(FOREIGN,)]
        connection.execute("UPDATE alembic_version SET version_num = '0999'")  # a newer milterd's revision: named so, still
    connection.close()
    assert main(["db", "version", "-c", str(foreign)]) == 1
    err = capsys.readouterr().err
    assert "at 0999, which this milterd does not know" in err and "newer milterd" in err and "another application" not in err
