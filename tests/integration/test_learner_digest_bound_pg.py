"""``[learner] max_learned`` on PostgreSQL (a fresh database per test): dropping the learned-message
digests never waits for a digest a learner holds, and a learner meeting a digest being dropped
counts as if the drop came first (tests/unit/test_learner_digest_bound.py has the rest)."""

from __future__ import annotations

import datetime as dt
from typing import Iterator

import pytest
from sqlalchemy import select

from milterd.learner.classifier import Counts
from milterd.store import Store
from milterd.store.learner import DROPPED_ID, LearnerStore, messages_table, totals_table
from tests.harness import pgdb
from tests.integration.test_store_lock_order_postgresql import Stage, holding
from tests.unit.test_store_lock_order import NOW, executed, written_sql

DAY = dt.timedelta(days=1)


@pytest.fixture
def store() -> Iterator[Store]:
    with pgdb.upgraded_store("the digest bound tests") as store:
        yield store


def learned_abcd(learner: LearnerStore) -> None:
    """a (spam), b (ham), c (spam), d (ham), learned on four days in this order."""
    for n, (digest, label) in enumerate((("a", "spam"), ("b", "ham"), ("c", "spam"), ("d", "ham"))):
        assert learner.learn(digest, [n, 10 + n], "spam" if label == "spam" else "ham", NOW - (4 - n) * DAY) == "learned"


def kept(learner: LearnerStore) -> dict[str, str]:
    with learner.engine.connect() as connection:
        return {str(d): str(label) for d, label in connection.execute(select(messages_table.c.digest, messages_table.c.label))}


def test_dropping_skips_the_digests_writers_hold_and_keeps_the_counts(store: Store) -> None:
    learner = LearnerStore(store.engine)
    learned_abcd(learner)
    with executed(store.engine) as seen:
        assert learner.drop_learned(3) == 1
    deletes = [written_sql(clause) for clause, _ in seen if written_sql(clause).startswith("DELETE")]
    assert len(deletes) == 1 and deletes[0].endswith("FOR UPDATE SKIP LOCKED) RETURNING learner_messages.label"), deletes
    assert set(kept(learner)) == {"b", "c", "d"}
    stage = Stage(store.engine)
    with holding(store.engine, select(messages_table.c.digest).where(messages_table.c.digest == "b").with_for_update()):
        stage.start("drop", lambda: learner.drop_learned(1), waits=False)
    stage.join()
    assert stage.errors == []
    assert stage.results == {"drop": 1} and kept(learner) == {"b": "ham", "d": "ham"}  # b, held, left to the next run
    assert learner.totals() == Counts(2, 2) and learner.counts([0, 2]) == {0: Counts(1, 0), 2: Counts(1, 0)}
    summary = learner.summary()
    assert (summary.spam_dropped, summary.ham_dropped, summary.inflated) == (2, 0, False)


def test_a_forget_and_a_learn_meeting_digests_being_dropped_count_as_after_the_drop(store: Store) -> None:
    learner = LearnerStore(store.engine)
    learned_abcd(learner)
    assert learner.drop_learned(3) == 1  # the dropped row exists: held below, so that the drop stops after its DELETE
    stage = Stage(store.engine)
    with holding(store.engine, select(totals_table.c.id).where(totals_table.c.id == DROPPED_ID).with_for_update()):
        stage.start("drop", lambda: learner.drop_learned(1))  # b and c deleted, not yet committed
        stage.start("forget", lambda: learner.learn("b", [1, 11], None))
        stage.start("move", lambda: learner.learn("c", [2, 12], "ham", NOW))
    stage.join()
    assert stage.errors == []
    # As if the drop came first: b cannot be forgotten any more, and c, learned again, counts again.
    assert stage.results == {"drop": 2, "forget": "unknown", "move": "learned"}
    assert kept(learner) == {"c": "ham", "d": "ham"}
    assert learner.totals() == Counts(2, 3) and learner.counts([2]) == {2: Counts(1, 1)}
    summary = learner.summary()
    assert (summary.spam_messages, summary.ham_messages, summary.spam_dropped, summary.ham_dropped) == (0, 2, 2, 1)
    assert not summary.inflated
