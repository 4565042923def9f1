"""The classifier asks the store for the tokens its worker's cache lacks without holding the
cache's lock: the worker's other connections classify from the cache meanwhile.  After every
``cache_ttl`` each message misses, and with the lock held they all queued behind one query
(a PostgreSQL store several MX hosts share answers in milliseconds, not microseconds)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Iterator, Sequence

import pytest

from milterd.checks.bayes import BayesCheck
from milterd.config import Config
from milterd.learner.classifier import Counts
from milterd.learner.tokenizer import hashed_tokens
from milterd.services import Services
from milterd.store.learner import LearnerStore

KNOWN = b"Subject: lunch\r\n\r\nsee you at noon tomorrow\r\n"
NEW = b"Subject: offer\r\n\r\ncheap pills online pharmacy now\r\n"


@pytest.fixture
def check(tmp_path: Path) -> Iterator[BayesCheck]:
    config = Config.model_validate({"database": {"url": f"sqlite:///{tmp_path / 's.sqlite'}"}, "learner": {"min_spam": 1, "min_ham": 1}})
    services = Services(config=config)
    services.store.upgrade()
    repository = LearnerStore(services.store.engine)
    repository.learn("a" * 64, hashed_tokens(KNOWN), "ham")
    repository.learn("b" * 64, hashed_tokens(NEW + b"x"), "spam")
    yield BayesCheck(services)
    services.close()


def test_a_cached_message_is_classified_while_another_waits_for_the_store(check: BayesCheck, monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.monotonic()
    assert check.score(KNOWN, now) is not None  # its tokens are now in the cache
    asking, answer = threading.Event(), threading.Event()
    real = LearnerStore.counts

    def slow(self: LearnerStore, tokens: Sequence[int]) -> dict[int, Counts]:
        asking.set()
        answer.wait(10)
        return real(self, tokens)

    monkeypatch.setattr(LearnerStore, "counts", slow)
    waiting = threading.Thread(target=check.score, args=(NEW, now))
    waiting.start()
    assert asking.wait(10)
    done = threading.Event()
    cached = threading.Thread(target=lambda: (check.score(KNOWN, now), done.set()))
    cached.start()
    try:
        assert done.wait(5), "a message whose tokens are cached waited for another message's query"
    finally:
        answer.set()
        waiting.join(10)
        cached.join(10)
    assert check.score(NEW, now) is not None  # the slow query's counts were cached too
