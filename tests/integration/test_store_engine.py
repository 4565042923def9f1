"""The store's PostgreSQL engine against the real server: no C callback into Python.

psycopg's notice receiver is C that calls Python through PyGILState_Ensure;
on a libmilter thread that crashed workers (tests/integration/test_threads.py
shows it through Postfix).  Here: the receiver no longer reaches Python, and
connections are opened on a thread Python started even when a libmilter-like
thread asks for one.  Also doctor's connection budget against the server.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import text

from milterd.diagnostics import judge_connections, probe_connections
from milterd.store import make_engine
from tests.harness.threads import on_foreign_thread


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


def test_postgresql_connections_are_opened_on_a_python_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    # The server may send NOTICEs while a connection starts, before they are silenced.
    import psycopg

    opened_on: list[threading.Thread] = []
    connect = psycopg.connect
    monkeypatch.setattr(psycopg, "connect", lambda *a, **k: (opened_on.append(threading.current_thread()), connect(*a, **k))[1])
    engine = make_engine("postgresql+psycopg://postgres@127.0.0.1:5432/test", pool_size=2)
    try:
        def query() -> int:
            with engine.connect() as connection:
                return int(connection.execute(text("SELECT 7")).scalar_one())

        assert on_foreign_thread(query) == 7
        assert len(opened_on) == 1 and opened_on[0].name == "milterd-helper"
    finally:
        engine.dispose()


def test_probe_reads_the_servers_limits() -> None:
    import psycopg

    from milterd.config import Config

    with psycopg.connect("host=127.0.0.1 port=5432 user=postgres dbname=test") as conn:
        limit = int(conn.execute("SHOW max_connections").fetchone()[0])  # type: ignore[index]
        reserved = int(conn.execute("SHOW superuser_reserved_connections").fetchone()[0])  # type: ignore[index]
    config = Config.model_validate({"milter": {"workers": 3}, "database": {"url": "postgresql+psycopg://postgres@127.0.0.1:5432/test", "pool_size": 20}})
    [finding] = probe_connections(config)
    assert finding.name == "database connections"
    assert f"up to 62 connections ([database] pool_size 20 × 3 workers + 2), 82 during a reload; the server allows {limit - reserved}" in finding.detail
    assert finding == judge_connections(20, 3, limit, reserved)
    assert probe_connections(Config()) == []  # SQLite: no server to ask
