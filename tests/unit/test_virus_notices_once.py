"""Virus notices: sent once per (quarantine row, recipient), and a failed one is tried again.

SQLite in a temporary file; no mail is sent: ``reinject.send`` is replaced by a recorder
that refuses or fails the recipients a test names (but for the envelope sender's test, which
sends to an SMTP sink on loopback).
"""

from __future__ import annotations

import datetime as dt
import smtplib
from pathlib import Path
from typing import Any, Iterator

import pytest
from alembic import command
from sqlalchemy import inspect

from milterd import quarantine as quarantine_module
from milterd.cli import main
from milterd.config import load_config
from milterd.quarantine import Quarantine, QuarantineError
from milterd.store import MessageRecord, Store, StoreError, schema, utcnow
from milterd.store.quarantine import QuarantineStore, QuarantineWrite
from tests.harness import quarantine as quarantine_harness
from tests.harness.milterd import write_config
from tests.harness.postfix import Sink

# The fixtures: a SQLite store in the test's directory (conf) and its quarantine.
conf = quarantine_harness.conf
quarantine = quarantine_harness.quarantine

RAW = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"
LONG_AGO = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)


class Outbox:
    """What would have been mailed, and which recipients the server refuses or cannot be reached for."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.senders: list[str] = []  # the envelope sender of each message, accepted or not
        self.refuse: set[str] = set()
        self.down = False

    def send(self, target: Any, sender: str, recipients: list[str], message: Any, helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        b"".join(message)
        self.senders.append(sender)
        if self.down:
            raise ConnectionRefusedError(111, "Connection refused")
        refused = {r: "450 4.2.0 <r>: Recipient address rejected: try later" for r in recipients if r in self.refuse}
        delivered = {r: "250 2.0.0 Ok" for r in recipients if r not in refused}
        self.sent.extend(delivered)
        return delivered, refused


@pytest.fixture()
def outbox(monkeypatch: pytest.MonkeyPatch) -> Outbox:
    box = Outbox()
    monkeypatch.setattr(quarantine_module.reinject, "send", box.send)
    return box


def add(quarantine: Quarantine, recipients: list[str], virus: bool = True, when: dt.datetime | None = None) -> int:
    """Store one quarantined message as the pipeline does; return its id."""
    when = when or utcnow()
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="QID", sender="a@example.org", recipients=recipients, subject="x", score=13.0)
    row = {
        "time": when, "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
        "sender": "a@example.org", "recipients": recipients, "subject": "x", "score": 13.0,
        "reason": "virus Eicar-Signature" if virus else "spam", "symbols": {"CLAMAV_VIRUS": 5.0} if virus else {"BAYES_SPAM": 5.0},
        "size": len(RAW), "mode": "discard", "release_count": 0, "learned_ham": False,
    }
    quarantine.store.log_message(record, QuarantineWrite(row, lambda: [RAW]))
    return int(quarantine.rows(limit=1)[0]["id"])


def test_a_second_run_over_the_same_window_tells_no_one_again(quarantine: Quarantine, outbox: Outbox) -> None:
    row_id = add(quarantine, ["bob@example.com", "carol@example.com"])
    add(quarantine, ["spam@example.com"], virus=False)
    assert quarantine.notify_virus_recipients(LONG_AGO) == 2
    assert quarantine.get(row_id)["notified"] == ["bob@example.com", "carol@example.com"]
    # cron's next run with an overlapping window, then an administrator's with a longer one
    assert quarantine.notify_virus_recipients(utcnow() - dt.timedelta(hours=1)) == 0
    assert quarantine.notify_virus_recipients(LONG_AGO) == 0
    assert outbox.sent == ["bob@example.com", "carol@example.com"]


def test_only_the_new_rows_are_told_on_the_next_run(quarantine: Quarantine, outbox: Outbox) -> None:
    add(quarantine, ["bob@example.com"])
    assert quarantine.notify_virus_recipients(LONG_AGO) == 1
    add(quarantine, ["bob@example.com", "dave@example.com"])
    assert quarantine.notify_virus_recipients(LONG_AGO) == 2
    assert outbox.sent == ["bob@example.com", "bob@example.com", "dave@example.com"]


def test_a_refused_notice_is_tried_again_and_only_it(quarantine: Quarantine, outbox: Outbox) -> None:
    row_id = add(quarantine, ["bob@example.com", "carol@example.com"])
    outbox.refuse = {"bob@example.com"}
    failed: list[str] = []
    assert quarantine.notify_virus_recipients(LONG_AGO, failed) == 1
    assert len(failed) == 1 and failed[0].startswith("<bob@example.com>: refused")
    assert quarantine.get(row_id)["notified"] == ["carol@example.com"]
    outbox.refuse = set()
    assert quarantine.notify_virus_recipients(LONG_AGO) == 1
    assert quarantine.notify_virus_recipients(LONG_AGO) == 0
    assert outbox.sent == ["carol@example.com", "bob@example.com"]
    assert sorted(quarantine.get(row_id)["notified"]) == ["bob@example.com", "carol@example.com"]


def test_notices_are_tried_again_when_the_server_was_down(quarantine: Quarantine, outbox: Outbox) -> None:
    row_id = add(quarantine, ["bob@example.com", "carol@example.com"])
    outbox.down = True
    with pytest.raises(QuarantineError, match="0 virus notices sent, 2 not"):
        quarantine.notify_virus_recipients(LONG_AGO)
    assert quarantine.get(row_id)["notified"] is None
    outbox.down = False
    assert quarantine.notify_virus_recipients(LONG_AGO) == 2
    assert outbox.sent == ["bob@example.com", "carol@example.com"]


def broken_store(*args: Any) -> Any:
    raise StoreError("cannot write the quarantine: OperationalError: database is locked")


def test_a_notice_that_cannot_be_claimed_is_not_sent_and_the_next_run_sends_it(quarantine: Quarantine, outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    row_id = add(quarantine, ["bob@example.com", "carol@example.com"])
    with monkeypatch.context() as patch:
        patch.setattr(quarantine.repo, "claim_notice", broken_store)
        failed: list[str] = []
        assert quarantine.notify_virus_recipients(LONG_AGO, failed) == 0
        assert outbox.sent == [] and quarantine.get(row_id)["notified"] is None
        assert len(failed) == 2
        assert all("not sent: cannot record it" in line and "database is locked" in line for line in failed)
        with pytest.raises(QuarantineError, match="0 virus notices sent, 2 not: <bob@example.com>: not sent"):
            quarantine.notify_virus_recipients(LONG_AGO)
    assert quarantine.notify_virus_recipients(LONG_AGO) == 2
    assert outbox.sent == ["bob@example.com", "carol@example.com"]


def test_a_failed_notice_that_cannot_be_given_back_is_reported_and_not_retried(quarantine: Quarantine, outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    row_id = add(quarantine, ["bob@example.com"])
    outbox.down = True
    monkeypatch.setattr(quarantine.repo, "release_notice", broken_store)
    failed: list[str] = []
    assert quarantine.notify_virus_recipients(LONG_AGO, failed) == 0
    [line] = failed
    assert line.startswith("<bob@example.com>: not sent (cannot send to 127.0.0.1:9")
    assert "stays recorded as sent" in line and "database is locked" in line and "will not be tried again" in line
    assert quarantine.get(row_id)["notified"] == ["bob@example.com"]
    outbox.down = False
    assert quarantine.notify_virus_recipients(LONG_AGO) == 0
    assert outbox.sent == []


def test_a_run_that_read_the_rows_before_another_claimed_them_sends_nothing_again(conf: Path, quarantine: Quarantine, outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two hosts' digests at the same minute: the second read the rows before the first claimed its notices."""
    row_id = add(quarantine, ["bob@example.com", "carol@example.com"])
    other = quarantine_harness.open_quarantine(conf)  # the other host: its own engine on the same store
    read_rows = other.rows

    def rows_then_the_first_run(**kwargs: Any) -> list[dict[str, Any]]:
        stale = read_rows(**kwargs)
        assert quarantine.notify_virus_recipients(LONG_AGO) == 2
        return stale

    monkeypatch.setattr(other, "rows", rows_then_the_first_run)
    failed: list[str] = []
    assert other.notify_virus_recipients(LONG_AGO, failed) == 0
    assert failed == []
    assert outbox.sent == ["bob@example.com", "carol@example.com"]
    assert quarantine.get(row_id)["notified"] == ["bob@example.com", "carol@example.com"]


@pytest.fixture()
def sink() -> Iterator[Sink]:
    server = Sink().start()
    yield server
    server.stop()


def test_notices_go_out_from_the_null_sender_the_digest_from_report_from(quarantine: Quarantine, sink: Sink) -> None:
    """RFC 3834 3.3: MAIL FROM:<> for the notices (a bounce of one makes none); From: stays report_from."""
    add(quarantine, ["bob@example.com"])
    quarantine.config = quarantine.config.with_changes({"quarantine.release_smtp": f"127.0.0.1:{sink.port}"})
    quarantine.digest(["postmaster@example.org"], LONG_AGO)
    assert quarantine.notify_virus_recipients(LONG_AGO) == 1
    [digest, notice] = sink.wait(2)
    assert digest.recipients == ["postmaster@example.org"] and digest.sender == "postmaster@mx.test"
    assert notice.recipients == ["bob@example.com"] and notice.sender == "<>"  # aiosmtpd keeps the null path as sent
    assert notice.header("From") == ["postmaster@mx.test"] and notice.header("Auto-Submitted") == ["auto-generated"]


def test_the_outbox_sees_the_null_sender_for_notices_only(quarantine: Quarantine, outbox: Outbox) -> None:
    add(quarantine, ["bob@example.com"])
    quarantine.digest(["postmaster@example.org"], LONG_AGO)
    assert quarantine.notify_virus_recipients(LONG_AGO) == 1
    assert outbox.senders == ["postmaster@mx.test", ""]


def test_a_recipient_listed_twice_is_told_once(quarantine: Quarantine, outbox: Outbox) -> None:
    add(quarantine, ["bob@example.com", "bob@example.com"])
    assert quarantine.notify_virus_recipients(LONG_AGO) == 1
    assert outbox.sent == ["bob@example.com"]


def test_released_rows_are_still_skipped(quarantine: Quarantine, outbox: Outbox) -> None:
    row_id = add(quarantine, ["bob@example.com"])
    assert quarantine.repo.claim(row_id, "admin@mx.test", utcnow(), force=False)
    assert quarantine.notify_virus_recipients(LONG_AGO) == 0
    assert outbox.sent == [] and quarantine.get(row_id)["notified"] is None


def test_a_notice_is_claimed_once_until_given_back(quarantine: Quarantine) -> None:
    row_id = add(quarantine, ["bob@example.com", "carol@example.com"])
    repo = QuarantineStore(quarantine.store.engine)
    assert repo.claim_notice(row_id, "bob@example.com")
    assert repo.claim_notice(row_id, "carol@example.com")
    assert not repo.claim_notice(row_id, "bob@example.com")
    assert repo.get(row_id)["notified"] == ["bob@example.com", "carol@example.com"]  # type: ignore[index]
    repo.release_notice(row_id, "bob@example.com")
    repo.release_notice(row_id, "dave@example.com")  # never claimed: nothing to give back
    assert repo.get(row_id)["notified"] == ["carol@example.com"]  # type: ignore[index]
    assert repo.claim_notice(row_id, "bob@example.com")
    repo.release_notice(row_id, "bob@example.com")
    repo.release_notice(row_id, "carol@example.com")
    assert repo.get(row_id)["notified"] is None  # type: ignore[index]


def test_a_notice_of_a_purged_row_is_not_claimed(quarantine: Quarantine) -> None:
    row_id = add(quarantine, ["bob@example.com"])
    assert quarantine.repo.delete([row_id]) == 1
    assert not quarantine.repo.claim_notice(row_id, "bob@example.com")
    quarantine.repo.release_notice(row_id, "bob@example.com")


def test_the_digest_command_run_twice_tells_each_recipient_once(conf: Path, quarantine: Quarantine, outbox: Outbox, capsys: pytest.CaptureFixture[str]) -> None:
    add(quarantine, ["bob@example.com", "carol@example.com"])
    digest = ["-c", str(conf), "quarantine", "digest", "--to", "postmaster@example.org", "--notify-virus-recipients"]
    assert main([*digest, "--since", "1h"]) == 0
    assert capsys.readouterr().out.splitlines() == ["1 messages reported to postmaster@example.org", "2 virus notices sent"]
    assert main([*digest, "--since", "2d"]) == 0
    assert capsys.readouterr().out.splitlines() == ["1 messages reported to postmaster@example.org", "0 virus notices sent"]
    assert outbox.sent == ["postmaster@example.org", "bob@example.com", "carol@example.com", "postmaster@example.org"]


def test_the_digest_command_retries_a_failed_notice(conf: Path, quarantine: Quarantine, outbox: Outbox, capsys: pytest.CaptureFixture[str]) -> None:
    add(quarantine, ["bob@example.com", "carol@example.com"])
    digest = ["-c", str(conf), "quarantine", "digest", "--to", "postmaster@example.org", "--since", "1h", "--notify-virus-recipients"]
    outbox.refuse = {"bob@example.com"}
    assert main(digest) == 1
    out, err = capsys.readouterr()
    assert out.splitlines()[-1] == "1 virus notices sent" and "virus notice to <bob@example.com>: refused" in err
    outbox.refuse = set()
    assert main(digest) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 virus notices sent"
    assert outbox.sent == ["postmaster@example.org", "carol@example.com", "postmaster@example.org", "bob@example.com"]


# --- schema 0004 ---------------------------------------------------------------------------
def test_the_schema_is_at_its_head(quarantine: Quarantine) -> None:
    assert quarantine.store.head_version() == "0007"
    assert quarantine.store.schema_version() == "0007"


def test_rows_from_schema_0003_are_told_once_after_the_upgrade(tmp_path: Path, outbox: Outbox) -> None:
    config = load_config(write_config(tmp_path / "old.conf", {
        "milter": {"hostname": "mx.test"},
        "database": {"url": f"sqlite:///{tmp_path / 'old.sqlite'}"},
        "quarantine": {"release_smtp": "127.0.0.1:9"},
    }))
    store = Store(config.database)
    with store.engine.begin() as connection:
        command.upgrade(store._alembic_config(connection), "0003")
        connection.exec_driver_sql(
            "INSERT INTO quarantine (time, mta_host, queue_id, client_addr, client_name, helo, sender, recipients, subject, score, reason, symbols, size, mode, release_count, learned_ham) "
            "VALUES (?, 'mx', 'Q', '', '', '', 'a@example.org', '[\"bob@example.com\"]', 's', 13, 'virus Eicar-Signature', '{\"CLAMAV_VIRUS\": 5.0}', ?, 'discard', 0, 0)",
            (utcnow().strftime("%Y-%m-%d %H:%M:%S.%f"), len(RAW)),
        )
        connection.exec_driver_sql("INSERT INTO quarantine_chunks (quarantine_id, chunk_ind, data) VALUES (1, 0, ?)", (RAW,))
    assert store.upgrade() == store.head_version()
    old = Quarantine(store, config)
    [row] = old.rows()
    assert row["notified"] is None
    assert old.notify_virus_recipients(LONG_AGO) == 1
    assert old.notify_virus_recipients(LONG_AGO) == 0
    assert outbox.sent == ["bob@example.com"]


def test_the_downgrade_keeps_the_quarantined_messages(quarantine: Quarantine) -> None:
    downgrade_keeps_messages(quarantine)


def downgrade_keeps_messages(quarantine: Quarantine) -> None:
    """0004's downgrade drops the column in place (a batch copy of the table would cascade to its
    chunks), and upgrading again gives it back empty; on SQLite here, on PostgreSQL in tests/integration."""
    row_id = add(quarantine, ["bob@example.com"])
    assert quarantine.repo.claim_notice(row_id, "bob@example.com")
    store = quarantine.store
    with store.engine.begin() as connection:
        command.downgrade(store._alembic_config(connection), "0003")
    assert store.schema_version() == "0003"
    assert "notified" not in {c["name"] for c in inspect(store.engine).get_columns("quarantine")}
    with store.engine.connect() as connection:
        assert connection.execute(schema.quarantine_chunks.select()).all() != []
    assert store.upgrade() == store.head_version()
    assert b"".join(quarantine.message_chunks(quarantine.get(row_id))) == RAW
    assert quarantine.get(row_id)["notified"] is None


def test_smtp_errors_are_failures_too(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that drops the connection (smtplib's error, not OSError) leaves the notice to be tried again."""
    row_id = add(quarantine, ["bob@example.com"])

    def drop(*args: Any, **kwargs: Any) -> Any:
        raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")

    monkeypatch.setattr(quarantine_module.reinject, "send", drop)
    failed: list[str] = []
    assert quarantine.notify_virus_recipients(LONG_AGO, failed) == 0
    assert len(failed) == 1 and quarantine.get(row_id)["notified"] is None
