"""Fifteenth session's review of the quarantine's digest and notices: a failed digest holds no virus
notice back, only a virus symbol (never the sender's text in the reason) makes a notice, one mailbox
is told once whatever the case of its address, and ``--to`` takes one bare address.

The re-injection smtpd is the harness's SMTP sink on 127.0.0.1.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from milterd.cli import main
from milterd.quarantine import Quarantine, is_virus
from milterd.store import MessageRecord, utcnow
from milterd.store.quarantine import QuarantineWrite
from tests.harness import quarantine as qh
from tests.harness.postfix import Sink

RAW = b"From: a@example.org\r\nSubject: x\r\n\r\nbody\r\n"


def add(quarantine: Quarantine, recipients: list[str], symbols: dict[str, float], reason: str) -> int:
    """One quarantined message to *recipients*, logged with *symbols* and *reason*; its id."""
    when = utcnow()
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="QID", sender="a@example.org", recipients=recipients, subject="x", score=13.0)
    row = {"time": when, "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
           "sender": "a@example.org", "recipients": recipients, "subject": "x", "score": 13.0, "reason": reason, "symbols": symbols,
           "size": len(RAW), "mode": "discard", "release_count": 0, "learned_ham": False}
    quarantine.store.log_message(record, QuarantineWrite(row, lambda: [RAW]))
    return int(quarantine.rows(limit=1)[0]["id"])


@pytest.fixture()
def sink() -> Iterator[Sink]:
    running = Sink().start()
    yield running
    running.stop()


@pytest.fixture()
def setup(tmp_path: Path, sink: Sink) -> tuple[Path, Quarantine]:
    conf = qh.quarantine_config(tmp_path / "milter.conf", f"sqlite:///{tmp_path / 'q.sqlite'}", release_smtp=f"127.0.0.1:{sink.port}")
    return conf, qh.open_quarantine(conf)


VIRUS = {"CLAMAV_VIRUS": 5.0}


def test_a_refused_digest_still_lets_the_virus_notices_go(setup: tuple[Path, Quarantine], sink: Sink, capsys: pytest.CaptureFixture[str]) -> None:
    conf, quarantine = setup
    add(quarantine, ["bob@example.com"], VIRUS, "Virus found: Eicar-Signature")
    sink.refuse["postmaster@example.org"] = "550 5.1.1 no such user"
    assert main(["-c", str(conf), "quarantine", "digest", "--to", "postmaster@example.org", "--notify-virus-recipients"]) == 1
    out, err = capsys.readouterr()
    assert "550 5.1.1 no such user" in err and "1 virus notices sent" in out
    assert [m.recipients for m in sink.messages] == [["bob@example.com"]]


@pytest.mark.parametrize(
    ("symbols", "reason"),
    [({"ATTACH_EXECUTABLE": 0.0}, "ATTACH_EXECUTABLE: executable: Antivirus-Update.exe"), ({"DMARC_FAIL_QUARANTINE": 3.0}, "DMARC_FAIL_QUARANTINE: virusbulletin.example p=quarantine")],
)
def test_only_a_virus_symbol_makes_a_virus_notice(setup: tuple[Path, Quarantine], sink: Sink, symbols: dict[str, float], reason: str) -> None:
    _, quarantine = setup
    row_id = add(quarantine, ["bob@example.com"], symbols, reason)
    row: dict[str, Any] = next(r for r in quarantine.rows() if r["id"] == row_id)
    assert not is_virus(row)
    assert quarantine.notify_virus_recipients(utcnow() - dt.timedelta(hours=1)) == 0
    assert sink.messages == []


def test_one_mailbox_is_told_once_whatever_the_case_of_its_address(setup: tuple[Path, Quarantine], sink: Sink) -> None:
    _, quarantine = setup
    add(quarantine, ["Bob@example.com", "bob@example.com", "bob@EXAMPLE.com", "carol@example.com"], VIRUS, "Virus found: Eicar-Signature")
    assert quarantine.notify_virus_recipients(utcnow() - dt.timedelta(hours=1)) == 2
    assert sorted(r for m in sink.messages for r in m.recipients) == ["Bob@example.com", "carol@example.com"]
    assert quarantine.notify_virus_recipients(utcnow() - dt.timedelta(hours=1)) == 0  # told: not again


@pytest.mark.parametrize("address", ["alice@example.com, mallory@evil.test", "alice@example.com (mallory@evil.test)", "Alice <mallory@evil.test>", "pm@example.org\r\nRSET", "alice"])
@pytest.mark.parametrize("command", ["release", "digest"])
def test_to_takes_one_bare_address(setup: tuple[Path, Quarantine], sink: Sink, capsys: pytest.CaptureFixture[str], address: str, command: str) -> None:
    conf, quarantine = setup
    row_id = add(quarantine, ["bob@example.com"], {"BAYES_99": 5.0}, "score 13")
    args = ["release", str(row_id)] if command == "release" else ["digest"]
    with pytest.raises(SystemExit) as exited:
        main(["-c", str(conf), "quarantine", *args, "--to", address])
    assert exited.value.code == 2
    assert "expected one bare address" in capsys.readouterr().err
    assert sink.messages == []
