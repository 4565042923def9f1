"""``milterd log`` reads the log in batches and prints as it reads: ``--limit 0`` over months of
mail loaded every row (and its JSON) into memory before printing the first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest
from sqlalchemy import event

from milterd.cli import main
from milterd.config import load_config
from milterd.store import MessageRecord, Store, StoreError


def empty_log(tmp_path: Path) -> tuple[Path, Store]:
    """A milter.conf whose SQLite log under *tmp_path* has its schema and no row, and that store (to be closed)."""
    path = tmp_path / "milter.conf"
    path.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "log.sqlite"}"\n[rules]\ndir = ""\n')
    store = Store(load_config(path).database)
    store.upgrade()
    return path, store


@pytest.fixture
def conf(tmp_path: Path) -> Path:
    path, store = empty_log(tmp_path)
    for n in range(30):
        store.log_message(MessageRecord(action="reject" if n % 3 == 0 else "accept", queue_id=f"Q{n:02d}", sender="a@example.org"))
    store.close()
    return path


def test_each_message_reads_batch_by_batch_newest_first(conf: Path) -> None:
    store = Store(load_config(conf).database)
    statements: list[str] = []
    event.listen(store.engine, "before_cursor_execute", lambda *args: statements.append(args[2]))
    rows = list(store.each_message(batch=7))
    assert [r["queue_id"] for r in rows] == [f"Q{n:02d}" for n in range(29, -1, -1)]
    assert len(statements) == 5  # 7 + 7 + 7 + 7 + 2: never the whole log at once
    assert [r["queue_id"] for r in store.each_message(limit=10, batch=4)] == [f"Q{n:02d}" for n in range(29, 19, -1)]
    assert [r["queue_id"] for r in store.each_message(action="reject", batch=3)] == [f"Q{n:02d}" for n in range(27, -1, -3)]
    store.close()


def test_log_json_of_every_row_is_one_valid_array(conf: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    assert main(["log", "-c", str(conf), "--limit", "0", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 30 and rows[0]["queue_id"] == "Q29" and rows[-1]["queue_id"] == "Q00"
    assert main(["log", "-c", str(conf), "--json", "--queue-id", "nothing"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_a_database_gone_midway_is_said_after_what_was_printed(conf: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    def gone(self: Store, **filters: Any) -> Iterator[dict[str, Any]]:
        yield from list(Store.messages(self))[:2]
        raise StoreError("cannot read: OperationalError: server closed the connection")

    monkeypatch.setattr(Store, "each_message", gone)
    capsys.readouterr()
    assert main(["log", "-c", str(conf), "--limit", "0"]) == 1
    out, err = capsys.readouterr()
    assert "Q29" in out and "Q28" in out
    assert "cannot read the rest of the log: cannot read: OperationalError: server closed the connection" in err
