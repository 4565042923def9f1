"""``[learner] max_learned``: the maintenance job bounds the learned-message digests.

One digest is kept per message learned (learning it twice counts once, learning
it with the other label moves it); with auto-learning on, the table grew by one
row per message for ever.  Beyond the bound the job drops the digests learned (or
moved) longest ago, and leaves the counts as they are.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import func, select, update

from milterd.checks.bayes import expiry_job
from milterd.config import Config, LearnerSection
from milterd.diagnostics import judge_model
from milterd.learner.classifier import Counts
from milterd.services import Services
from milterd.store.learner import DROPPED_ID, LearnerStore, messages_table, totals_table

DAY = dt.timedelta(days=1)


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    config = Config.model_validate({"database": {"url": f"sqlite:///{tmp_path / 's.sqlite'}"}, "learner": {"max_learned": 2, "min_spam": 1, "min_ham": 1}})
    services = Services(config=config)
    services.store.upgrade()
    yield services
    services.close()


def digests(repo: LearnerStore) -> dict[str, str]:
    with repo.engine.connect() as connection:
        return {str(digest): str(label) for digest, label in connection.execute(select(messages_table.c.digest, messages_table.c.label))}


def learned_four(repo: LearnerStore) -> None:
    """Four messages learned on four days (recently, for token expiry): "old" moved to ham on the last."""
    now = dt.datetime.now(dt.timezone.utc)
    repo.learn("old", [1, 2], "spam", now - 4 * DAY)
    repo.learn("a", [2, 3], "spam", now - 3 * DAY)
    repo.learn("b", [3, 4], "ham", now - 2 * DAY)
    repo.learn("c", [4, 5], "spam", now - DAY)
    assert repo.learn("old", [1, 2], "ham", now) == "moved"  # learned longest ago, moved last: kept


def test_the_job_drops_the_digests_learned_longest_ago_and_keeps_the_counts(services: Services) -> None:
    repo = LearnerStore(services.store.engine)
    learned_four(repo)
    tokens = [1, 2, 3, 4, 5]
    counts, totals = repo.counts(tokens), repo.totals()
    assert totals == Counts(2, 2)
    assert expiry_job(services) == "2 learned-message digests dropped"
    assert digests(repo) == {"c": "spam", "old": "ham"}  # "a" and "b" went; "old" counts from its move
    assert repo.counts(tokens) == counts and repo.totals() == totals  # nothing uncounted
    assert expiry_job(services) == ""  # within the bound now
    # What is lost: a dropped message counts again when learned again, and can no longer be forgotten.
    assert repo.learn("b", [3, 4], None) == "unknown"
    assert repo.learn("a", [2, 3], "spam") == "learned"
    assert repo.totals() == Counts(3, 2) and repo.counts([2])[2] == Counts(2, 1)
    assert repo.learn("old", [1, 2], "spam") == "moved"  # a kept digest still moves
    assert repo.totals() == Counts(4, 1)


def test_the_summary_counts_the_dropped_digests_so_the_model_is_not_taken_for_inflated(services: Services) -> None:
    repo = LearnerStore(services.store.engine)
    learned_four(repo)
    assert expiry_job(services) == "2 learned-message digests dropped"
    summary = repo.summary()
    assert (summary.spam, summary.ham, summary.spam_messages, summary.ham_messages) == (2, 2, 1, 1)
    assert (summary.spam_dropped, summary.ham_dropped, summary.inflated) == (1, 1, False)
    assert judge_model(summary, 1, 1).status == "ok"  # doctor would have said: counted twice, empty the model
    assert repo.totals() == Counts(2, 2)  # the dropped row is not the totals' row
    # Dropping more adds to the row; a real inflation is still seen.
    repo.learn("d", [6], "spam")
    assert repo.drop_learned(1) == 2
    assert (repo.summary().spam_dropped, repo.summary().ham_dropped, repo.summary().inflated) == (2, 2, False)
    with repo.engine.begin() as connection:
        connection.execute(update(totals_table).where(totals_table.c.id == 1).values(spam=totals_table.c.spam + 1))
    assert repo.summary().inflated


def test_emptying_the_model_forgets_the_dropped_digests_too(services: Services) -> None:
    repo = LearnerStore(services.store.engine)
    learned_four(repo)
    repo.drop_learned(2)
    held = repo.clear()
    assert (held.spam, held.ham, held.messages) == (2, 2, 2)
    with repo.engine.connect() as connection:
        assert connection.execute(select(func.count()).select_from(totals_table).where(totals_table.c.id == DROPPED_ID)).scalar() == 0
    summary = repo.summary()
    assert (summary.spam_dropped, summary.ham_dropped, summary.inflated) == (0, 0, False)


def test_no_bound_and_the_job_line_with_tokens_expired(tmp_path: Path) -> None:
    assert LearnerSection().max_learned == 1_000_000
    with pytest.raises(ValueError):
        LearnerSection(max_learned=-1)
    config = Config.model_validate({"database": {"url": f"sqlite:///{tmp_path / 's.sqlite'}"}, "learner": {"max_learned": 0, "token_expiry": "30d"}})
    services = Services(config=config)
    services.store.upgrade()
    try:
        repo = LearnerStore(services.store.engine)
        now = dt.datetime.now(dt.timezone.utc)
        for n in range(5):
            repo.learn(f"m{n}", [n], "spam", now - (60 if n == 0 else n) * DAY)
        assert repo.drop_learned(0) == 0
        assert expiry_job(services) == "1 tokens expired"  # token 0: rare and old; every digest stays
        assert len(digests(repo)) == 5
        bounded = Services(config=config.with_changes({"learner.max_learned": 3}))
        repo.learn("m5", [0], "spam", now - 60 * DAY)
        try:
            assert expiry_job(bounded) == "1 tokens expired, 3 learned-message digests dropped"
        finally:
            bounded.close()
        assert set(digests(repo)) == {"m1", "m2", "m3"}
    finally:
        services.close()
