"""Quarantine, fourth review: the retention purge against a release in progress and against large
messages, a copy the spool gave back short, teaching ham after a release, a forced release racing
another one, and hostile bytes on the way back out.

SQLite in a temporary file; no mail is sent: ``reinject.send`` is replaced by a stand-in that
reads the message as the real one would.
"""

from __future__ import annotations

import datetime as dt
import re
import smtplib
import socket
import threading
from pathlib import Path
from typing import Any, Iterable

import pytest
from sqlalchemy import event, func, select

from milterd import cli
from milterd import quarantine as quarantine_module
from milterd.quarantine import Quarantine, release_state
from milterd.reinject import Target, data_lines, send
from milterd.store import MessageRecord, StoreError, schema, utcnow
from milterd.store import quarantine as store_quarantine
from milterd.store.quarantine import CHUNK_SIZE, QuarantineWrite
from tests.harness import quarantine as quarantine_harness

# The fixtures: a SQLite store in the test's directory (conf) and its quarantine.
conf = quarantine_harness.conf
quarantine = quarantine_harness.quarantine

RAW = b"From: a@example.org\r\nSubject: fourth review\r\n\r\nbody\r\n.\r\nafter the dot\r\n"


def row_values(raw: bytes, when: dt.datetime, recipients: list[str]) -> dict[str, Any]:
    return {
        "time": when, "mta_host": "mx.test", "queue_id": "QID", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
        "sender": "alice@example.org", "recipients": recipients, "subject": "fourth review", "score": 13.0, "reason": "score 13.0 >= 12",
        "symbols": {"TEST": 13.0}, "size": len(raw), "mode": "discard", "release_count": 0, "learned_ham": False,
    }


def add(quarantine: Quarantine, raw: bytes = RAW, age: dt.timedelta = dt.timedelta(0), recipients: list[str] | None = None, split: bool = True) -> int:
    """Store one quarantined message as the pipeline does (log row and quarantine row, one transaction);
    in full pieces of CHUNK_SIZE unless *split* (a first piece of 7 bytes, as the header section)."""
    when = utcnow() - age
    recipients = recipients or ["bob@example.com"]
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="QID", sender="alice@example.org", recipients=recipients, subject="fourth review", score=13.0)
    chunks = [raw[:7], raw[7:]] if split else [raw]
    quarantine.store.log_message(record, QuarantineWrite(row_values(raw, when, recipients), lambda: chunks))
    return int(quarantine.rows(limit=1)[0]["id"])


def delivering(sent: list[bytes]) -> Any:
    """A stand-in for reinject.send that reads the whole message, keeps it, and reports every recipient delivered."""

    def send(target: Any, sender: str, recipients: list[str], message: Iterable[bytes], helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        sent.append(b"".join(message))
        return {r: "250 2.0.0 Ok: queued as 4ABC" for r in recipients}, {}

    return send


# --- 1. the retention purge and a release in progress ------------------------------------------
def test_a_purge_during_a_release_leaves_the_message_whole(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hourly purge ran while an administrator's release of a message past its retention was
    reading it from the store (the claim holds no lock): it deleted the message under the release,
    which failed ("0 bytes stored") and left nothing to release again."""
    row_id = add(quarantine, age=dt.timedelta(days=40))
    sent: list[bytes] = []

    def send(target: Any, sender: str, recipients: list[str], message: Iterable[bytes], helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        pieces = iter(message)
        first = next(pieces)  # the X-Milterd-Released line; the stored message is read from here on
        quarantine.purge(utcnow() - dt.timedelta(days=30))
        sent.append(first + b"".join(pieces))
        return {r: "250 2.0.0 Ok: queued as 4ABC" for r in recipients}, {}

    monkeypatch.setattr(quarantine_module.reinject, "send", send)
    report = quarantine.release(row_id, who="admin@mx.test")
    assert report.ok, report.error
    assert sent and sent[0].split(b"\r\n", 1)[1] == RAW
    row = quarantine.get(row_id)
    assert release_state(row) == "released" and row["release_count"] == 1
    # Once the release can no longer be running, the purge takes it.
    assert quarantine.repo.purge(utcnow() - dt.timedelta(days=30), now=utcnow() + dt.timedelta(days=2)) == 1
    assert quarantine.rows() == []


def test_a_purge_keeps_what_a_release_just_claimed_and_dry_run_says_so(quarantine: Quarantine) -> None:
    old = add(quarantine, age=dt.timedelta(days=40))
    claimed = add(quarantine, age=dt.timedelta(days=40))
    assert quarantine.repo.claim(claimed, "admin@mx.test", utcnow(), force=False)
    cutoff = utcnow() - dt.timedelta(days=30)
    assert quarantine.purge(cutoff) == 1
    assert [r["id"] for r in quarantine.rows()] == [claimed] and claimed != old
    later = add(quarantine, age=dt.timedelta(days=40))
    assert [r["id"] for r in quarantine.purge_candidates(cutoff)] == [later]


# --- 2. the retention purge and large messages --------------------------------------------------
def purge_large_messages(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> int:
    """Purge two large and three small old messages with the bounds made 4 pieces, asserting that no
    transaction deleted more and that only the recent large one is left; its id (shared with the
    PostgreSQL test)."""
    monkeypatch.setattr(store_quarantine, "PURGE_BYTES", 4 * CHUNK_SIZE)
    monkeypatch.setattr(store_quarantine, "PURGE_CHUNKS", 4)
    head = b"From: a@example.org\r\n\r\n"
    big = head + b"x" * (12 * CHUNK_SIZE - len(head))  # 12 pieces
    small = head + b"y" * (CHUNK_SIZE - len(head))  # 1 piece
    for raw in (big, small, small, small, big):
        add(quarantine, raw=raw, age=dt.timedelta(days=40), split=False)
    kept = add(quarantine, raw=big, age=dt.timedelta(days=29), split=False)
    per_transaction: list[int] = [0]

    def after(_conn: Any, cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
        if statement.lstrip().upper().startswith("DELETE FROM QUARANTINE_CHUNKS"):
            per_transaction[-1] += cursor.rowcount

    def commit(_conn: Any) -> None:
        per_transaction.append(0)

    event.listen(quarantine.store.engine, "after_cursor_execute", after)
    event.listen(quarantine.store.engine, "commit", commit)
    try:
        assert quarantine.purge(utcnow() - dt.timedelta(days=30)) == 5
    finally:
        event.remove(quarantine.store.engine, "after_cursor_execute", after)
        event.remove(quarantine.store.engine, "commit", commit)
    assert sum(per_transaction) == 12 + 1 + 1 + 1 + 12
    assert max(per_transaction) <= 4, per_transaction
    assert [r["id"] for r in quarantine.rows()] == [kept]
    assert quarantine.repo.chunk_count(kept) == 12
    return kept


def test_a_purge_of_large_messages_deletes_a_bounded_amount_per_transaction(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    """100 messages per transaction whatever their size: 400 MB of pieces held SQLite's write lock
    (which every worker's log row waits for) for 2 s here, and 100 quarantined 50 MB messages
    would have held it far past the workers' busy timeout (their mail tempfailed)."""
    kept = purge_large_messages(quarantine, monkeypatch)
    with quarantine.store.engine.connect() as connection:
        left = connection.execute(select(schema.quarantine_chunks.c.quarantine_id, func.count()).group_by(schema.quarantine_chunks.c.quarantine_id)).all()
    assert [tuple(row) for row in left] == [(kept, 12)]


# --- 3. a copy the spool gave back short ---------------------------------------------------------
def test_a_copy_shorter_than_the_message_is_never_committed(quarantine: Quarantine) -> None:
    """The spool read back fewer bytes than were received: the row was committed anyway (its size
    "corrected" to what was stored) and the message discarded on a copy lacking its end. Now the
    transaction fails (StoreError: the pipeline answers 451) and nothing is written."""
    when = utcnow()
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="SHORT", sender="alice@example.org", recipients=["bob@example.com"], subject="short", score=13.0)
    with pytest.raises(StoreError):
        quarantine.store.log_message(record, QuarantineWrite(row_values(RAW, when, ["bob@example.com"]), lambda: [RAW[:-10]]))
    assert quarantine.rows() == []
    assert [m for m in quarantine.store.messages() if m["queue_id"] == "SHORT"] == []


# --- 4. teaching ham after the release ----------------------------------------------------------
def test_an_interrupt_while_teaching_ham_leaves_the_release_recorded(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during spamd's TELL (or the classifier), after the message was delivered: nothing was
    recorded, and the message read "claimed, outcome not recorded (release --force to send again)"."""
    row_id = add(quarantine)
    sent: list[bytes] = []
    monkeypatch.setattr(quarantine_module.reinject, "send", delivering(sent))

    def learn(self: Quarantine, row: dict[str, Any], label: str) -> str:
        raise KeyboardInterrupt

    monkeypatch.setattr(Quarantine, "learn", learn)
    with pytest.raises(KeyboardInterrupt):
        quarantine.release(row_id, who="admin@mx.test", ham=True)
    row = quarantine.get(row_id)
    assert len(sent) == 1
    assert release_state(row) == "released" and row["release_count"] == 1


def test_a_failure_while_teaching_ham_neither_undoes_nor_hides_the_release(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    """An unexpected error from the classifier escaped release() after the delivery: a traceback,
    no record, and the message claimed with no outcome."""
    row_id = add(quarantine)
    sent: list[bytes] = []
    monkeypatch.setattr(quarantine_module.reinject, "send", delivering(sent))

    def learn(self: Quarantine, row: dict[str, Any], label: str) -> str:
        raise RuntimeError("classifier broken")

    monkeypatch.setattr(Quarantine, "learn", learn)
    report = quarantine.release(row_id, who="admin@mx.test", ham=True)
    assert report.delivered == {"bob@example.com": "250 2.0.0 Ok: queued as 4ABC"}
    assert not report.ok and "classifier broken" in report.error
    row = quarantine.get(row_id)
    assert release_state(row) == "released" and row["release_count"] == 1 and not row["learned_ham"]
    assert len(sent) == 1


def test_a_ham_release_still_records_that_it_was_learned(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    row_id = add(quarantine)
    monkeypatch.setattr(quarantine_module.reinject, "send", delivering([]))
    report = quarantine.release(row_id, who="admin@mx.test", ham=True)
    assert report.ok and report.learned_ham, (report.error, report.notes)
    row = quarantine.get(row_id)
    assert row["learned_ham"] and release_state(row) == "released"


# --- 5. a forced release racing another release --------------------------------------------------
def test_a_failed_forced_release_does_not_give_back_a_claim_older_than_a_delivery(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    """B forces a release; between B reading the row and claiming it, A's plain release delivers.
    B's send fails, and B gave back the claim it had read (none): the message, delivered by A,
    read as never released, and the next plain release delivered it a second time."""
    row_id = add(quarantine)
    other = Quarantine(quarantine.store, quarantine.config)  # A, on another host
    calls: list[str] = []

    def send(target: Any, sender: str, recipients: list[str], message: Iterable[bytes], helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        calls.append("send")
        if len(calls) == 1:
            return {r: "250 2.0.0 Ok: queued as 4ABC" for r in recipients}, {}
        raise OSError("connection refused")

    monkeypatch.setattr(quarantine_module.reinject, "send", send)
    real_claim = quarantine.repo.claim
    raced: list[bool] = []

    def claim(*args: Any, **kwargs: Any) -> bool:
        if not raced:
            raced.append(True)
            assert other.release(row_id, who="a@mx1.test").ok
        return bool(real_claim(*args, **kwargs))

    monkeypatch.setattr(quarantine.repo, "claim", claim)
    report = quarantine.release(row_id, who="b@mx2.test", force=True)
    assert not report.delivered
    row = quarantine.get(row_id)
    assert release_state(row) == "released" and row["released_by"] == "a@mx1.test" and row["release_count"] == 1
    with pytest.raises(quarantine_module.QuarantineError, match="already released"):
        other.release(row_id, who="c@mx3.test")
    assert len(calls) == 2


# --- 6. a partial release ------------------------------------------------------------------------
def test_a_partial_release_names_the_exact_retry_that_spares_those_who_received_it(conf: Path, quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """RCPT 550 for one of three: the two others have it. The hint said "retry the others with
    --force --to ADDR…", and the plain --force an administrator types sends it to all three again."""
    row_id = add(quarantine, recipients=["bob@example.com", "gone@example.com", "carol@example.com"])

    def send(target: Any, sender: str, recipients: list[str], message: Iterable[bytes], helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        b"".join(message)
        refused = {r: "550 5.1.1 no such user" for r in recipients if r.startswith("gone@")}
        return {r: "250 2.0.0 Ok: queued as 4ABC" for r in recipients if r not in refused}, refused

    monkeypatch.setattr(quarantine_module.reinject, "send", send)
    assert cli.main(["-c", str(conf), "quarantine", "release", str(row_id)]) == 1
    err = capsys.readouterr().err
    assert f"milterd -c {conf} quarantine release {row_id} --force --to gone@example.com\n" in err, err
    row = quarantine.get(row_id)
    assert release_state(row) == "released" and row["release_result"][-1]["refused"] == {"gone@example.com": "550 5.1.1 no such user"}


# --- 7. a message over the re-injection smtpd's size limit -------------------------------------
class LimitedSMTP:
    """One SMTP session on loopback from a server that announces ``SIZE 1000`` and refuses a larger
    declared SIZE at MAIL (as Postfix's message_size_limit); ``log`` keeps the commands it read."""

    def __init__(self) -> None:
        self.log: list[bytes] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._listener.accept()
        with connection, connection.makefile("rb") as reader:
            connection.sendall(b"220 limited ESMTP\r\n")
            for line in reader:
                self.log.append(line)
                verb = line[:4].upper()
                if verb == b"EHLO":
                    connection.sendall(b"250-limited\r\n250-8BITMIME\r\n250 SIZE 1000\r\n")
                elif verb == b"MAIL":
                    declared = re.search(rb"SIZE=(\d+)", line)
                    refused = declared and int(declared.group(1)) > 1000
                    connection.sendall(b"552 5.3.4 Message size exceeds fixed limit\r\n" if refused else b"250 2.1.0 Ok\r\n")
                elif verb == b"QUIT":
                    connection.sendall(b"221 Bye\r\n")
                    return
                else:
                    connection.sendall(b"250 Ok\r\n")

    def close(self) -> None:
        self._thread.join(10)
        self._listener.close()


def test_a_message_over_the_servers_size_limit_is_refused_before_it_is_read() -> None:
    """No SIZE at MAIL: a 50 MB message over Postfix's message_size_limit was read from the store
    and streamed whole before the 552 came; now the server refuses it at MAIL."""
    server = LimitedSMTP()
    read: list[int] = []

    def message() -> Iterable[bytes]:
        for _ in range(100):
            read.append(1)
            yield b"x" * 1000 + b"\r\n"

    try:
        delivered, refused = send(Target(host="127.0.0.1", port=server.port), "a@example.org", ["b@example.com"], message(), "mx.test", timeout=10, size=100_200)
    finally:
        server.close()
    assert delivered == {} and refused == {"b@example.com": "552 5.3.4 Message size exceeds fixed limit"}
    assert read == [] and not any(line.upper().startswith(b"DATA") for line in server.log)
    assert b"SIZE=100200" in server.log[1]


def test_a_release_declares_its_size(quarantine: Quarantine, monkeypatch: pytest.MonkeyPatch) -> None:
    row_id = add(quarantine)
    sizes: list[int] = []

    def send(target: Any, sender: str, recipients: list[str], message: Iterable[bytes], helo: str, **kwargs: Any) -> tuple[dict[str, str], dict[str, str]]:
        sizes.append(len(b"".join(message)) - kwargs["size"])
        return {r: "250 2.0.0 Ok" for r in recipients}, {}

    monkeypatch.setattr(quarantine_module.reinject, "send", send)
    assert quarantine.release(row_id, who="admin@mx.test").ok
    assert sizes == [0]


# --- 8. hostile bytes on the way out (found sound; kept as a regression test) -------------------
def unstuffed(stream: bytes) -> bytes:
    """What an SMTP server stores from a DATA stream: the final dot taken off, leading dots undoubled."""
    assert stream.endswith(b"\r\n.\r\n") or stream == b".\r\n"
    lines = stream[:-3].split(b"\r\n")
    return b"\r\n".join(line[1:] if line.startswith(b".") else line for line in lines)


def test_hostile_bytes_survive_dot_stuffing_for_any_split() -> None:
    long_line = b"L" * 5000
    raw = (
        b"From: a@example.org\r\nSubject: caf\xc3\xa9 \xff\r\n\r\n"
        b".\r\n..\r\n.x\r\nnul\x00byte\r\n" + long_line + b"\r\nbare\nlf\r\n.\r\nend"
    )
    crlf = re.sub(rb"\r\n|\n|\r(?!\n)", b"\r\n", raw)  # bare LF is not SMTP: as smtplib, it becomes CRLF
    for size in (1, 2, 3, 7, 64, 4096, len(raw)):
        stream = b"".join(data_lines(raw[i:i + size] for i in range(0, len(raw), size)))
        assert stream == smtplib._quote_periods(crlf) + b"\r\n.\r\n"  # type: ignore[attr-defined]
        assert b"\r\n.\r\n" not in stream[:-5]  # no line of the body ends the message early
        assert unstuffed(stream) == crlf + b"\r\n"
