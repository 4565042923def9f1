"""Greylisting's store on an emptied database, as the greylist unit and PostgreSQL tests use it.

``store`` is a pytest fixture taking the test module's own ``database`` fixture (a
database URL: a SQLite file in the unit tests, a PostgreSQL test database in
tests/integration), so that one set of tests can run on either.  A test module
takes it with ``store = greylist_harness.store`` after ``from tests.harness import
greylist as greylist_harness``.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from milterd.config import DatabaseSection
from milterd.store import Store, schema

#: The tables greylisting writes, emptied before each test.
GREYLIST_TABLES = (schema.greylist, schema.greylist_clients, schema.greylist_whitelist)


@pytest.fixture
def store(database: str) -> Iterator[Store]:
    """The store at the module's *database*, its schema current and its greylisting tables empty."""
    store = Store(DatabaseSection(url=database))
    store.upgrade()
    with store.engine.begin() as connection:
        for table in GREYLIST_TABLES:
            connection.execute(table.delete())
    yield store
    store.close()
