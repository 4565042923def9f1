"""Release outcomes the old report got wrong: the connection lost after the final dot (the outcome is
unknown, not "nothing was released"), the store failing after the server took the message (who got it
must still be said), and a claim with no recorded outcome (not "released").

SQLite in a temporary file; the re-injection smtpd is a scripted SMTP server on loopback that can
drop the connection, or fall silent, at a chosen point.
"""

from __future__ import annotations

import json
import smtplib
import socket
from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd import cli, reinject
from milterd import quarantine as quarantine_module
from milterd.quarantine import Quarantine, QuarantineError
from milterd.store import MessageRecord, StoreError, utcnow
from milterd.store.quarantine import QuarantineStore, QuarantineWrite
from tests.harness import quarantine as quarantine_harness
from tests.harness.smtpserver import ScriptedServer

# The fixture: the quarantine of the module's conf (its store made current).
quarantine = quarantine_harness.quarantine

RAW = b"From: a@example.org\r\nSubject: outcome\r\n\r\nbody\r\n.dot\r\n"
QUEUE_ID = "4QID42xyz"


class ScriptedSMTP(ScriptedServer):
    """An SMTP server on 127.0.0.1 that answers each connection by *mode*:

    ``accept`` (250 queued as QUEUE_ID after the dot), ``close_after_dot`` (reads the whole
    message, then drops the connection without a reply), ``silent_after_dot`` (reads it, never
    answers), ``close_at_data`` (drops the connection at DATA: nothing sent).  ``refuse`` maps
    recipients to their RCPT refusal; ``messages`` keeps every message read up to its final dot.
    """

    def __init__(self, mode: str = "accept") -> None:
        super().__init__()
        self.mode = mode
        self.refuse: dict[str, str] = {}
        self.messages: list[bytes] = []
        self.start()

    def session(self, connection: socket.socket) -> None:
        reader = connection.makefile("rb")
        connection.sendall(b"220 fake ESMTP\r\n")
        while True:
            line = reader.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb in (b"EHLO", b"HELO"):
                connection.sendall(b"250-fake\r\n250 8BITMIME\r\n")
            elif verb == b"MAIL":
                connection.sendall(b"250 2.1.0 Ok\r\n")
            elif verb == b"RCPT":
                address = line.decode().split(":", 1)[1].strip().strip("<>")
                connection.sendall((self.refuse.get(address, "250 2.1.5 Ok") + "\r\n").encode())
            elif verb == b"DATA":
                if self.mode == "close_at_data":
                    return
                connection.sendall(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                data = b""
                while not data.endswith(b"\r\n.\r\n"):
                    piece = reader.readline()
                    if not piece:
                        return
                    data += piece
                self.messages.append(data)
                if self.mode == "close_after_dot":
                    return
                if self.mode == "silent_after_dot":
                    self._stop.wait(30)
                    return
                connection.sendall(f"250 2.0.0 Ok: queued as {QUEUE_ID}\r\n".encode())
            elif verb == b"QUIT":
                connection.sendall(b"221 2.0.0 Bye\r\n")
                return
            else:
                connection.sendall(b"250 Ok\r\n")


@pytest.fixture()
def server() -> Iterator[ScriptedSMTP]:
    smtpd = ScriptedSMTP()
    yield smtpd
    smtpd.stop()


@pytest.fixture()
def conf(tmp_path: Path, server: ScriptedSMTP) -> Path:
    """A milter.conf with a SQLite store in the test's directory, releasing to the test's SMTP server."""
    return quarantine_harness.quarantine_config(tmp_path / "milter.conf", f"sqlite:///{tmp_path / 'q.sqlite'}", release_smtp=f"127.0.0.1:{server.port}")


def add(quarantine: Quarantine, recipients: list[str] | None = None) -> int:
    """Store one quarantined message as the pipeline does (log row and quarantine row, one transaction)."""
    recipients = recipients or ["bob@example.com", "carol@example.com"]
    when = utcnow()
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="QID", sender="alice@example.org", recipients=recipients, subject="outcome", score=13.0)
    row = {
        "time": when, "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
        "sender": "alice@example.org", "recipients": recipients, "subject": "outcome", "score": 13.0, "reason": "score 13.0 >= 12",
        "symbols": {"TEST": 13.0}, "size": len(RAW), "mode": "discard", "release_count": 0, "learned_ham": False,
    }
    quarantine.store.log_message(record, QuarantineWrite(row, lambda: [RAW]))
    return int(quarantine.rows(limit=1)[0]["id"])


def release_state(row: dict[str, Any]) -> str:
    """The row's release state (looked up when called: this file also runs against the code before it)."""
    return str(quarantine_module.release_state(row))  # type: ignore[attr-defined,unused-ignore]


def run(capsys: Any, conf: Path, *args: str) -> tuple[int, str, str]:
    status = cli.main(["-c", str(conf), "quarantine", *args])
    out, err = capsys.readouterr()
    return status, out, err


# --- 1. the connection lost after the final dot ---------------------------------------------
def test_a_connection_lost_after_the_final_dot_is_an_unknown_outcome_that_keeps_the_claim(quarantine: Quarantine, server: ScriptedSMTP) -> None:
    """The server read the whole message, then the connection dropped before its reply: it may have
    queued it. Not "nothing was released" (a plain retry would deliver it twice): unknown, and claimed."""
    row_id = add(quarantine, ["bob@example.com", "carol@example.com", "gone@example.com"])
    server.refuse["gone@example.com"] = "550 5.1.1 no such user"
    server.mode = "close_after_dot"
    report = quarantine.release(row_id, who="admin@mx.test")
    assert len(server.messages) == 1  # the final dot went out
    row = quarantine.get(row_id)
    assert row["released_at"] is not None and row["released_by"] == "admin@mx.test" and row["release_count"] == 0
    assert not report.ok and not report.delivered
    assert set(report.unknown) == {"bob@example.com", "carol@example.com"}
    assert report.refused == {"gone@example.com": "550 5.1.1 no such user"}  # refused at RCPT: that one is known
    assert report.error.startswith("outcome unknown: the connection was lost after the message was sent")
    assert "check the server's log (queue id not known) before releasing again" in report.error and "--force" in report.error
    assert set(row["release_result"][-1]["unknown"]) == {"bob@example.com", "carol@example.com"}
    assert release_state(row) == "unknown"
    with pytest.raises(QuarantineError, match="outcome is unknown.*check the server's log.*--force"):
        quarantine.release(row_id, who="admin@mx.test")
    assert len(server.messages) == 1
    server.mode = "accept"
    assert quarantine.release(row_id, who="admin@mx.test", force=True, to=["bob@example.com"]).ok
    assert release_state(quarantine.get(row_id)) == "released"


def test_the_cli_says_the_outcome_is_unknown_not_that_nothing_was_released(conf: Path, quarantine: Quarantine, server: ScriptedSMTP, capsys: Any) -> None:
    row_id = add(quarantine)
    server.mode = "close_after_dot"
    status, _out, err = run(capsys, conf, "release", "--by", "admin", str(row_id))
    assert status == 1
    assert "<bob@example.com>: OUTCOME UNKNOWN" in err and "<carol@example.com>: OUTCOME UNKNOWN" in err
    assert "outcome unknown: the connection was lost after the message was sent" in err
    assert "nothing was released" not in err
    status, out, _err = run(capsys, conf, "show", str(row_id))
    assert status == 0 and "outcome unknown" in out and "OUTCOME UNKNOWN" in out


def test_a_timeout_after_the_final_dot_is_an_unknown_outcome(quarantine: Quarantine, server: ScriptedSMTP, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server fell silent after the dot (a timeout): as uncertain as a dropped connection."""
    row_id = add(quarantine)
    server.mode = "silent_after_dot"
    real_send = reinject.send

    def impatient(*args: Any, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        return real_send(*args, **{**kwargs, "timeout": 0.5})

    monkeypatch.setattr(quarantine_module.reinject, "send", impatient)
    report = quarantine.release(row_id, who="admin@mx.test")
    assert quarantine.get(row_id)["released_at"] is not None
    assert set(report.unknown) == {"bob@example.com", "carol@example.com"} and "timed out" in report.error
    assert release_state(quarantine.get(row_id)) == "unknown"


def test_send_says_whether_the_final_dot_went_out(server: ScriptedSMTP) -> None:
    target = reinject.Target(host="127.0.0.1", port=server.port)
    for mode, sent in (("close_at_data", False), ("close_after_dot", True), ("silent_after_dot", True)):
        server.mode = mode
        progress = reinject.Progress()
        with pytest.raises((OSError, smtplib.SMTPException)):
            reinject.send(target, "a@example.org", ["bob@example.com"], [RAW], "mx.test", timeout=0.5, progress=progress)
        assert progress.data_sent is sent and progress.accepted == ["bob@example.com"], mode


def test_a_failure_before_the_final_dot_still_gives_the_claim_back(conf: Path, quarantine: Quarantine, server: ScriptedSMTP, capsys: Any) -> None:
    """The connection dropped at DATA: nothing went out, the message stays releasable, as before."""
    row_id = add(quarantine)
    server.mode = "close_at_data"
    report = quarantine.release(row_id, who="admin@mx.test")
    assert not report.delivered and not report.unknown and set(report.refused) == {"bob@example.com", "carol@example.com"}
    assert "outcome unknown" not in report.error and server.messages == []
    assert quarantine.get(row_id)["released_at"] is None
    status, _out, err = run(capsys, conf, "release", "--by", "admin", str(row_id))
    assert status == 1 and "nothing was released; the message stays in the quarantine" in err and "OUTCOME UNKNOWN" not in err
    server.mode = "accept"
    assert quarantine.release(row_id, who="admin@mx.test").ok


def test_an_interrupt_after_the_final_dot_keeps_the_claim(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while waiting for the server's reply to the dot: the message may be queued, so the
    claim is not given back (it was: a plain release would have sent it again)."""
    row_id = add(quarantine)

    def interrupted_after_dot(target: Any, sender: str, recipients: list[str], message: Any, helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        progress = kwargs["progress"]
        progress.accepted.extend(recipients)
        progress.in_flight.extend(recipients)  # the transaction whose final dot was sent
        progress.data_sent = True
        raise KeyboardInterrupt

    monkeypatch.setattr(quarantine_module.reinject, "send", interrupted_after_dot)
    with pytest.raises(KeyboardInterrupt):
        quarantine.release(row_id, who="admin@mx.test")
    row = quarantine.get(row_id)
    assert row["released_by"] == "admin@mx.test" and row["release_count"] == 0
    assert release_state(row) == "unknown" and "interrupted after the message was sent" in row["release_result"][-1]["error"]


# --- 2. the store failing after the server accepted the message ------------------------------
def test_a_store_failure_after_delivery_says_who_received_it(conf: Path, quarantine: Quarantine, server: ScriptedSMTP, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    first, second = add(quarantine), add(quarantine, ["dave@example.com"])
    real_record = QuarantineStore.record_release
    failures = [StoreError("cannot write the quarantine: OperationalError: database is locked")]

    def record_release(self: QuarantineStore, *args: Any, **kwargs: Any) -> None:
        if failures:
            raise failures.pop()
        real_record(self, *args, **kwargs)

    monkeypatch.setattr(QuarantineStore, "record_release", record_release)
    status, out, err = run(capsys, conf, "release", "--by", "admin", str(first), str(second))
    assert status == 1
    assert (
        f"milterd: {first}: delivered to bob@example.com, carol@example.com (queue id {QUEUE_ID}) but not recorded: "
        "cannot write the quarantine: OperationalError: database is locked" in err
    )
    assert f"{first}: <bob@example.com>: released" in out
    assert f"{second}: <dave@example.com>: released" in out  # the next id was still released
    assert len(server.messages) == 2
    # The claim stayed: a plain release cannot send it a second time.
    assert release_state(quarantine.get(first)) == "unrecorded"
    status, _out, err = run(capsys, conf, "release", "--by", "admin", str(first))
    assert status == 1 and "outcome was not recorded" in err and len(server.messages) == 2


def test_a_store_failure_after_delivery_is_in_the_report(quarantine: Quarantine, server: ScriptedSMTP, monkeypatch: pytest.MonkeyPatch) -> None:
    row_id = add(quarantine)

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise StoreError("cannot write the quarantine: disk full")

    monkeypatch.setattr(quarantine.repo, "record_release", broken)
    report = quarantine.release(row_id, who="admin@mx.test")
    assert set(report.delivered) == {"bob@example.com", "carol@example.com"} and not report.ok
    assert report.record_error.startswith(f"delivered to bob@example.com, carol@example.com (queue id {QUEUE_ID}) but not recorded: cannot write the quarantine: disk full")


# --- 3. a claim with no recorded outcome ---------------------------------------------------
def claim_only(quarantine: Quarantine, row_id: int, who: str = "admin@mx.test", force: bool = False) -> None:
    """What a release killed between its claim and its record leaves behind."""
    assert quarantine.repo.claim(row_id, who, utcnow(), force)


def test_show_and_list_tell_a_claim_without_an_outcome_from_a_release(conf: Path, quarantine: Quarantine, capsys: Any) -> None:
    row_id = add(quarantine)
    claim_only(quarantine, row_id)
    status, out, _err = run(capsys, conf, "show", str(row_id))
    assert status == 0
    [line] = [line for line in out.splitlines() if line.startswith("released:")]
    assert line.startswith("released:   claimed by admin@mx.test at ") and " UTC, outcome not recorded (release --force to send again)" in line
    assert "time(s)" not in line
    status, out, _err = run(capsys, conf, "list")
    assert status == 0 and "unrecorded" in out
    status, out, _err = run(capsys, conf, "list", "--json")
    assert json.loads(out)[0]["release_state"] == "unrecorded"
    with pytest.raises(QuarantineError, match="outcome was not recorded: use --force"):
        quarantine.release(row_id, who="admin@mx.test")


def test_a_killed_forced_release_after_a_delivered_one_is_not_shown_as_released(conf: Path, quarantine: Quarantine, server: ScriptedSMTP, capsys: Any) -> None:
    row_id = add(quarantine)
    assert quarantine.release(row_id, who="admin@mx.test").ok
    status, out, _err = run(capsys, conf, "show", str(row_id))
    assert "by admin@mx.test (1 time(s))" in out
    claim_only(quarantine, row_id, who="other@mx2.test", force=True)
    status, out, _err = run(capsys, conf, "show", str(row_id))
    [line] = [line for line in out.splitlines() if line.startswith("released:")]
    assert "claimed by other@mx2.test at " in line and "outcome not recorded (release --force to send again)" in line
    assert "delivered 1 time(s) before" in line
    assert release_state(quarantine.get(row_id)) == "unrecorded"


def test_the_digest_does_not_call_a_bare_claim_released(quarantine: Quarantine) -> None:
    row_id = add(quarantine)
    claim_only(quarantine, row_id)
    text = quarantine_module.format_digest(quarantine.rows(), quarantine.config, utcnow().replace(year=2000), utcnow())
    assert "outcome not recorded" in text and "  released " not in text

