"""The classifier's learning paths: concurrent learns keep the counts, the digest is the message's, ``milterd learn`` goes on.

SQLite only (a temporary file).  A concurrent learner is played with SQLAlchemy's
``before_cursor_execute`` hook: on another connection where SQLite allows it, or as
statements on the same connection where only PostgreSQL's READ COMMITTED would let
another transaction's commit show between two statements.
"""

from __future__ import annotations

import gzip
import json
import mailbox
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from sqlalchemy import event, func, select

from milterd.cli import main
from milterd.commands import learn as learn_command
from milterd.config import DatabaseSection
from milterd.learner.classifier import Counts
from milterd.learner.tokenizer import message_digest
from milterd.store import Store
from milterd.store.learner import LearnerStore, messages_table

TOKENS = [11, 22, 33]


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[LearnerStore]:
    store = Store(DatabaseSection(url=f"sqlite:///{tmp_path / 'store.sqlite'}"))
    store.upgrade()
    yield LearnerStore(store.engine)
    store.close()


def once_before(repo: LearnerStore, prefix: str, action: Callable[[Any], None]) -> None:
    """Run *action* (given the DBAPI cursor) once, just before the first statement starting with *prefix*."""
    fired: list[bool] = []

    def hook(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        if not fired and statement.lstrip().upper().startswith(prefix):
            fired.append(True)
            action(cursor)

    event.listen(repo.engine, "before_cursor_execute", hook)


def by_label(repo: LearnerStore) -> dict[str, int]:
    with repo.engine.connect() as connection:
        return {str(label): int(n) for label, n in connection.execute(select(messages_table.c.label, func.count()).group_by(messages_table.c.label))}


# --- concurrent learners -----------------------------------------------------------
def test_two_forgets_of_one_message_at_once_take_it_away_once(repo: LearnerStore) -> None:
    repo.learn("d1", TOKENS, "spam")
    repo.learn("d2", TOKENS, "spam")
    # Another process forgets d1 between this forget's look at the label and its delete.
    once_before(repo, "DELETE FROM LEARNER_MESSAGES", lambda cursor: repo.learn("d1", TOKENS, None))
    assert repo.learn("d1", TOKENS, None) == "unknown"
    assert repo.totals() == Counts(spam=1) and by_label(repo) == {"spam": 1}
    assert repo.counts(TOKENS) == {t: Counts(spam=1) for t in TOKENS}


def test_a_move_that_another_learner_made_first_counts_nothing(repo: LearnerStore) -> None:
    repo.learn("d1", TOKENS, "spam")

    def moved_elsewhere(cursor: Any) -> None:
        # What another transaction's move spam -> ham committed, as PostgreSQL's UPDATE then sees it.
        cursor.connection.execute("UPDATE learner_messages SET label = 'ham'")
        cursor.connection.execute("UPDATE learner_totals SET spam = spam - 1, ham = ham + 1")
        cursor.connection.execute("UPDATE learner_tokens SET spam = spam - 1, ham = ham + 1")

    once_before(repo, "UPDATE LEARNER_MESSAGES", moved_elsewhere)
    assert repo.learn("d1", TOKENS, "ham") == "already"
    assert repo.totals() == Counts(ham=1) and by_label(repo) == {"ham": 1}
    assert repo.counts(TOKENS) == {t: Counts(ham=1) for t in TOKENS}


def test_the_first_totals_row_written_by_another_learner_keeps_both_counts(repo: LearnerStore) -> None:
    # --clear deletes the totals row; on PostgreSQL two learns after it may both find no row to update.
    repo.clear()
    once_before(repo, "INSERT INTO LEARNER_TOTALS", lambda cursor: cursor.connection.execute("INSERT INTO learner_totals (id, spam, ham) VALUES (1, 1, 0)"))
    assert repo.learn("d1", TOKENS, "spam") == "learned"
    assert repo.totals() == Counts(spam=2)


# --- the digest ----------------------------------------------------------------------
BODY = b"Hello,\r\n\r\nFrom what I hear the meeting moved.\r\n"


def test_the_digest_of_a_folded_message_id_is_that_of_the_unfolded_one() -> None:
    assert message_digest(b"Message-ID:\r\n <1@example.org>\r\n\r\n" + BODY) == message_digest(b"Message-ID: <1@example.org>\r\n\r\n" + BODY)


def test_the_mbox_copy_with_from_quoted_is_the_same_message(tmp_path: Path) -> None:
    raw = b"From: a@example.org\r\nMessage-ID: <2@example.org>\r\n\r\n" + BODY
    box = mailbox.mbox(str(tmp_path / "mbox"))
    box.add(raw)
    box.add(b"From: b@example.org\r\nMessage-ID: <3@example.org>\r\n\r\nother\r\n")
    box.close()
    copies = [ref.load() for ref in learn_command.sources(tmp_path / "mbox")]
    assert b">From what" in copies[0]  # Python's mbox (as Postfix's local) quotes and does not unquote
    assert message_digest(copies[0]) == message_digest(raw)
    assert message_digest(raw.replace(b"From what", b">From what")) == message_digest(raw.replace(b"From what", b">>From what"))


def test_messages_without_message_id_and_with_the_same_body_are_not_one() -> None:
    alert = b"From: ups@example.org\r\nDate: Mon, 1 Jan 2024 10:00:00 +0000\r\nSubject: on battery\r\n\r\n"
    spam = b"From: x@spam.example\r\nDate: Tue, 2 Jan 2024 11:00:00 +0000\r\nSubject: win\r\n\r\n"
    assert message_digest(alert) != message_digest(spam)
    # Still the same message after delivery: a Received field added, the Subject tagged.
    delivered = b"Received: from mx.example.org\r\n" + alert.replace(b"Subject: on", b"Subject: [SPAM] on")
    assert message_digest(delivered) == message_digest(alert)


# --- milterd learn ---------------------------------------------------------------------
def test_learn_goes_on_when_a_maildir_message_goes_away(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n[rules]\ndir = ""\n')
    assert main(["db", "upgrade", "-c", str(conf)]) == 0
    box = mailbox.Maildir(str(tmp_path / "Maildir"))
    for n in range(3):
        box.add(f"From: a@example.org\r\nMessage-ID: <{n}@example.org>\r\n\r\nbody {n}\r\n".encode())
    real = learn_command.sources

    def expunged_meanwhile(path: Path) -> Iterator[Any]:
        refs = list(real(path))
        next(iter((tmp_path / "Maildir" / "new").iterdir())).unlink()  # an IMAP client expunges one
        return iter(refs)

    monkeypatch.setattr(learn_command, "sources", expunged_meanwhile)
    capsys.readouterr()
    assert main(["learn", "-c", str(conf), "--json", "--spam", str(tmp_path / "Maildir")]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["learned"] == 2 and summary["unreadable"] == 1 and summary["model"] == {"spam": 2, "ham": 0}
    assert summary["errors"][0].endswith(": No such file or directory")


def test_learn_counts_no_empty_or_compressed_file_as_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "milter.conf"
    conf.write_text(f'[database]\nurl = "sqlite:///{tmp_path / "s.sqlite"}"\n[rules]\ndir = ""\n')
    assert main(["db", "upgrade", "-c", str(conf)]) == 0
    mbox = b"From a@example.org Mon Jan  1 00:00:00 2024\nFrom: a@example.org\nSubject: cheap pills\n\nbuy now\n"
    (tmp_path / "spam.mbox.gz").write_bytes(gzip.compress(mbox))
    (tmp_path / "empty.eml").write_bytes(b"")
    (tmp_path / "one.mbox").write_bytes(mbox)
    capsys.readouterr()
    paths = [str(tmp_path / name) for name in ("spam.mbox.gz", "empty.eml", "one.mbox")]
    assert main(["learn", "-c", str(conf), "--json", "--spam", *paths]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert summary["learned"] == 1 and summary["unreadable"] == 2 and summary["model"] == {"spam": 1, "ham": 0}
    assert all("not a mail message" in line for line in summary["errors"])
