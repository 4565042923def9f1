"""Store review (twenty-ninth session): an old SQLite store whose quarantine points at a deleted log row could
not be upgraded, and an in-memory SQLite URL was taken (every worker's log row then failed)."""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from pydantic import ValidationError
from sqlalchemy import text

from milterd.config import DatabaseSection
from milterd.store import Store

ROW = {"t": dt.datetime(2020, 1, 1)}


def test_a_store_at_0001_with_a_quarantine_row_whose_log_row_was_deleted_upgrades(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    store = Store(DatabaseSection(url=f"sqlite:///{path}"))
    with store.engine.begin() as connection:
        command.upgrade(store._alembic_config(connection), "0001")  # noqa: SLF001 - an old store, as it was made
    with store.engine.begin() as connection:
        for _ in range(2):
            connection.execute(text(
                "insert into messages (time,mta_host,queue_id,client_addr,client_name,helo,auth_user,sender,recipients,subject,"
                "message_id,size,score,action,reason,symbols,details,elapsed_ms,released_as_ham) values "
                "(:t,'','Q1','','','','','s','[]','','',1,1.0,'quarantine','','{}','{}',0,false)"), ROW)
            connection.execute(text(
                "insert into quarantine (message_log_id,time,mta_host,queue_id,client_addr,client_name,helo,sender,recipients,"
                "subject,score,reason,symbols,size,mode,raw,release_count,learned_ham) values "
                "(last_insert_rowid(),:t,'','Q1','','','','s','[]','',1.0,'','{}',3,'discard',:raw,0,false)"), {**ROW, "raw": b"abc"})
    store.close()
    with sqlite3.connect(path) as trimmed:  # an administrator trims the log with sqlite3 (foreign keys off there)
        trimmed.execute("delete from messages where id = 1")
    store = Store(DatabaseSection(url=f"sqlite:///{path}"))
    try:
        store.upgrade()
        assert store.schema_version() == store.head_version()
        with store.engine.connect() as connection:
            links = connection.execute(text("select message_log_id from quarantine order by id")).scalars().all()
        assert links == [None, 2]
    finally:
        store.close()


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///:memory:", "sqlite+pysqlite:///file:x?mode=memory&uri=true", "SQLITE:///:memory:"])
def test_an_in_memory_sqlite_url_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="in-memory SQLite database"):
        DatabaseSection(url=url)


@pytest.mark.parametrize("url", ["sqlite:///milterd.sqlite", "sqlite:////var/lib/milterd/milterd.sqlite", "postgresql+psycopg://u@h/db"])
def test_a_file_or_a_server_is_taken(url: str) -> None:
    assert DatabaseSection(url=url).url == url


@pytest.mark.parametrize("url", ["sqlite:///file::memory:?uri=true", "sqlite:///file:m1?vfs=memdb&uri=true", "sqlite:///%3Amemory%3A",
                                 "sqlite:///file:%3Amemory%3A?uri=true"])
def test_other_spellings_of_an_in_memory_database_are_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="in-memory SQLite database"):
        DatabaseSection(url=url)
