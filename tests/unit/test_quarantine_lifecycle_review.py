"""Quarantine lifecycle review: a release's claim, the retention purge, times with an offset, ids on the command line.

SQLite in a temporary file (unit tests reach no PostgreSQL server; the same
calls were run by hand on a throw-away one); no mail is sent: ``reinject.send``
is replaced by a stand-in.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any, Callable

import pytest
from sqlalchemy import event, func, select

from milterd import cli
from milterd import quarantine as quarantine_module
from milterd.quarantine import Quarantine
from milterd.store import MessageRecord, schema, utcnow
from milterd.store import quarantine as store_quarantine
from milterd.store.quarantine import QuarantineWrite
from milterd.units import parse_since
from tests.harness import quarantine as quarantine_harness

# The fixtures: a SQLite store in the test's directory (conf) and its quarantine.
conf = quarantine_harness.conf
quarantine = quarantine_harness.quarantine

RAW = b"From: a@example.org\r\nSubject: lifecycle\r\n\r\nbody\r\n"

Send = Callable[..., tuple[dict[str, str], dict[str, str]]]


def add(quarantine: Quarantine, age: dt.timedelta = dt.timedelta(0)) -> int:
    """Store one quarantined message as the pipeline does (log row and quarantine row, one transaction)."""
    when = utcnow() - age
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="QID", sender="alice@example.org", recipients=["bob@example.com"], subject="lifecycle", score=13.0)
    row = {
        "time": when, "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
        "sender": "alice@example.org", "recipients": ["bob@example.com"], "subject": "lifecycle", "score": 13.0, "reason": "score 13.0 >= 12",
        "symbols": {"TEST": 13.0}, "size": len(RAW), "mode": "discard", "release_count": 0, "learned_ham": False,
    }
    quarantine.store.log_message(record, QuarantineWrite(row, lambda: [RAW[:10], RAW[10:]]))
    return int(quarantine.rows(limit=1)[0]["id"])


def stub_send(monkeypatch: pytest.MonkeyPatch, send: Send) -> None:
    monkeypatch.setattr(quarantine_module.reinject, "send", send)


def test_an_interrupted_release_gives_the_claim_back(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the message is being sent: the final dot never went out, so the
    message must stay releasable (it read as released for good, by someone, 0 times)."""
    row_id = add(quarantine)

    def interrupted(*_args: Any, **_kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        raise KeyboardInterrupt

    stub_send(monkeypatch, interrupted)
    with pytest.raises(KeyboardInterrupt):
        quarantine.release(row_id, who="admin@mx.test")
    row = quarantine.get(row_id)
    assert row["released_at"] is None and row["released_by"] is None and row["release_count"] == 0
    assert row["release_result"][-1]["error"] == "interrupted"


def test_a_failed_release_does_not_undo_a_forced_one_made_meanwhile(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A's release is slow and fails; meanwhile B forces a release that delivers. A's
    give-back must neither mark the message unreleased (a third, unforced release would
    deliver it again) nor overwrite B's attempt in the history."""
    row_id = add(quarantine)
    calls: list[str] = []

    def send(target: Any, sender: str, recipients: list[str], message: Any, helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        calls.append("send")
        if len(calls) == 1:  # A, while it is sending: B forces a release, which delivers
            assert quarantine.release(row_id, force=True, who="b@mx2.test").ok
            raise OSError("connection reset")
        return {r: "250 2.0.0 Ok" for r in recipients}, {}

    stub_send(monkeypatch, send)
    report = quarantine.release(row_id, who="a@mx1.test")
    assert not report.delivered
    row = quarantine.get(row_id)
    assert row["released_by"] == "b@mx2.test" and row["released_at"] is not None and row["release_count"] == 1
    assert [(a["by"], a["ok"]) for a in row["release_result"]] == [("b@mx2.test", True), ("a@mx1.test", False)]


def test_the_retention_purge_deletes_in_short_transactions(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A backlog (retention shortened, housekeeping off for a while) is not one transaction holding
    SQLite's write lock, which every worker's log row waits for, for as long as it takes."""
    monkeypatch.setattr(store_quarantine, "PURGE_BATCH", 2, raising=False)
    old = [add(quarantine, age=dt.timedelta(days=40)) for _ in range(5)]
    kept = add(quarantine, age=dt.timedelta(days=29))
    deleted_per_statement: list[int] = []

    def after(_conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM QUARANTINE ") and "quarantine_chunks" not in statement:
            deleted_per_statement.append(_cursor.rowcount)

    event.listen(quarantine.store.engine, "after_cursor_execute", after)
    try:
        assert quarantine.purge(utcnow() - dt.timedelta(days=30)) == 5
    finally:
        event.remove(quarantine.store.engine, "after_cursor_execute", after)
    assert sum(deleted_per_statement) == 5 and max(deleted_per_statement) <= 2, deleted_per_statement
    assert [r["id"] for r in quarantine.rows()] == [kept] and kept not in old
    with quarantine.store.engine.connect() as connection:
        pieces = connection.execute(select(schema.quarantine_chunks.c.quarantine_id, func.count()).group_by(schema.quarantine_chunks.c.quarantine_id)).all()
    assert [row[0] for row in pieces] == [kept]


def test_times_with_an_offset_are_compared_as_utc(quarantine: Quarantine) -> None:
    """``--since 2024-05-01T14:00+02:00`` means 12:00 UTC; SQLite compared the wall-clock text,
    so a list missed new messages and a purge given such a time deleted ones within their retention."""
    row_id = add(quarantine)
    paris, new_york = dt.timezone(dt.timedelta(hours=2)), dt.timezone(dt.timedelta(hours=-5))
    assert [r["id"] for r in quarantine.rows(since=(utcnow() - dt.timedelta(minutes=30)).astimezone(paris))] == [row_id]
    assert [r["id"] for r in quarantine.rows(older_than=(utcnow() + dt.timedelta(minutes=30)).astimezone(new_york))] == [row_id]
    assert quarantine.purge((utcnow() - dt.timedelta(hours=1)).astimezone(paris)) == 0
    assert [r["id"] for r in quarantine.rows()] == [row_id]


@pytest.mark.parametrize("command", [["show"], ["release"], ["delete"], ["delete", "--dry-run"], ["confirm"]])
def test_an_id_out_of_range_is_a_usage_error_not_a_traceback(conf: Path, quarantine: Quarantine, command: list[str], capsys: Any) -> None:
    for bad in ("99999999999999999999", "0", "x1"):
        with pytest.raises(SystemExit) as usage:
            cli.main(["-c", str(conf), "quarantine", *command, bad])
        assert usage.value.code == 2
        assert "is not a quarantine id" in capsys.readouterr().err
    assert cli.main(["-c", str(conf), "quarantine", *command, str(2**63 - 1)]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_since_with_an_offset_is_given_in_utc() -> None:
    # `milterd log --since 2024-05-01T14:00+02:00` reached SQLite as 14:00 (its text compares as UTC).
    moment = parse_since("2024-05-01T14:00+02:00")
    assert moment.utcoffset() == dt.timedelta(0) and (moment.hour, moment.minute) == (12, 0)
