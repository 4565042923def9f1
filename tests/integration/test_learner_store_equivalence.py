"""The classifier's store on PostgreSQL gives the outcomes it gives on SQLite, and the cost cuts (#13) change none.

The random learn / relearn / move / forget / expiry sequences of
``tests/unit/test_learner_cost_cuts.py`` run against the learner as it was
before the cuts and against today's :class:`LearnerStore`, each on its own
fresh PostgreSQL database (127.0.0.1:5432): the outcomes and every row of the
three tables must be identical, and the same as on SQLite.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import Engine, event, select

from milterd.config import DatabaseSection
from milterd.learner.classifier import Counts
from milterd.store import Store
from milterd.store.learner import CHUNK, LearnerStore, messages_table, tokens_table, totals_table
from tests.harness import pgdb
from tests.unit.test_learner_cost_cuts import assert_equivalent, replay, scenario


@pytest.fixture
def postgresql_store() -> Iterator[Engine]:
    with pgdb.upgraded_store("this test") as store:
        yield store.engine


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


def test_the_summary_counts_by_label_and_clear_empties_the_model_on_postgresql(postgresql_store: Engine) -> None:
    store = LearnerStore(postgresql_store)
    when = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    for n, label in enumerate(["spam", "spam", "ham"]):
        store.learn(f"{n}" * 64, [n, 10 + n], label, when)  # type: ignore[arg-type]
    summary = store.summary()
    assert (summary.spam, summary.ham, summary.spam_messages, summary.ham_messages, summary.tokens, summary.inflated) == (2, 1, 2, 1, 6, False)
    held = store.clear()
    assert (held.spam, held.ham, held.tokens, held.messages) == (2, 1, 6, 3)
    assert rows(postgresql_store) == {"learner_tokens": [], "learner_totals": [], "learner_messages": []}
    assert store.learn("0" * 64, [0, 10], "spam", when) == "learned"  # not "already": the digests went too
    assert store.totals() == Counts(spam=1, ham=0)


@pytest.fixture
def two_stores() -> Iterator[tuple[Engine, Engine]]:
    with pgdb.required_database("the equivalence test") as old_url, pgdb.temporary_database() as new_url:
        stores = [Store(DatabaseSection(url=url)) for url in (old_url, new_url)]
        try:
            for store in stores:
                store.upgrade()
            yield stores[0].engine, stores[1].engine
        finally:
            for store in stores:
                store.close()


def rows(engine: Engine) -> dict[str, list[tuple[object, ...]]]:
    """The three tables' rows as SQLAlchemy reads them (the same Python values from either database)."""
    with engine.connect() as connection:
        return {table.name: [tuple(r) for r in connection.execute(select(table).order_by(*table.primary_key.columns))] for table in (tokens_table, totals_table, messages_table)}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_learning_on_postgresql_gives_the_same_outcomes_and_rows_as_before_and_as_on_sqlite(two_stores: tuple[Engine, Engine], seed: int, tmp_path: Path) -> None:
    outcomes = assert_equivalent(*two_stores, seed)
    assert {"learned", "already", "moved", "forgotten", "unknown"} <= set(outcomes)
    sqlite = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 'sqlite.sqlite'}"))
    try:
        sqlite.upgrade()
        assert replay(sqlite.engine, LearnerStore(sqlite.engine), scenario(seed)) == outcomes
        on_sqlite, on_postgresql = rows(sqlite.engine), rows(two_stores[1])
    finally:
        sqlite.close()
    # SQLite gives back naive times (it keeps no zone): the same instants in UTC.
    on_sqlite["learner_messages"] = [(d, label, t.replace(tzinfo=dt.timezone.utc)) for d, label, t in on_sqlite["learner_messages"]]  # type: ignore[attr-defined]
    assert on_postgresql == on_sqlite


def test_the_token_upsert_reaches_postgresql_as_one_array_per_chunk_in_token_order(two_stores: tuple[Engine, Engine]) -> None:
    _, engine = two_stores
    batches: list[list[int]] = []

    def seen(conn: object, cursor: object, statement: str, parameters: dict[str, object], context: object, many: bool) -> None:
        if statement.startswith("INSERT INTO learner_tokens"):
            assert not many and "ORDER BY token" in statement  # rows locked in token order
            batches.append(list(parameters["tokens"]))  # type: ignore[call-overload]

    event.listen(engine, "before_cursor_execute", seen)
    tokens = list(range(-700, 700))[::-1] + [5, 5, 2**63 - 1, -(2**63)]
    store = LearnerStore(engine)
    assert store.learn("d" * 64, tokens, "spam", dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)) == "learned"
    # Sorted, so that concurrent learners lock shared rows in the same order.
    assert [len(b) for b in batches] == [CHUNK, CHUNK, 402] and sum(batches, []) == sorted(set(tokens))
    assert store.counts([-700, 699, 5, 2**63 - 1, -(2**63)]) == {t: Counts(spam=1) for t in (-700, 699, 5, 2**63 - 1, -(2**63))}
    assert store.learn("d" * 64, tokens, "ham", dt.datetime(2024, 5, 2, tzinfo=dt.timezone.utc)) == "moved"
    assert store.counts([-700, 2**63 - 1]) == {t: Counts(ham=1) for t in (-700, 2**63 - 1)}
