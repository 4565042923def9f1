"""Review 15, the classifier at message time: no BAYES_* without a clue; auto-learning never overrides a label."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from milterd.checks.bayes import AUTOLEARN, BayesCheck
from milterd.config import Config
from milterd.learner.tokenizer import hashed_tokens, message_digest
from milterd.message.model import Action, Envelope, Session, Spool, Verdict
from milterd.services import Services
from milterd.store.learner import LearnerStore

SPAM = b"From: x@spam.example\nSubject: viagra cheap\n\nbuy viagra cheap now\n"
HAM = b"From: y@ham.example\nSubject: meeting notes\n\nsee attached minutes\n"


@pytest.fixture
def services(tmp_path: Path) -> Iterator[Services]:
    """Services on a SQLite store, the classifier speaking after one message of each, auto-learning at 9 and -2."""
    config = Config.model_validate({
        "database": {"url": f"sqlite:///{tmp_path / 's.sqlite'}"}, "rules": {"dir": ""},
        "learner": {"min_spam": 1, "min_ham": 1, "autolearn_spam": 9.0, "autolearn_ham": -2.0},
    })
    found = Services(config=config)
    found.store.upgrade()
    yield found
    found.close()


def envelope(headers: list[tuple[str, bytes]], body: bytes) -> Envelope:
    spool = Spool(1024)
    spool.write(body)
    return Envelope(spool=spool, headers=headers)


def test_a_message_with_no_clue_gets_no_bayes_symbol(services: Services) -> None:
    repo = LearnerStore(services.store.engine)
    repo.learn("s", hashed_tokens(SPAM), "spam")
    repo.learn("h", hashed_tokens(HAM), "ham")
    check = BayesCheck(services)
    unknown = envelope([("Subject", b"zzzqqq")], b"qwertyuiop asdfghjkl\r\n")
    assert check.on_eom(Session(), unknown) == []  # was BAYES_50 (+1.0)
    known = envelope([("From", b"x@spam.example"), ("Subject", b"viagra cheap")], b"buy viagra cheap now\r\n")
    [hit] = check.on_eom(Session(), known)
    assert hit.symbol.startswith("BAYES_") and "clues=0" not in hit.detail


def test_auto_learning_never_moves_a_message_released_as_ham(services: Services) -> None:
    headers = [("Subject", b"quarterly figures"), ("Message-ID", b"<released@example.org>")]
    body = b"the figures you asked for\r\n"
    message = envelope(headers, body)
    digest = BayesCheck._digest(message)
    assert digest == message_digest(b"Subject: quarterly figures\nMessage-ID: <released@example.org>\n\nthe figures you asked for\n")
    repo = LearnerStore(services.store.engine)
    assert repo.learn(digest, [1, 2, 3], "ham") == "learned"  # quarantine release --ham
    copy = envelope(headers, body)  # a later copy scoring above autolearn_spam
    result = BayesCheck(services).on_verdict(Session(), copy, Verdict(Action.REJECT, 12.0, {"RULE": 12.0}, {}, ""))
    assert result.details[AUTOLEARN] == "spam: already"
    assert repo.label(digest) == "ham"
    assert (repo.totals().spam, repo.totals().ham) == (0, 1)


def test_the_store_moves_only_when_asked(services: Services) -> None:
    repo = LearnerStore(services.store.engine)
    assert repo.learn("d", [1, 2, 3], "ham") == "learned"
    assert repo.learn("d", [1, 2, 3], "spam", move=False) == "already"
    assert repo.learn("d", [1, 2, 3], "ham", move=False) == "already"
    assert repo.label("d") == "ham" and repo.counts([1])[1].ham == 1 and repo.counts([1])[1].spam == 0
    assert repo.learn("n", [4], "spam", move=False) == "learned"
    assert repo.learn("d", [1, 2, 3], "spam") == "moved"  # milterd learn --spam still moves it
