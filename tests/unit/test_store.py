"""The store's engines: pools that never close a connection while a worker serves mail."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool

from milterd.config import DatabaseSection
from milterd.store import POOL_SIZE, MessageRecord, Store, make_engine
from milterd.store.engine import run_on_python_thread

T = TypeVar("T")


def test_sqlite_pool_has_no_overflow(tmp_path: Path) -> None:
    # An overflow connection is closed after use; closing one from a libmilter
    # thread crashed workers (make_engine's docstring).
    engine = make_engine(f"sqlite:///{tmp_path}/sub/milterd.sqlite")
    assert isinstance(engine.pool, QueuePool)
    assert engine.pool.size() == POOL_SIZE
    assert engine.pool._max_overflow == 0  # noqa: SLF001 - the property under test
    assert (tmp_path / "sub").is_dir()


def test_postgresql_pool_has_no_overflow() -> None:
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test")
    assert engine.pool._max_overflow == 0  # noqa: SLF001


def test_log_row_round_trip(tmp_path: Path) -> None:
    store = Store(DatabaseSection(url=f"sqlite:///{tmp_path}/m.sqlite"))
    store.upgrade()
    record = MessageRecord(action="accept", queue_id="Q1", sender="a\x00b@example.org", subject="caf\udce9", recipients=["x@example.com"], symbols={"A": 1.5})
    store.log_message(record)
    [row] = store.messages(queue_id="Q1")
    assert row["sender"] == "a\\0b@example.org"  # NUL cannot be stored in PostgreSQL text
    assert row["subject"] == "caf\\udce9"  # nor can an undecodable byte
    assert row["symbols"] == {"A": 1.5}
    assert row["time"].tzinfo is not None


# --- no C code calls back into Python on a libmilter thread (milterd/store/engine.py) ---

def _on_foreign_thread(work: Callable[[], T]) -> T:
    """Run *work* on a POSIX thread Python did not start, as libmilter's are."""
    import ctypes

    outcome: list[Any] = []
    callback = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)(lambda _arg: outcome.append(_capture(work)) or 0)
    libc = ctypes.CDLL(None)
    thread = ctypes.c_ulong()
    assert libc.pthread_create(ctypes.byref(thread), None, callback, None) == 0
    libc.pthread_join(thread, None)
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def _capture(work: Callable[[], Any]) -> tuple[bool, Any]:
    try:
        return True, work()
    except BaseException as exc:  # noqa: BLE001
        return False, exc


def test_run_on_python_thread_leaves_foreign_threads() -> None:
    assert isinstance(_on_foreign_thread(threading.current_thread), threading._DummyThread)  # noqa: SLF001 - the test's premise
    ran_on = _on_foreign_thread(lambda: run_on_python_thread(threading.current_thread))
    assert not isinstance(ran_on, threading._DummyThread) and ran_on.name == "milterd-store"  # noqa: SLF001
    assert run_on_python_thread(threading.current_thread) is threading.current_thread()  # a Python thread: in place
    with pytest.raises(ZeroDivisionError):
        _on_foreign_thread(lambda: run_on_python_thread(lambda: 1 // 0))


def test_sqlite_connections_carry_no_python_functions(tmp_path: Path) -> None:
    # sqlite3 frees a Python function from a C destructor through PyGILState_Ensure
    # when the connection closes: the take_gil crash on a libmilter thread.
    engine = make_engine(f"sqlite:///{tmp_path}/m.sqlite")
    with engine.connect() as connection:
        with pytest.raises(OperationalError, match="(?i)no such function: regexp"):
            connection.execute(text("SELECT 'abc' REGEXP 'b'"))


def test_invalidated_connection_is_closed_on_a_python_thread(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/m.sqlite")
    closed_on: list[threading.Thread] = []
    do_close = engine.dialect.do_close
    engine.dialect.do_close = lambda dbapi_connection: (closed_on.append(threading.current_thread()), do_close(dbapi_connection))[1]  # type: ignore[method-assign]

    def invalidate() -> None:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            connection.invalidate()

    _on_foreign_thread(invalidate)
    assert len(closed_on) == 1 and not isinstance(closed_on[0], threading._DummyThread)  # noqa: SLF001


def test_postgresql_notices_never_reach_python() -> None:
    import psycopg

    url = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    notice = "DO $$ BEGIN RAISE NOTICE 'milterd test notice'; END $$"
    heard: list[str] = []
    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test", autocommit=True) as plain:
        plain.add_notice_handler(lambda diag: heard.append(diag.message_primary or ""))
        plain.execute(notice)
    assert heard == ["milterd test notice"]  # psycopg's receiver, as it comes
    engine = make_engine(url, pool_size=3)
    try:
        with engine.connect() as connection:
            driver = connection.connection.dbapi_connection
            assert driver is not None
            driver.add_notice_handler(lambda diag: heard.append(diag.message_primary or ""))  # type: ignore[attr-defined]
            connection.exec_driver_sql(notice)
        assert heard == ["milterd test notice"]  # libpq called no Python for the second one
        assert engine.pool.size() == 3
    finally:
        engine.dispose()


def test_postgresql_pool_size_from_configuration() -> None:
    store = Store(DatabaseSection(url="postgresql+psycopg://postgres@127.0.0.1:5432/test", pool_size=5))
    assert store.engine.pool.size() == 5
    assert store.engine.pool._max_overflow == 0  # noqa: SLF001
    assert DatabaseSection().pool_size == 16  # the size every worker had before it was configurable
