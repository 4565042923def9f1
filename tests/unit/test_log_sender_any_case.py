"""``milterd log --sender`` matches the sender in any case, through an index on lower(sender) (schema 0006).

``--sender Alice@Example.org`` listed none of the rows logged as ``alice@example.org``, where
``quarantine list --sender`` matched any case."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from alembic import command

from milterd.cli import main
from milterd.store import MessageRecord, Store

from .test_log_retention import store

__all__ = ["store"]  # the fixture: a SQLite store at the newest schema

NOW = dt.datetime(2026, 12, 6, 4, 0, tzinfo=dt.timezone.utc)


def log(store: Store, queue_id: str, sender: str) -> None:
    store.log_message(MessageRecord(action="accept", time=NOW, queue_id=queue_id, sender=sender))


def test_the_sender_filter_ignores_case(store: Store) -> None:
    log(store, "A", "alice@example.org")
    log(store, "B", "Alice@Example.ORG")
    log(store, "C", "bob@example.org")
    log(store, "N", "")
    assert sorted(r["queue_id"] for r in store.messages(sender="ALICE@example.org")) == ["A", "B"]
    assert sorted(r["queue_id"] for r in store.each_message(sender="alice@EXAMPLE.org")) == ["A", "B"]
    assert [r["queue_id"] for r in store.messages(sender="")] == ["N"]  # the null sender, still
    assert [r["queue_id"] for r in store.messages(sender="bob@example.org")] == ["C"]


def test_the_command_lists_them(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log(store, "A", "alice@example.org")
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "log.sqlite"}"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    assert main(["log", "-c", str(conf), "--sender", "Alice@Example.Org", "--since", "100000d", "--json"]) == 0
    assert '"queue_id": "A"' in capsys.readouterr().out


def indexes(store: Store) -> set[str]:
    """The message log's indexes (SQLAlchemy's inspector leaves out those on an expression)."""
    with store.engine.connect() as connection:
        return set(connection.exec_driver_sql("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'messages'").scalars())


def test_the_filter_is_served_by_an_index_and_the_upgrade_adds_it(store: Store) -> None:
    with store.engine.connect() as connection:
        plan = " ".join(str(row[-1]) for row in connection.exec_driver_sql(
            "EXPLAIN QUERY PLAN SELECT id FROM messages WHERE lower(sender) = lower('a@b.example')"))
    assert "ix_messages_sender_lower" in plan
    log(store, "A", "Alice@Example.org")
    with store.engine.begin() as connection:
        command.downgrade(store._alembic_config(connection), "0005")
    names = indexes(store)
    assert "ix_messages_sender" in names and "ix_messages_sender_lower" not in names
    assert store.upgrade() == "0007"
    names = indexes(store)
    assert "ix_messages_sender_lower" in names and "ix_messages_sender" not in names
    assert [r["queue_id"] for r in store.messages(sender="alice@example.org")] == ["A"]


def test_commands_on_an_older_schema_say_to_upgrade(store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A store left at an older revision (auto_upgrade off): `quarantine list` failed with "no such column", in
    # SQL's words, and `db version` exited 0 although an upgrade was due.
    with store.engine.begin() as connection:
        command.downgrade(store._alembic_config(connection), "0003")
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "log.sqlite"}"\n[dns]\nnameservers = ["127.0.0.1:9"]\n')
    for argv in (["quarantine", "list"], ["log"], ["db", "version"]):
        assert main([*argv, "-c", str(conf)]) == 1, argv
        err = capsys.readouterr().err
        assert "run `milterd db upgrade`" in err and "no such column" not in err, (argv, err)
    assert main(["db", "upgrade", "-c", str(conf)]) == 0
    assert main(["db", "version", "-c", str(conf)]) == 0
    assert main(["quarantine", "list", "-c", str(conf)]) == 0
