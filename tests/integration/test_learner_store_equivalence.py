"""The classifier's store on PostgreSQL gives the outcomes it gives on SQLite."""

from __future__ import annotations

import datetime as dt
from typing import Iterator

import pytest
from sqlalchemy import Engine

from milterd.config import DatabaseSection
from milterd.learner.classifier import Counts
from milterd.store import Store
from milterd.store.learner import LearnerStore
from tests.harness import pgdb


@pytest.fixture
def postgresql_store() -> Iterator[Engine]:
    why = pgdb.available()
    if why:
        pytest.fail(f"PostgreSQL is needed for this test: {why}")
    with pgdb.temporary_database() as url:
        store = Store(DatabaseSection(url=url))
        try:
            store.upgrade()
            yield store.engine
        finally:
            store.close()


def test_relearning_on_postgresql_counts_once_and_moves(postgresql_store: Engine) -> None:
    # The claim's rowcount was -1 on psycopg (read after the cursor closed): every relearn counted as new.
    store = LearnerStore(postgresql_store)
    when = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    tokens = [1, 2, 3]
    assert store.learn("e" * 64, tokens, "spam", when) == "learned"
    assert store.learn("e" * 64, tokens, "spam", when) == "already"
    assert store.totals() == Counts(spam=1, ham=0)
    assert store.learn("e" * 64, tokens, "ham", when) == "moved"
    assert store.totals() == Counts(spam=0, ham=1)
    assert store.counts(tokens) == {t: Counts(spam=0, ham=1) for t in tokens}
    assert store.label("e" * 64) == "ham"
    assert store.learn("e" * 64, tokens, None, when) == "forgotten"
    assert store.learn("e" * 64, tokens, None, when) == "unknown"
    assert store.totals() == Counts()
