"""Bounds of the quarantine release: a held message released after half of Postfix's queue lifetime
is requeued (``postsuper -r``, a new arrival time) rather than released with ``-H`` (its first deferral
would bounce it); the release history of a 3,000-recipient message stays small however many attempts
fail, without losing who received it; and one error shared by 3,000 recipients is one line.

SQLite in a temporary file; ``postconf`` and ``postsuper`` are not run (``subprocess.run`` replaced),
nor is any mail sent (``reinject.send`` replaced).
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from milterd import cli, reinject
from milterd.quarantine import Quarantine, QuarantineError, claim_attempt, release_state
from milterd.store import MessageRecord, utcnow
from milterd.store.quarantine import QuarantineWrite
from tests.harness.milterd import write_config
from tests.harness.quarantine import open_quarantine

RAW = b"From: a@example.org\r\nSubject: bounds\r\n\r\nbody\r\n"
MANY = [f"user{i:04d}@example.com" for i in range(3000)]


def make_conf(tmp_path: Path, **quarantine: Any) -> Path:
    """A milter.conf with a SQLite store in the test's directory; *quarantine* adds to its [quarantine]."""
    return write_config(tmp_path / "milter.conf", {
        "milter": {"hostname": "mx.test"},
        "database": {"url": f"sqlite:///{tmp_path / 'q.sqlite'}"},
        "quarantine": {"release_smtp": "127.0.0.1:9", "report_from": "postmaster@mx.test", **quarantine},
    })


def add(quarantine: Quarantine, recipients: list[str], mode: str = "discard", age: dt.timedelta = dt.timedelta(0)) -> int:
    """Store one quarantined message as the pipeline does, quarantined *age* ago."""
    when = utcnow() - age
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="4HeldQ", sender="alice@example.org", recipients=recipients, subject="bounds", score=13.0)
    row = {
        "time": when, "mta_host": "mx.test", "queue_id": "4HeldQ", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
        "sender": "alice@example.org", "recipients": recipients, "subject": "bounds", "score": 13.0, "reason": "score 13.0 >= 12",
        "symbols": {"TEST": 13.0}, "size": len(RAW), "mode": mode, "release_count": 0, "learned_ham": False,
    }
    quarantine.store.log_message(record, QuarantineWrite(row, lambda: [RAW]))
    return int(quarantine.rows(limit=1)[0]["id"])


class FakePostfix:
    """``subprocess.run`` of postconf (printing *lifetimes*, or failing) and postsuper (releasing the
    message when it is *held*, else saying nothing, as postsuper does of a queue id it does not find)."""

    def __init__(self, lifetimes: str | None = "5d\n5d\n", held: bool = True) -> None:
        self.lifetimes = lifetimes
        self.held = held
        self.commands: list[list[str]] = []

    def run(self, command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.commands.append(list(command))
        if command[0] == "postconf":
            if self.lifetimes is None:
                return subprocess.CompletedProcess(command, 1, "", "postconf: fatal: open /etc/postfix/main.cf: No such file or directory\n")
            return subprocess.CompletedProcess(command, 0, self.lifetimes, "")
        if command[0] == "postkick":
            return subprocess.CompletedProcess(command, 0, "", "")
        assert command[0] == "postsuper", command
        if not self.held:
            return subprocess.CompletedProcess(command, 0, "", "")
        said = "Requeued: 1 message" if "-r" in command else "Released from hold: 1 message"
        return subprocess.CompletedProcess(command, 0, "", f"postsuper: 4HeldQ: {said.split(':')[0].lower()}\npostsuper: {said}\n")

    @property
    def postsuper(self) -> list[str]:
        """The postsuper command that ran (one)."""
        runs = [c for c in self.commands if c[0] == "postsuper"]
        assert len(runs) == 1, self.commands
        return runs[0]


def hold_release(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, age: dt.timedelta, postfix: FakePostfix, **settings: Any) -> tuple[Any, dict[str, Any]]:
    """Release a message held for *age* with *postfix* in place of the commands; the report and the row after it."""
    monkeypatch.setattr(subprocess, "run", postfix.run)
    quarantine = open_quarantine(make_conf(tmp_path, **settings))
    row_id = add(quarantine, ["bob@example.com"], mode="hold", age=age)
    report = quarantine.release(row_id, who="admin@mx.test")
    return report, quarantine.get(row_id)


# --- 1. hold mode: -r once held for half of the shorter queue lifetime ----------------------------
def test_a_message_held_past_half_the_queue_lifetime_is_requeued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    postfix = FakePostfix("5d\n4d\n")  # bounce_queue_lifetime the shorter: half of it is 2 days
    report, row = hold_release(tmp_path, monkeypatch, dt.timedelta(days=3), postfix, postfix_config="/etc/postfix-out")
    assert postfix.postsuper == ["postsuper", "-c", "/etc/postfix-out", "-r", "4HeldQ", "hold"]
    assert ["postconf", "-c", "/etc/postfix-out", "-h", "maximal_queue_lifetime", "bounce_queue_lifetime"] in postfix.commands
    # Postfix's pickup is woken: the requeued message waited up to a minute in the maildrop (second look).
    assert postfix.commands[-1] == ["postkick", "-c", "/etc/postfix-out", "public", "pickup", "W"]
    assert report.ok and report.command == "postsuper -r 4HeldQ hold"
    assert any("bounce_queue_lifetime" in note and "postsuper -r" in note for note in report.notes)
    assert row["release_result"][-1]["command"] == "postsuper -r 4HeldQ hold" and release_state(row) == "released"


def test_units_of_the_lifetimes_are_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``60m`` is an hour (no unit would be 60 days): 40 minutes are over half of it."""
    postfix = FakePostfix("60m\n2w\n")
    report, _row = hold_release(tmp_path, monkeypatch, dt.timedelta(minutes=40), postfix)
    assert postfix.postsuper == ["postsuper", "-r", "4HeldQ", "hold"] and report.ok


def test_a_message_held_briefly_is_released_with_minus_h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    postfix = FakePostfix("5\n5d\n")  # no unit: days
    report, row = hold_release(tmp_path, monkeypatch, dt.timedelta(hours=1), postfix)
    assert postfix.postsuper == ["postsuper", "-H", "4HeldQ"]
    assert any(c[0] == "postconf" for c in postfix.commands)
    assert report.ok and not report.notes and row["release_result"][-1]["command"] == "postsuper -H 4HeldQ"


@pytest.mark.parametrize("lifetimes", [None, "$maximal_queue_lifetime\n5d\n", "5d\n"])
def test_lifetimes_not_known_requeue_and_say_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lifetimes: str | None) -> None:
    """postconf failing, or printing what is not two time values: -r, the safe side for an old message."""
    postfix = FakePostfix(lifetimes)
    report, row = hold_release(tmp_path, monkeypatch, dt.timedelta(hours=1), postfix)
    assert postfix.postsuper == ["postsuper", "-r", "4HeldQ", "hold"]
    assert report.ok and any("postconf" in note and "postsuper -r" in note for note in report.notes)
    assert row["release_result"][-1]["command"] == "postsuper -r 4HeldQ hold"


def test_a_failed_requeue_names_the_command_and_release_smtp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    postfix = FakePostfix("5d\n5d\n", held=False)
    report, row = hold_release(tmp_path, monkeypatch, dt.timedelta(days=10), postfix)
    assert report.error.startswith("postsuper -r 4HeldQ hold: not in the hold queue") and "release --smtp" in report.error
    assert release_state(row) == "" and row["release_result"][-1]["command"] == "postsuper -r 4HeldQ hold"


# --- 2. the release history stays bounded, and who received the message is kept ----------------------
def test_the_history_of_30_failed_attempts_of_3000_recipients_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    conf = make_conf(tmp_path)
    quarantine = open_quarantine(conf)
    row_id = add(quarantine, MANY)
    delivered = set(MANY[:1000])

    def down(*args: Any, **kwargs: Any) -> Any:
        raise ConnectionRefusedError(111, "Connection refused")

    def partly(target: Any, sender: str, recipients: list[str], message: Any, helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        b"".join(message)
        return ({r: "250 2.0.0 Ok: queued as 4Part" for r in recipients if r in delivered},
                {r: "452 4.2.2 mailbox full" for r in recipients if r not in delivered})

    monkeypatch.setattr(reinject, "send", down)
    for _ in range(15):  # the server down: nothing sent, the claim given back each time
        assert not quarantine.release(row_id, who="admin@mx.test").delivered
    monkeypatch.setattr(reinject, "send", partly)
    assert quarantine.release(row_id, who="admin@mx.test").partial
    monkeypatch.setattr(reinject, "send", down)
    for _ in range(15):  # the retries of the refused ones fail: the partial release keeps its claim
        assert not quarantine.release(row_id, to=MANY[1000:], force=True, who="admin@mx.test").delivered

    row = quarantine.get(row_id)
    history = row["release_result"]
    assert len(json.dumps(history)) < 200_000  # 31 full attempts: over 5 MB
    attempts = [entry for entry in history if "time" in entry]
    left_out = sum(entry.get("left_out", 0) for entry in history)
    assert len(attempts) == 12 and left_out == 19 and len(attempts) + left_out == 31
    assert attempts[0]["delivered"] == {} and attempts[0]["time"] < attempts[1]["time"]  # the first attempt is kept
    assert set(attempts[1]["delivered"]) == delivered  # the partial release, though not among the last 10
    last = attempts[-1]
    assert len(last["refused"]) == 20 and sum(last["refused_more"].values()) == 1980
    # Who received it reads as before: the claim's attempt, whole.
    assert release_state(row) == "released" and row["release_count"] == 1
    claimed = claim_attempt(row)
    assert claimed is not None and set(claimed["delivered"]) == delivered and set(claimed["refused"]) <= set(MANY[1000:])
    with pytest.raises(QuarantineError, match="already released"):
        quarantine.release(row_id, who="admin@mx.test")

    status = cli.main(["-c", str(conf), "quarantine", "show", str(row_id)])
    out, _err = capsys.readouterr()
    assert status == 0 and len(out.splitlines()) < 100  # 99,043 lines before
    assert "1,000 recipients: <user0000@example.com>" in out and "(+980 more): 250 2.0.0 Ok: queued as 4Part" in out
    assert "(14 more failed attempt(s), not kept)" in out and "(5 more failed attempt(s), not kept)" in out


# --- 3. one line for recipients sharing one error ------------------------------------------------------
def test_a_configuration_error_for_3000_recipients_is_one_line(tmp_path: Path, capsys: Any) -> None:
    conf = make_conf(tmp_path, release_user="milterd", release_password_file=str(tmp_path / "missing"))
    row_id = add(open_quarantine(conf), MANY)
    status = cli.main(["-c", str(conf), "quarantine", "release", str(row_id)])
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert status == 1 and out == ""
    assert len(lines) <= 3, lines[:5]
    not_released = [line for line in lines if "NOT released" in line]
    assert len(not_released) == 1
    assert not_released[0].startswith(f"{row_id}: NOT released to 3,000 recipients: <user0000@example.com>, <user0001@example.com>")
    assert "(+2,995 more)" in not_released[0] and "release_password_file" in not_released[0]
