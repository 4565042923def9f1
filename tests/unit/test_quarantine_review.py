"""Quarantine review: what the sender controls never shapes a notice's headers nor drives the admin's terminal.

SQLite in a temporary file; no mail is sent: ``reinject.send`` is replaced by a recorder.
"""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path
from typing import Any

import pytest

from milterd import cli
from milterd import quarantine as quarantine_module
from milterd.quarantine import Quarantine
from milterd.store import MessageRecord, utcnow
from milterd.store.quarantine import QuarantineWrite
from tests.harness import quarantine as quarantine_harness

# The fixtures: a SQLite store in the test's directory (conf) and its quarantine.
conf = quarantine_harness.conf
quarantine = quarantine_harness.quarantine

RAW = b"From: a@example.org\r\nSubject: =?utf-8?q?x=1B]0;owned=07?=\x1b[2J\r\nX-Evil: \x1b]52;c;cm0gLXJmIH4=\x07\r\n\r\nbody\r\n"


@pytest.fixture()
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[str], bytes]]:
    """What would have been mailed: (envelope sender, recipients, message)."""
    outbox: list[tuple[str, list[str], bytes]] = []

    def send(target: Any, sender: str, recipients: list[str], message: Any, helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        outbox.append((sender, list(recipients), b"".join(message)))
        return {r: "250 2.0.0 Ok" for r in recipients}, {}

    monkeypatch.setattr(quarantine_module.reinject, "send", send)
    return outbox


def add(quarantine: Quarantine, subject: str, recipients: list[str], sender: str = "alice@example.org") -> int:
    """Store one virus-quarantined message as the pipeline does."""
    when = utcnow()
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="QID", sender=sender, recipients=recipients, subject=subject, score=13.0)
    row = {
        "time": when, "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
        "sender": sender, "recipients": recipients, "subject": subject, "score": 13.0, "reason": "virus Eicar-Signature",
        "symbols": {"CLAMAV_VIRUS": 5.0}, "size": len(RAW), "mode": "discard", "release_count": 0, "learned_ham": False,
    }
    quarantine.store.log_message(record, QuarantineWrite(row, lambda: [RAW]))
    return quarantine.rows(limit=1)[0]["id"]


def header_section(message: bytes) -> bytes:
    return message.split(b"\r\n\r\n", 1)[0] + b"\r\n"


# --- notices: no header injection ------------------------------------------------------------
def test_an_encoded_word_in_the_subject_adds_no_header_to_the_notice(quarantine: Quarantine, sent: list[Any]) -> None:
    """The Subject is stored decoded; a second layer of RFC 2047 in it must not become a CR LF in the notice."""
    subject = "=?utf-8?q?hi=0D=0ABcc:_victim@evil.example=0D=0A=0D=0AMIME-Version:_1.0?="
    add(quarantine, subject, ["bob@example.com"])
    assert quarantine.notify_virus_recipients(utcnow().replace(year=2000)) == 1
    [(_, recipients, message)] = sent
    headers = header_section(message)
    assert recipients == ["bob@example.com"]
    assert b"\r\nBcc:" not in headers and headers.count(b"MIME-Version:") == 1
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert "Bcc" not in parsed and str(parsed["Subject"]) == f"Quarantined: {subject}"


def test_a_non_ascii_subject_is_encoded_and_reads_back_whole(quarantine: Quarantine, sent: list[Any]) -> None:
    """RFC 2047: 7-bit header lines; the reader's decoded Subject is exactly the escaped text, spaces included."""
    subject = "Facture n° 42 — échéance dépassée, réglez-la aujourd'hui " * 3 + "\x1b[31m"
    add(quarantine, subject, ["bob@example.com"])
    quarantine.notify_virus_recipients(utcnow().replace(year=2000))
    [(_, _, message)] = sent
    assert header_section(message).isascii()
    assert all(len(line) <= 78 for line in header_section(message).split(b"\r\n"))
    parsed = email.message_from_bytes(message, policy=email.policy.default)
    assert str(parsed["Subject"]) == ("Quarantined: " + subject.replace("\x1b", "\\x1b"))[:200]


def test_an_odd_recipient_gets_its_notice_without_breaking_the_others(quarantine: Quarantine, sent: list[Any]) -> None:
    """A quoted local part is valid SMTP; encoded words in it must neither inject a header nor crash the run."""
    odd = '"=?utf-8?q?a=0D=0ABcc:_x@evil.example?="@example.com'
    add(quarantine, "virus", [odd, "carol@example.com"])
    assert quarantine.notify_virus_recipients(utcnow().replace(year=2000)) == 2
    assert [r for _, [r], _ in sent] == [odd, "carol@example.com"]
    for _, _, message in sent:
        assert b"\r\nBcc:" not in header_section(message)
    assert b"\r\nTo: undisclosed-recipients:;\r\n" in header_section(sent[0][2])
    assert b"\r\nTo: carol@example.com\r\n" in header_section(sent[1][2])


def test_the_digest_subject_stays_plain(quarantine: Quarantine, sent: list[Any]) -> None:
    quarantine.digest(["postmaster@example.org"], utcnow().replace(year=2000))
    [(sender, recipients, message)] = sent
    assert (sender, recipients) == ("postmaster@mx.test", ["postmaster@example.org"])
    assert b"\r\nSubject: milterd quarantine digest for mx.test: 0 messages\r\n" in header_section(message)


# --- terminal output ------------------------------------------------------------------------
SNEAKY = "bob\x1b]0;owned\x07\u009b2J@example.com"


def test_dry_runs_escape_envelope_addresses(conf: Path, quarantine: Quarantine, capsys: Any) -> None:
    row_id = add(quarantine, "hi", [SNEAKY], sender="eve\x1b[2J@example.org")
    assert cli.main(["-c", str(conf), "quarantine", "delete", "--dry-run", str(row_id)]) == 0
    assert cli.main(["-c", str(conf), "quarantine", "purge", "--dry-run", "--older-than", "0s"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u009b" not in out
    assert "eve\\x1b[2J@example.org" in out and "bob\\x1b]0;owned\\x07\\x9b2J@example.com" in out


def test_show_headers_neutralises_control_characters(conf: Path, quarantine: Quarantine, capsysbinary: Any) -> None:
    row_id = add(quarantine, "hi", ["bob@example.com"])
    assert cli.main(["-c", str(conf), "quarantine", "show", "--headers", str(row_id)]) == 0
    out = capsysbinary.readouterr().out
    assert b"\x1b" not in out and b"\x07" not in out
    assert out == b"From: a@example.org\r\nSubject: =?utf-8?q?x=1B]0;owned=07?=\\x1b[2J\r\nX-Evil: \\x1b]52;c;cm0gLXJmIH4=\\x07\r\n"


def test_show_raw_stays_byte_for_byte(conf: Path, quarantine: Quarantine, capsysbinary: Any) -> None:
    row_id = add(quarantine, "hi", ["bob@example.com"])
    assert cli.main(["-c", str(conf), "quarantine", "show", "--raw", str(row_id)]) == 0
    assert capsysbinary.readouterr().out == RAW


def test_list_json_is_ascii_and_escapes_terminal_controls(conf: Path, quarantine: Quarantine, capsysbinary: Any) -> None:
    """RFC 8259 §8.1: UTF-8 whatever the locale; C1 controls and bidi overrides as \\u escapes, not raw."""
    subject = "caf\u00e9 \u009b2J \u202eevil"
    add(quarantine, subject, [SNEAKY])
    assert cli.main(["-c", str(conf), "quarantine", "list", "--json"]) == 0
    out = capsysbinary.readouterr().out
    assert out.isascii()
    [entry] = json.loads(out)
    assert entry["subject"] == subject and entry["recipients"] == [SNEAKY]


def test_release_output_escapes_envelope_addresses(conf: Path, quarantine: Quarantine, sent: list[Any], capsys: Any) -> None:
    row_id = add(quarantine, "hi", [SNEAKY])
    assert cli.main(["-c", str(conf), "quarantine", "release", "--by", "admin", str(row_id)]) == 0
    out = capsys.readouterr().out
    assert [r for _, [r], _ in sent] == [SNEAKY]  # the envelope keeps the address as received
    assert "\x1b" not in out and "\u009b" not in out and "<bob\\x1b]0;owned\\x07\\x9b2J@example.com>: released" in out
