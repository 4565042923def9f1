"""Two processes creating or upgrading one store's schema at the same moment (two MX hosts starting with
``auto_upgrade``): both must start, the schema made once.  Before upgrades were serialised, the second
failed on PostgreSQL (UniqueViolation on alembic_version, DuplicateColumn "notified") and on SQLite
("table alembic_version already exists")."""

from __future__ import annotations

import multiprocessing
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command

from milterd.config import DatabaseSection
from milterd.store import Store
from tests.harness import pgdb

ROUNDS = 4
PROCESSES = 2


def _upgrade(url: str, barrier: Any, out: Any) -> None:
    """A child process: open the store, wait for the others, then upgrade as ``serve`` does at start."""
    store = Store(DatabaseSection(url=url))
    barrier.wait()
    try:
        store.ensure_schema(True)
        out.put(f"ok {store.schema_version()}")
    except Exception as exc:  # noqa: BLE001 - reported to the test
        out.put(f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
    finally:
        store.close()


def upgrade_at_once(url: str) -> list[str]:
    """What each of PROCESSES processes upgrading *url* at the same moment reports."""
    context = multiprocessing.get_context("fork")
    barrier, out = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=_upgrade, args=(url, barrier, out)) for _ in range(PROCESSES)]
    for process in processes:
        process.start()
    results = [out.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
    return sorted(results)


def newest(url: str) -> str:
    """This milterd's newest schema version."""
    store = Store(DatabaseSection(url=url))
    try:
        return store.head_version()
    finally:
        store.close()


def prepare(url: str, version: str) -> None:
    """Bring the schema of *url* to *version* (an older one than this milterd's newest)."""
    store = Store(DatabaseSection(url=url))
    try:
        with store.engine.begin() as connection:
            command.upgrade(store._alembic_config(connection), version)  # noqa: SLF001 - staging an older schema
    finally:
        store.close()


def test_two_processes_create_a_fresh_postgresql_schema_at_once() -> None:
    for _ in range(ROUNDS):
        with pgdb.required_database("concurrent schema creation") as url:
            results = upgrade_at_once(url)
        assert results == [f"ok {newest(url)}"] * PROCESSES, results


def test_two_processes_upgrade_a_postgresql_schema_at_once() -> None:
    for _ in range(ROUNDS):
        with pgdb.required_database("concurrent schema upgrades") as url:
            prepare(url, "0003")
            results = upgrade_at_once(url)
        assert results == [f"ok {newest(url)}"] * PROCESSES, results


@pytest.mark.parametrize("version", [None, "0003"])
def test_two_processes_upgrade_one_sqlite_file_at_once(tmp_path: Path, version: str | None) -> None:
    for round_ in range(ROUNDS):
        file = tmp_path / f"store{round_}.sqlite"
        # An existing (empty, or older) store in WAL mode, as an older milterd leaves it.
        # (Two processes switching a brand-new file to WAL at once is a separate matter, in store/engine.py.)
        connection = sqlite3.connect(file)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.close()
        url = f"sqlite:///{file}"
        if version:
            prepare(url, version)
        results = upgrade_at_once(url)
        assert results == [f"ok {newest(url)}"] * PROCESSES, results
