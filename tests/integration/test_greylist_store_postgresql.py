"""Greylisting's store operations on PostgreSQL, a fresh database per run: the
tests of tests/unit/test_greylist_store.py (which run them on SQLite), collected
again here with this module's ``database``."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.harness import pgdb
from tests.unit.test_greylist_store import *  # noqa: F403 - the same tests, on PostgreSQL

# Its refusing trigger is SQLite's syntax; the path it tests (a write the store
# refuses) is the same code whichever database refuses.
del test_failed_write_holds_greylisting_off  # noqa: F405, F821 - defined by the star import


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with pgdb.required_database("the shared-store tests") as url:
        yield url
