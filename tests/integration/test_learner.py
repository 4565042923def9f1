"""milterd's classifier through the real Postfix: learn a labelled set, then judge new mail.

The labelled sets are synthetic (two vocabularies, random draws, a fixed
seed): what is asserted is milterd's behaviour, BAYES_* in the log row and in
the delivered X-Spam-Status, not the statistics (bench/learner_eval.py
measures those on a real corpus).  A second test runs two milterd instances
on one PostgreSQL store: what one auto-learns, the other uses.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from milterd.config import DatabaseSection
from milterd.learner.classifier import Counts
from milterd.store import Store
from milterd.store.errors import StoreError
from milterd.store.learner import LearnerStore
from tests import conftest
from tests.conftest import message, with_sections
from tests.harness import pgdb
from tests.harness.milterd import write_config

#: Every other check off where the fixture exists: only the classifier (and the rules below) score.
NO_CHECKS: dict[str, dict[str, Any]] = getattr(conftest, "NO_CHECKS", {})

SPAM_WORDS = "viagra casino lottery winner prize pharmacy discount bitcoin investment guaranteed unclaimed inheritance refinance mortgage pills cheap offer exclusive limited cash bonus".split()
HAM_WORDS = "meeting agenda quarterly report budget review project deadline minutes colleague schedule lunch draft slides release branch merge patch invoice travel".split()
COMMON = "the and please regards thanks today this week about your".split()
MIN_LEARNED = 10


def text(words: list[str], rnd: random.Random) -> str:
    return " ".join(rnd.choice(words + COMMON) for _ in range(60)) + "\r\n"


def synthetic(label: str, n: int, seed: int, subject_tag: str = "") -> list[bytes]:
    """*n* messages of one class, each with its own Message-ID and body."""
    rnd = random.Random(f"{label}-{seed}")
    words = SPAM_WORDS if label == "spam" else HAM_WORDS
    return [message(subject=f"{subject_tag}{rnd.choice(words)} {uuid.uuid4().hex[:6]}", body=text(words, rnd)) for _ in range(n)]


def learner(**extra: Any) -> dict[str, dict[str, Any]]:
    return with_sections(NO_CHECKS, {"learner": {"min_spam": MIN_LEARNED, "min_ham": MIN_LEARNED, "cache_ttl": 1, **extra}})


def symbols(row: dict[str, Any]) -> set[str]:
    return {name for name in row["symbols"] if name.startswith("BAYES_")}


def send_and_find(stack: Any, raw: bytes, subject_prefix: str) -> tuple[dict[str, Any], str]:
    """Send *raw*; return its log row and the X-Spam-Status the sink received."""
    subject = next(line for line in raw.decode().split("\r\n") if line.startswith("Subject: "))[9:]
    assert subject.startswith(subject_prefix)
    assert stack.send(raw) == {}
    delivered = stack.sink.wait(match=lambda m: subject in m.headers)[0]
    row = next(r for r in stack.milterd.log_json() if r["subject"] == subject)
    status = " ".join(delivered.header("X-Spam-Status"))
    return row, status


def test_learn_then_judge_through_postfix(make_stack: Callable[..., Any], tmp_path: Path) -> None:
    stack = make_stack(learner())
    before, status = send_and_find(stack, synthetic("spam", 1, 99)[0], "")
    assert symbols(before) == set(), "untrained: the classifier abstains"
    assert "BAYES_" not in status

    for label in ("spam", "ham"):
        folder = tmp_path / label
        folder.mkdir()
        for number, raw in enumerate(synthetic(label, MIN_LEARNED + 2, 1)):
            (folder / f"{number}.eml").write_bytes(raw)
        result = stack.milterd.cli("learn", f"--{label}", str(folder), "--jobs", "2", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["learned"] == MIN_LEARNED + 2
    again = stack.milterd.cli("learn", "--spam", str(tmp_path / "spam"), "--json")
    assert json.loads(again.stdout)["already"] == MIN_LEARNED + 2

    spam_row, spam_status = send_and_find(stack, synthetic("spam", 1, 7)[0], "")
    assert symbols(spam_row) & {"BAYES_99", "BAYES_999"}, spam_row["symbols"]
    assert "BAYES_99" in spam_status, spam_status
    ham_row, ham_status = send_and_find(stack, synthetic("ham", 1, 7)[0], "")
    assert symbols(ham_row) == {"BAYES_00"}, ham_row["symbols"]
    assert "BAYES_00" in ham_status
    assert ham_row["score"] < 0 < spam_row["score"]

    # learn --clear empties the shared model: once the workers' cached counts expire (cache_ttl 1 s), the classifier
    # abstains again, as before anything was learned.
    cleared = stack.milterd.cli("learn", "--clear", "--json")
    assert cleared.returncode == 0, cleared.stderr
    time.sleep(1.5)
    after_row, after_status = send_and_find(stack, synthetic("spam", 1, 8)[0], "")
    assert symbols(after_row) == set(), after_row["symbols"]
    assert "BAYES_" not in after_status, after_status


@pytest.fixture(scope="module")
def shared_database() -> Iterator[str]:
    with pgdb.required_database("the shared-store test") as url:
        yield url


def test_two_instances_share_one_postgresql_model(make_stack: Callable[..., Any], shared_database: str, tmp_path: Path) -> None:
    # A auto-learns spam from its rules' verdicts and is taught ham with milterd learn; B has no rules and learns
    # nothing itself.
    rules = {"tags.toml": '[[rule]]\nname = "TEST_SPAMTAG"\nheader = "Subject"\nregex = "^SPAMTAG"\nscore = 10\n\n[[rule]]\nname = "TEST_HAMTAG"\nheader = "Subject"\nregex = "^HAMTAG"\nscore = -5\n'}
    database = {"database": {"url": shared_database}}
    first = make_stack(with_sections(learner(autolearn_spam=9, autolearn_ham=-4), database), rules)
    second = make_stack(with_sections(learner(), database))
    for raw in synthetic("spam", MIN_LEARNED + 1, 3, subject_tag="SPAMTAG "):
        row, _ = send_and_find(first, raw, "SPAMTAG ")
        assert "spam: learned" in json.dumps(row["details"]), row["details"]
    # Ham is never auto-learned from a message spamd did not judge (spamd is off here): a sender's own passes
    # (SPF, DKIM, DMARC of its domain) would have it learned as ham.
    hams = tmp_path / "ham"
    hams.mkdir()
    for number, raw in enumerate(synthetic("ham", MIN_LEARNED + 1, 3, subject_tag="HAMTAG ")):
        row, _ = send_and_find(first, raw, "HAMTAG ")
        assert "BAYES_AUTOLEARN" not in row["details"] and row["score"] <= -4, row
        (hams / f"{number}.eml").write_bytes(raw)
    taught = first.milterd.cli("learn", "--ham", str(hams), "--json")
    assert taught.returncode == 0 and json.loads(taught.stdout)["learned"] == MIN_LEARNED + 1, taught.stderr

    spam_row, spam_status = send_and_find(second, synthetic("spam", 1, 11)[0], "")
    assert symbols(spam_row) & {"BAYES_99", "BAYES_999"}, spam_row["symbols"]
    assert "BAYES_99" in spam_status
    ham_row, _ = send_and_find(second, synthetic("ham", 1, 11)[0], "")
    assert symbols(ham_row) == {"BAYES_00"}, ham_row["symbols"]


def quarantine_cli(stack: Any, *args: str) -> Any:
    """``milterd quarantine ARGS`` with the stack's configuration, releasing to its Postfix's re-injection socket."""
    sections = {k: dict(v) for k, v in stack.milterd.sections.items()}
    sections["quarantine"] = {"release_smtp": f"unix:{stack.postfix.reinject_socket}", "postfix_config": str(stack.postfix.etc)}
    path = write_config(stack.milterd.root / f"cli-{uuid.uuid4().hex[:8]}.conf", sections)
    return subprocess.run([sys.executable, "-m", "milterd", "-c", str(path), "quarantine", *args], capture_output=True, text=True, timeout=120)


def model(stack: Any) -> tuple[int, int]:
    """(spam, ham) messages the stack's model holds, read as ``milterd learn`` reports it."""
    store = Store(DatabaseSection(url=stack.milterd.sections["database"]["url"]))
    try:
        totals = LearnerStore(store.engine).totals()
    finally:
        store.close()
    return totals.spam, totals.ham


def test_quarantine_confirm_learns_spam_and_release_ham_learns_ham(make_stack: Callable[..., Any]) -> None:
    rules = {"q.toml": '[[rule]]\nname = "TEST_QUARANTINE"\nheader = "Subject"\nregex = "QUARANTINE-ME"\nscore = 13\n'}
    stack = make_stack(learner(), rules)
    ids = []
    for raw in synthetic("spam", 2, 21, subject_tag="QUARANTINE-ME "):
        assert stack.send(raw) == {}
        subject = next(line for line in raw.decode().split("\r\n") if line.startswith("Subject: "))[9:]
        listed = json.loads(quarantine_cli(stack, "list", "--json").stdout)
        ids.append(next(r["id"] for r in listed if r["subject"] == subject))
    assert model(stack) == (0, 0)

    confirmed = quarantine_cli(stack, "confirm", str(ids[0]))
    assert confirmed.returncode == 0, confirmed.stderr
    assert f"{ids[0]}: milterd's classifier: spam learned" in confirmed.stdout
    assert model(stack) == (1, 0)

    released = quarantine_cli(stack, "release", "--ham", str(ids[1]))
    assert released.returncode == 0, released.stderr
    assert f"{ids[1]}: milterd's classifier: ham learned" in released.stdout
    assert model(stack) == (1, 1)
    # Confirmed after all: the counts move, nothing is counted twice.
    moved = quarantine_cli(stack, "confirm", str(ids[1]))
    assert "spam moved" in moved.stdout, moved.stdout
    assert model(stack) == (2, 0)
    unknown = quarantine_cli(stack, "confirm", "999999")
    assert unknown.returncode == 1 and "999999" in unknown.stderr


def test_concurrent_learners_on_postgresql_never_deadlock() -> None:
    # Workers and MX hosts learn at once (auto-learn, milterd learn --jobs, quarantine):
    # messages sharing tokens must all be counted; unsorted upserts deadlocked here.
    with pgdb.temporary_database() as url:
        store = Store(DatabaseSection(url=url))
        try:
            store.upgrade()
            repository = LearnerStore(store.engine)
            errors: list[str] = []

            def learner_thread(number: int) -> None:
                rnd = random.Random(number)
                for index in range(40):
                    tokens = list(range(2000))
                    rnd.shuffle(tokens)
                    try:
                        repository.learn(f"m{number}-{index}", tokens[:1500], "spam" if index % 2 else "ham")
                    except StoreError as exc:
                        errors.append(str(exc))

            threads = [threading.Thread(target=learner_thread, args=(n,)) for n in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            assert repository.totals() == Counts(spam=80, ham=80)
        finally:
            store.close()
