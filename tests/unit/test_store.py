"""The store's engines: pools that never close a connection while a worker serves mail."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from sqlalchemy.log import _qual_logger_name_for_cls
from sqlalchemy.pool import QueuePool

from milterd.config import DatabaseSection
from milterd.logs import setup_logging
from milterd.pythonthread import run_on_python_thread
from milterd.store import POOL_SIZE, MessageRecord, Store, make_engine
from milterd.store.engine import OwnedQueuePool
from tests.harness.threads import on_foreign_thread


def test_sqlite_pool_has_no_overflow(tmp_path: Path) -> None:
    # An overflow connection is closed after use; closing one from a libmilter
    # thread crashed workers (make_engine's docstring).
    engine = make_engine(f"sqlite:///{tmp_path}/sub/milterd.sqlite")
    assert isinstance(engine.pool, QueuePool)
    assert engine.pool.size() == POOL_SIZE
    assert engine.pool._max_overflow == 0  # noqa: SLF001 - the property under test
    assert not (tmp_path / "sub").exists()  # nothing on disk until a connection is opened
    engine.connect().close()
    assert (tmp_path / "sub").is_dir()
    assert (tmp_path / "sub" / "milterd.sqlite").stat().st_mode & 0o777 == 0o600
    engine.dispose()


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

def test_run_on_python_thread_leaves_foreign_threads() -> None:
    assert isinstance(on_foreign_thread(threading.current_thread), threading._DummyThread)  # noqa: SLF001 - the test's premise
    ran_on = on_foreign_thread(lambda: run_on_python_thread(threading.current_thread))
    assert not isinstance(ran_on, threading._DummyThread) and ran_on.name == "milterd-helper"  # noqa: SLF001
    assert run_on_python_thread(threading.current_thread) is threading.current_thread()  # a Python thread: in place
    with pytest.raises(ZeroDivisionError):
        on_foreign_thread(lambda: run_on_python_thread(lambda: 1 // 0))


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

    on_foreign_thread(invalidate)
    assert len(closed_on) == 1 and not isinstance(closed_on[0], threading._DummyThread)  # noqa: SLF001


def test_postgresql_pool_size_from_configuration() -> None:
    store = Store(DatabaseSection(url="postgresql+psycopg://postgres@127.0.0.1:5432/test", pool_size=5))
    assert store.engine.pool.size() == 5
    assert store.engine.pool._max_overflow == 0  # noqa: SLF001
    assert DatabaseSection().pool_size == 16  # the size every worker had before it was configurable


def test_the_pools_chatter_stays_out_of_milterds_log() -> None:
    """SQLAlchemy's pool logs "Pool disposed" at INFO whenever a worker forgets its
    parent's connections; milterd's own pool class must log under sqlalchemy's
    namespace (quiet below WARNING), not as a milterd.* logger."""
    name = _qual_logger_name_for_cls(OwnedQueuePool)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        setup_logging("stderr", "info")
        assert name.startswith("sqlalchemy.") and not logging.getLogger(name).isEnabledFor(logging.INFO)
        assert logging.getLogger("milterd").isEnabledFor(logging.INFO)
    finally:
        root.handlers[:], root.level = saved[0], saved[1]


def test_a_sqlite_url_with_a_tilde_opens_the_file_it_creates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The private file was created in the home directory while SQLite opened a literal "~/…" path.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    store = Store(DatabaseSection(url="sqlite:///~/milterd.sqlite"))
    assert store.schema_version() is None  # asking creates nothing
    assert not (tmp_path / "home").exists()
    store.upgrade()
    store.log_message(MessageRecord(action="accept", queue_id="Q1"))
    assert [row["queue_id"] for row in store.messages(queue_id="Q1")] == ["Q1"]
    assert (tmp_path / "home" / "milterd.sqlite").stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "~").exists()
