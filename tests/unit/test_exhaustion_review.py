"""The worker under resource exhaustion: a full disk or quota (ENOSPC), no file
descriptor left (EMFILE), a full SQLite database (SQLITE_FULL), MemoryError, the
temporary directory gone.

Driven as Postfix drives milterd (pymilter's ``TestCtx``, as in
test_adapter_pipeline_review.py), the failures simulated with monkeypatch and,
for SQLite, with ``PRAGMA max_page_count`` (a real "database or disk is full").
The tests marked *fix* fail on the code before this review:

* a log row whose database connection could not be opened (EMFILE, the file
  gone: ``sqlite3.OperationalError`` from ``raw_connection()``, which SQLAlchemy
  does not wrap) left the store as that driver error, not a StoreError: the
  message was answered ``451 4.3.0`` as an internal error and
  ``[database] on_error = "accept"`` was ignored;
* the resolver's UDP socket could not be created (EMFILE): the OSError left
  ``Resolver.query`` (documented never to raise), so a check asking in its own
  thread failed as ``CHECK_ERROR`` instead of getting a DNS "error" answer.

The others pin what was found sound: each failure gives a tempfail (or the
configured fail-open), the worker serves the next message, and the spool's
temporary file is closed.
"""

from __future__ import annotations

import errno
import io
import logging
import socket
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import Milter
import pytest
from sqlalchemy import event

from milterd.checks import Check, Hits, Symbol
from milterd.config import DnsSection
from milterd.dns import Resolver
from milterd.message.model import Envelope, Session
from milterd.message.pipeline import Pipeline
from milterd.milter.adapter import MilterdMilter
from milterd.scanners import ScannerError
from milterd.scanners.clamd import ClamdClient
from milterd.scanners.spamd import SpamdClient
from milterd.services import Services
from milterd.store import MessageRecord, StoreError
from tests.unit.test_adapter_pipeline_review import Context, connect, eom, log_rows, make_conf, make_pipeline, negotiate, up_to_body
from tests.unit.test_pipeline_review import FullDisk

RULES = '[[rule]]\nname = "TEST_SPAM"\nheader = "Subject"\nregex = "SPAMME"\nscore = 13\n'  # 13: quarantine


def emfile(*args: Any, **kwargs: Any) -> Any:
    raise OSError(errno.EMFILE, "Too many open files")


def unopenable(*args: Any, **kwargs: Any) -> Any:
    """sqlite3.connect out of file descriptors (or with the file gone): SQLite's own words."""
    raise sqlite3.OperationalError("unable to open database file")


def summary(caplog: pytest.LogCaptureFixture, queue_id: str) -> str:
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"{queue_id}: action=")]
    return line


def fresh_connections(services: Services) -> None:
    """Drop the store's pooled connections: the next row opens a new one."""
    store = services.store
    while store._kept:  # noqa: SLF001
        store._kept.pop().close()  # noqa: SLF001
    store.engine.dispose()


def fill_database(services: Services) -> None:
    """Make the SQLite file full: every connection gets ``max_page_count`` at its size, and the free room is used up."""
    fresh_connections(services)

    @event.listens_for(services.store.engine, "connect")
    def no_growth(dbapi: sqlite3.Connection, record: Any) -> None:
        dbapi.execute(f"PRAGMA max_page_count = {dbapi.execute('PRAGMA page_count').fetchone()[0]}")

    with pytest.raises(StoreError, match="database or disk is full"):
        for _ in range(10000):
            services.store.log_message(MessageRecord(action="accept", subject="filler"))


# --- the log row's database connection cannot be opened -----------------------------------


def test_fix_a_log_connection_that_cannot_be_opened_is_a_store_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    services, pipeline = make_pipeline(make_conf(tmp_path))
    try:
        fresh_connections(services)
        monkeypatch.setattr(sqlite3.dbapi2, "connect", unopenable)
        # The old code: sqlite3.OperationalError itself.
        with pytest.raises(StoreError, match="cannot write the message log: OperationalError: unable to open database file"):
            services.store.log_message(MessageRecord(action="accept"))
    finally:
        monkeypatch.undo()
        pipeline.shutdown()
        services.close()


@pytest.mark.parametrize(
    ("on_error", "subject", "result", "reply"),
    [
        ("tempfail", b"hello", Milter.TEMPFAIL, ("451", "4.7.1")),
        ("accept", b"hello", Milter.CONTINUE, None),
        ("accept", b"SPAMME", Milter.TEMPFAIL, ("451", "4.7.1")),  # a quarantine always waits (it was sound: engine.begin() wraps)
    ],
)
def test_fix_a_log_connection_that_cannot_be_opened_follows_on_error(
    on_error: str, subject: bytes, result: int, reply: tuple[str, str] | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="milterd")
    services, pipeline = make_pipeline(make_conf(tmp_path, rules=RULES, extra={"database": {"on_error": on_error}}))
    try:
        ctx = connect(pipeline, monkeypatch)
        up_to_body(ctx, "QNOFD", subject=subject)
        fresh_connections(services)
        with monkeypatch.context() as patch:
            patch.setattr(sqlite3.dbapi2, "connect", unopenable)
            # The old code: 451 4.3.0 (an internal error) whatever on_error says.
            assert eom(ctx) == result
        assert (ctx._reply[:2] if ctx._reply else None) == reply
        line = summary(caplog, "QNOFD")
        assert ("action=tempfail" in line and "store unavailable" in line) if reply else "action=accept" in line
        assert "internal error" not in line
        up_to_body(ctx, "QNEXT")  # the worker goes on, with connections again
        assert eom(ctx) == Milter.CONTINUE
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()


# --- the resolver cannot open a socket -------------------------------------------------------


def test_fix_a_resolver_without_a_socket_answers_error_not_an_exception(monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = Resolver(DnsSection(nameservers=["127.0.0.1:9"], timeout=2.0, cache_size=10))
    attempts: list[object] = []
    slept: list[float] = []

    def no_socket(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        return emfile()

    monkeypatch.setattr(socket, "socket", no_socket)  # ours and dnspython's
    # With no socket there is nothing to wait on but a sleep (dnspython's backoff) or a retry loop: neither may happen.
    monkeypatch.setattr(time, "sleep", slept.append)
    # The old code: OSError out of query() and query_many().
    answer = resolver.query("a.test", "A")
    answers = resolver.query_many([("b.test", "A"), ("c.test", "TXT")])
    assert answer.failed and all(a.failed for a in answers)
    assert slept == [] and len(attempts) <= 2 * 3  # an error at once (ours, then dnspython's), not the whole timeout
    monkeypatch.undo()
    assert len(resolver.cache) == 0  # an error is not cached
    resolver.close()


def unix_connect(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> Context:
    """connect()'s connection as a unix-socket worker negotiates it: CONNECT, HELO, headers and body get no reply."""
    context = negotiate(pipeline, monkeypatch, unix=True)
    milter: MilterdMilter = context.getpriv()
    context._stage = -1
    assert milter.hello("client.example.org") == Milter.NOREPLY  # not TestCtx._helo, which closes on anything but CONTINUE
    assert milter.envfrom("<alice@example.org>") == Milter.CONTINUE
    context._setsymval("i", "QFULL")
    assert milter.envrcpt("<bob@example.com>") == Milter.CONTINUE
    for name, value in (("From", b"alice@example.org"), ("Subject", b"hello")):
        assert milter.header_bytes(name, value) == Milter.NOREPLY
    assert milter.eoh() == Milter.CONTINUE
    return context


# --- the spool on a full disk, or without its directory ------------------------------------------


@pytest.mark.parametrize("unix", [False, True])
def test_a_full_disk_under_the_body_tempfails_frees_the_spool_and_serves_the_next(
    unix: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    conf = make_conf(tmp_path)  # spool_memory 1024: the chunk below rolls the spool over to disk
    services, pipeline = make_pipeline(conf)
    try:
        ctx = unix_connect(pipeline, monkeypatch) if unix else connect(pipeline, monkeypatch)
        milter = ctx.getpriv() if unix else up_to_body(ctx, "QFULL")
        opened: list[io.BufferedRandom] = []

        def full_file(*args: Any, **kwargs: Any) -> io.BufferedRandom:
            opened.append(io.BufferedRandom(FullDisk()))
            return opened[-1]

        with monkeypatch.context() as patch:
            patch.setattr(tempfile, "TemporaryFile", full_file)
            assert milter.body(b"x" * 5000) == (Milter.NOREPLY if unix else Milter.TEMPFAIL)
            assert any("internal error at body" in r.getMessage() and "No space left" in str(r.exc_info and r.exc_info[1]) for r in caplog.records)
            assert len(opened) == 1 and not opened[0].closed
            if unix:
                assert milter.body(b"x" * 5000) == Milter.NOREPLY  # the rest of the body is not written
                assert eom(ctx) == Milter.TEMPFAIL  # the error's 451 at the next reply
            else:
                assert milter.abort() == Milter.CONTINUE  # Postfix ends the transaction
        assert ctx._reply[:2] == ("451", "4.3.0")
        assert len(opened) == 1 and opened[0].closed
        if not unix:
            up_to_body(ctx, "QNEXT")
            assert eom(ctx) == Milter.CONTINUE
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()
    assert set(log_rows(conf, capsys)) == ({"QFULL"} if unix else {"QFULL", "QNEXT"})  # logged as tempfailed, the traceback in the log


def test_the_temporary_directory_gone_tempfails_the_first_large_body(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    services, pipeline = make_pipeline(make_conf(tmp_path))  # [milter] spool_dir empty: the system's
    try:
        ctx = connect(pipeline, monkeypatch)
        milter = up_to_body(ctx, "QNOTMP")
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "reaped"))
        assert milter.body(b"x" * 5000) == Milter.TEMPFAIL  # found here, not at start
        assert ctx._reply[:2] == ("451", "4.3.0")
        assert any(isinstance(r.exc_info and r.exc_info[1], FileNotFoundError) for r in caplog.records)
        milter.abort()
        up_to_body(ctx, "QSMALL")  # below spool_memory: nothing on disk, served
        assert eom(ctx) == Milter.CONTINUE
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()


# --- SQLite full ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("on_error", "subject", "result"),
    [("tempfail", b"hello", Milter.TEMPFAIL), ("accept", b"hello", Milter.CONTINUE), ("accept", b"SPAMME", Milter.TEMPFAIL)],
)
def test_a_full_database_follows_on_error_and_a_quarantine_always_waits(
    on_error: str, subject: bytes, result: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="milterd")
    services, pipeline = make_pipeline(make_conf(tmp_path, rules=RULES, extra={"database": {"on_error": on_error}}))
    try:
        ctx = connect(pipeline, monkeypatch)
        fill_database(services)
        up_to_body(ctx, "QDBFULL", subject=subject, body=b"y" * 20000)
        assert eom(ctx) == result
        if result == Milter.TEMPFAIL:
            assert ctx._reply[:2] == ("451", "4.7.1")
            assert "action=tempfail" in summary(caplog, "QDBFULL") and "store unavailable" in summary(caplog, "QDBFULL")
        else:
            assert "action=accept" in summary(caplog, "QDBFULL")
        assert any(r.levelno == logging.ERROR and "database or disk is full" in r.getMessage() for r in caplog.records)
        up_to_body(ctx, "QNEXT")
        # Still full: the worker goes on, answering as on_error says.
        assert eom(ctx) == (Milter.TEMPFAIL if on_error == "tempfail" else Milter.CONTINUE)
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()


# --- MemoryError ---------------------------------------------------------------------------------


class Hog(Check):
    """Runs out of memory at end of message, and on one header."""

    name: ClassVar[str] = "test_hog"
    symbols: ClassVar[tuple[Symbol, ...]] = (Symbol("TEST_HOG", 0.0, "test"),)

    def on_header(self, session: Session, envelope: Envelope, name: str, value: bytes) -> Hits:
        if name == "X-Hog":
            raise MemoryError
        return ()

    def on_eom(self, session: Session, envelope: Envelope) -> Hits:
        raise MemoryError


def test_memory_error_in_a_check_is_check_error_and_the_worker_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    conf = make_conf(tmp_path)
    services, pipeline = make_pipeline(conf, Hog)
    try:
        ctx = connect(pipeline, monkeypatch)
        up_to_body(ctx, "QHOG")
        assert eom(ctx) == Milter.CONTINUE  # CHECK_ERROR (score 0): caught as any exception, by design not a tempfail
        milter = ctx.getpriv()
        assert milter.envfrom("<alice@example.org>") == Milter.CONTINUE
        assert milter.header_bytes("X-Hog", b"1") == Milter.CONTINUE  # in a check: CHECK_ERROR again
        with monkeypatch.context() as patch:
            patch.setattr(pipeline, "header", lambda *a: (_ for _ in ()).throw(MemoryError()))
            assert milter.header_bytes("X-Big", b"1") == Milter.TEMPFAIL  # in the pipeline itself: 451 4.3.0
        assert ctx._reply[:2] == ("451", "4.3.0")
        milter.abort()
        up_to_body(ctx, "QNEXT")
        assert eom(ctx) == Milter.CONTINUE
        Milter.close_callback(ctx)
    finally:
        pipeline.shutdown()
        services.close()
    rows = log_rows(conf, capsys)
    assert rows["QHOG"]["symbols"] == {"CHECK_ERROR": 0.0} and rows["QNEXT"]["action"] == "accept"


# --- the scanners without file descriptors ----------------------------------------------------------


def test_scanners_without_a_socket_raise_scanner_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket, "socket", emfile)
    for call in (
        lambda: ClamdClient("tcp:127.0.0.1:9", 1).instream(),
        lambda: ClamdClient("tcp:127.0.0.1:9", 1).ping(),
        lambda: SpamdClient("tcp:127.0.0.1:9", 1).check(b"Subject: x\r\n\r\nbody\r\n"),
    ):
        with pytest.raises(ScannerError, match="Too many open files"):  # the check's [clamav]/[spamd] on_error applies
            call()
