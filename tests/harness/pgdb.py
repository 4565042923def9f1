"""A throw-away PostgreSQL database on the machine's server (127.0.0.1:5432).

``temporary_database()`` creates ``milterd_test_<random>`` through the
``postgres`` maintenance database and drops it afterwards, so that tests never
touch each other's tables or the ``test`` database; ``required_database()``
is one that a test cannot do without, and ``upgraded_store()`` a milterd store
on one, its schema current.
"""

from __future__ import annotations

import contextlib
import uuid
from typing import Iterator

import pytest

from milterd.config import DatabaseSection
from milterd.store import Store

HOST, PORT, USER = "127.0.0.1", 5432, "postgres"


def _admin():  # type: ignore[no-untyped-def]
    import psycopg

    last: Exception | None = None
    for dbname in ("postgres", "test"):
        try:
            return psycopg.connect(host=HOST, port=PORT, user=USER, dbname=dbname, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            last = exc
    raise RuntimeError(f"PostgreSQL does not answer on {HOST}:{PORT}: {last}")


def available() -> str | None:
    """None when PostgreSQL answers; otherwise why not."""
    try:
        _admin().close()
        return None
    except Exception as exc:  # noqa: BLE001
        return str(exc)


@contextlib.contextmanager
def temporary_database() -> Iterator[str]:
    """Create a fresh database; yield its SQLAlchemy URL; drop it afterwards."""
    name = f"milterd_test_{uuid.uuid4().hex[:12]}"
    with _admin() as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://{USER}@{HOST}:{PORT}/{name}"
    finally:
        with _admin() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def required_database(needed_for: str) -> Iterator[str]:
    """A :func:`temporary_database`'s URL; without PostgreSQL the test fails, saying what it was *needed_for*."""
    why = available()
    if why:
        pytest.fail(f"PostgreSQL is needed for {needed_for}: {why}")
    with temporary_database() as url:
        yield url


@contextlib.contextmanager
def upgraded_store(needed_for: str) -> Iterator[Store]:
    """A milterd :class:`Store` on a :func:`required_database`, its schema current, closed afterwards."""
    with required_database(needed_for) as url:
        store = Store(DatabaseSection(url=url))
        try:
            store.upgrade()
            yield store
        finally:
            store.close()
