"""Issue 15's core-path cuts (the log row, the Subject, the summary line) give the answers the slow paths give."""

from __future__ import annotations

import datetime as dt
import logging
import sqlite3
import threading
from email.header import decode_header, make_header
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import event

import milterd.store as store
from milterd.config import DatabaseSection, load_config
from milterd.logs import SafeFormatter, summary_line
from milterd.message.model import Envelope, Session, Spool
from milterd.message.pipeline import Pipeline, decode_subject
from milterd.services import build
from milterd.text import escape, redact
from tests.unit.test_auth_row_cuts import MESSAGE, Probe, envelope_of


def _slow_subject(value: str) -> str:
    try:
        return str(make_header(decode_header(value)))
    except Exception:  # noqa: BLE001 - as decode_subject
        return value


@pytest.mark.parametrize(
    "value",
    ["plain", " lead and trail ", "a  b\tc", "caf\u00e9 w\u00f6rld", "x\u20ac", "bad \udce9 byte", "=?utf-8?q?caf=C3=A9?=", "x =?bogus?q?y?= z", "=?", "?=", "a=?b", ""],
)
def test_decode_subject_shortcut_matches_the_email_package(value: str) -> None:
    if value == "x =?bogus?q?y?= z":
        # An unknown charset: the email package gives up on the whole value, a client (and
        # milterd.content.headertext) reads the word as UTF-8.
        assert decode_subject(value) == "x y z"
        return
    assert decode_subject(value) == (_slow_subject(value) if value else "")


def _raw_rows(path: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT * FROM messages ORDER BY id").fetchall()


def test_sqlite_log_row_is_the_row_sqlalchemy_writes(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    db = store.Store(DatabaseSection(url=f"sqlite:///{path}"))
    db.upgrade()
    assert db._log_insert is not None  # noqa: SLF001 - SQLite takes the cursor path
    record = store.MessageRecord(
        action="add_header", queue_id="Q1", client_addr="192.0.2.1", sender="a@example.org", recipients=["b@example.com", "c\udce9@x"],
        subject="s\x00 caf\u00e9", score=6.5, symbols={"X": 1.5, "Y": 5.0}, details={"X": "why"}, elapsed_ms=1.5, released_as_ham=True, size=1234,
    )
    empty = store.MessageRecord(action="accept")  # no recipient, symbol or detail: the JSON shortcut
    ids = []
    for one in (record, empty):
        ids.append(db.log_message(one))
        with db.engine.begin() as connection:  # the SQLAlchemy path the cursor path replaces
            ids.append(connection.execute(store._INSERT_MESSAGE, one.as_row()).inserted_primary_key[0])  # noqa: SLF001
    assert ids == [1, 2, 3, 4]
    first, second, third, fourth = _raw_rows(path)
    assert first[1:] == second[1:]  # byte for byte the same values: time text, JSON text, booleans
    assert third[1:] == fourth[1:] and "{}" in third and "[]" in third
    assert db.messages(newest_first=False)[0]["symbols"] == {"X": 1.5, "Y": 5.0}
    db.close()


@pytest.mark.parametrize(
    "recipients",
    [[], ["b@example.com"], ["b@example.com", "c@example.org"], ['"q"@x'], ["back\\slash@x"], ["caf\u00e9@x"], ["c\udce9@x"], ["n\x00ul@x"],
     ["del\x7f@x"], ["tab\t@x"], [" sp ace@x"], [""]],
)
@pytest.mark.parametrize(
    "time",
    [dt.datetime(2026, 12, 2, 11, 0, 0, 0, tzinfo=dt.timezone.utc), dt.datetime(2026, 12, 2, 11, 0, 0, 123456, tzinfo=dt.timezone.utc),
     dt.datetime(2026, 12, 2, 11, 0, 0, 5, tzinfo=dt.timezone(dt.timedelta(hours=2))), dt.datetime(987, 1, 2, 3, 4, 5), dt.date(2026, 1, 2)],
)
def test_sqlite_log_row_parameters_are_sqlalchemy_bind_processors(tmp_path: Path, recipients: list[str], time: dt.datetime) -> None:
    """parameters_of (the direct texts: datetime, recipients' JSON) gives what as_row and SQLAlchemy's bind processors give."""
    db = store.Store(DatabaseSection(url=f"sqlite:///{tmp_path}/log.sqlite"))
    statement = db._log_insert  # noqa: SLF001
    assert statement is not None
    record = store.MessageRecord(action="accept", time=time, recipients=recipients, sender="s\x00@x", subject="caf\u00e9", helo="h" * 300, symbols={"X": 1.0})
    expected = statement.parameters(record.as_row())
    assert statement.parameters_of(record) == expected
    assert expected[0] == (time.isoformat(" ", "microseconds")[:26] if isinstance(time, dt.datetime) else "2026-01-02 00:00:00.000000")
    db.close()


def test_sqlite_log_row_invalidates_a_dead_connection(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    db = store.Store(DatabaseSection(url=f"sqlite:///{tmp_path}/log.sqlite"))
    db.upgrade()
    db.log_message(store.MessageRecord(action="accept"))  # warm: the log row keeps its connection
    assert len(db._kept) == 1  # noqa: SLF001
    dead = db._kept[0].dbapi_connection  # noqa: SLF001
    assert dead is not None
    dead.close()  # as if the database went away under a kept connection
    checked_out: list[object] = []
    event.listen(db.engine, "checkout", lambda dbapi_connection, record, proxy: checked_out.append(dbapi_connection))
    with caplog.at_level(logging.WARNING), pytest.raises(store.StoreError, match="closed database"):
        db.log_message(store.MessageRecord(action="accept", queue_id="LOST"))
    # Invalidated by log_message itself, not left for the pool's reset to fail on when it came back.
    assert not [r for r in caplog.records if "Exception during reset" in r.getMessage()]
    assert db._kept == []  # noqa: SLF001 - not kept either
    # The dead connection is never handed out again; the next rows are written.
    for number in range(3):
        assert db.log_message(store.MessageRecord(action="accept", queue_id=f"NEXT{number}")) > 0
    assert checked_out and all(c is not dead for c in checked_out)
    assert all(k.dbapi_connection is not dead for k in db._kept)  # noqa: SLF001
    assert [r["queue_id"] for r in db.messages(newest_first=False)] == ["", "NEXT0", "NEXT1", "NEXT2"]
    db.close()


def test_sqlite_log_row_keeps_its_connection_between_rows(tmp_path: Path) -> None:
    db = store.Store(DatabaseSection(url=f"sqlite:///{tmp_path}/log.sqlite"))
    db.upgrade()
    checkouts: list[object] = []
    event.listen(db.engine, "checkout", lambda dbapi_connection, record, proxy: checkouts.append(dbapi_connection))
    for number in range(5):
        db.log_message(store.MessageRecord(action="accept", queue_id=f"K{number}"))
    assert len(checkouts) == 1 and db.engine.pool.checkedout() == 1  # type: ignore[attr-defined]
    # Committed each time: another connection sees every row at once.
    with sqlite3.connect(tmp_path / "log.sqlite") as other:
        assert other.execute("SELECT count(*) FROM messages").fetchone() == (5,)
    db.close()
    assert db.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_sqlite_log_row_error_is_rolled_back_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "log.sqlite"
    db = store.Store(DatabaseSection(url=f"sqlite:///{path}", busy_timeout=0.2))
    db.upgrade()
    db.log_message(store.MessageRecord(action="accept", queue_id="A"))
    holder = sqlite3.connect(path, isolation_level=None, timeout=0)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(store.StoreError, match="database is locked"):
            db.log_message(store.MessageRecord(action="accept", queue_id="B"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    db.log_message(store.MessageRecord(action="accept", queue_id="C"))
    assert [r["queue_id"] for r in db.messages(newest_first=False)] == ["A", "C"]
    db.close()


@pytest.mark.parametrize("value", ["plain@example.org", "tab\there", "cr\r\nlf", "caf\u00e9", "bad \udce9", "\x1b[31m", "del\x7f", "\u202eevil", " "])
def test_summary_line_and_formatter_shortcuts_escape_as_before(value: str) -> None:
    record = store.MessageRecord(action="reject", queue_id=value, client_name=value, client_addr=value, sender=value, recipients=[value], reason=value)
    line = summary_line(record)
    safe = escape(value, ascii_only=True)
    field = safe.replace(" ", "\\x20")  # a space would end the field: written as an escape (the reason keeps its blanks)
    assert f"client={field}[{field}] from=<{field}> to=<{field}>" in line and f'reason="{safe}"' in line
    formatter = SafeFormatter("%(message)s")
    assert formatter.format(logging.LogRecord("milterd", logging.INFO, __file__, 1, value, None, None)) == safe


@pytest.mark.parametrize(
    "url", ["sqlite:////var/lib/milterd/milterd.sqlite", "postgresql+psycopg://milterd:s%40cret@db/milterd", "postgresql://milterd@db/milterd", ""]
)
def test_formatter_redacts_as_redact_does(url: str) -> None:
    formatter = SafeFormatter("%(message)s", url=url)
    for message in (f"cannot use {url}", "password s@cret and s%40cret", "plain line"):
        record = logging.LogRecord("milterd", logging.ERROR, __file__, 1, message, None, None)
        assert formatter.format(record) == (redact(escape(message, ascii_only=True), url) if url else escape(message, ascii_only=True))
    assert formatter.format(logging.LogRecord("milterd", logging.ERROR, __file__, 1, "s@cret", None, None)) == ("***" if "cret" in url else "s@cret")


def test_formatter_time_stamp_is_logging_own_once_a_second() -> None:
    formatter = SafeFormatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    plain = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%dT%H:%M:%S")
    for created in (1_790_000_000.0, 1_790_000_000.999, 1_790_000_001.0, 1_790_000_000.5, 1_790_003_600.25):
        record = logging.LogRecord("milterd", logging.INFO, __file__, 1, "m", None, None)
        record.created = created
        assert formatter.format(record) == plain.format(record)


def test_a_tier_of_one_check_runs_here_without_the_pool_bookkeeping(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path}/log.sqlite"\n')
    services = build(load_config(conf))
    probe = Probe(services, "ONLY", True)
    services.checks = [probe]
    pipeline = Pipeline(services, keep_log=False)
    monkeypatch.setattr(pipeline, "_waits", lambda check, envelope: pytest.fail("eom_waits asked for a tier of one"))
    try:
        hits = pipeline._eom_tier(Session(client_addr="192.0.2.7"), envelope_of(MESSAGE), [probe])  # noqa: SLF001
    finally:
        pipeline.shutdown()
    assert [h.symbol for h in hits] == ["ONLY"] and Probe.ran["ONLY"] == threading.current_thread().name


_LINE = st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b" ", b"\xe9", b"\t"]), max_size=8).map(b"".join)


@given(st.lists(st.tuples(st.text(max_size=6), _LINE), max_size=5), st.booleans(), st.binary(max_size=40))
def test_message_size_is_counted_as_the_header_bytes_it_does_not_build(headers: list[tuple[str, bytes]], verbatim: bool, body: bytes) -> None:
    """Envelope.size counts what header_bytes would hold (verbatim lines or built from the parsed headers, bare LFs made CRLF)."""
    envelope = Envelope(spool=Spool(1024))
    envelope.spool.write(body)
    for name, value in headers:
        envelope.headers.append((name, value))
        if verbatim:
            envelope.raw_headers.append(name.encode("utf-8", "replace") + b": " + value)
    size = envelope.size
    assert envelope._header_bytes is None  # noqa: SLF001 - counted, not built
    assert size == len(envelope.header_bytes) + len(body) == envelope.size
