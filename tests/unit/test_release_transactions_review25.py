"""A release sent in several transactions (the server takes 2 recipients a transaction: 452 past them) whose
connection is lost in a later one: the recipients of the transactions the server took are delivered (recorded, the
release counted, the exact retry command printed); before, all were "outcome unknown" and a retry was --force to all.
The server is aiosmtpd in a thread; the quarantine's store SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd import quarantine as release_module
from milterd.cli import main
from milterd.quarantine import Quarantine
from milterd.store import MessageRecord, utcnow
from milterd.store.quarantine import QuarantineWrite
from tests.harness import quarantine as qh
from tests.harness.postfix import free_port

RAW = b"From: a@example.org\r\nSubject: lunch\r\n\r\nSee you at noon.\r\n"
RECIPIENTS = [f"u{n}@example.com" for n in range(5)]


class TwoPerTransaction:
    """Takes 2 recipients a transaction (452 for more) and drops the connection at the MAIL FROM of transaction *drop_at*."""

    def __init__(self, drop_at: int) -> None:
        self.drop_at, self.transactions = drop_at, 0
        self.queued: list[list[str]] = []

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str, mail_options: list[str]) -> str:  # noqa: N802
        self.transactions += 1
        if self.transactions == self.drop_at:
            server.transport.close()
        envelope.mail_from = address
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]) -> str:  # noqa: N802
        if len(envelope.rcpt_tos) >= 2:
            return "452 4.5.3 Error: too many recipients"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
        self.queued.append(list(envelope.rcpt_tos))
        return f"250 2.0.0 Ok: queued as Q{len(self.queued)}"


@pytest.fixture
def server() -> Iterator[tuple[int, TwoPerTransaction]]:
    from aiosmtpd.controller import Controller  # a test dependency, imported where a server is started (as Sink does)

    handler, port = TwoPerTransaction(drop_at=2), free_port()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    yield port, handler
    controller.stop()


def quarantined(quarantine: Quarantine) -> int:
    when = utcnow()
    record = MessageRecord(action="quarantine", time=when, mta_host="mx.test", queue_id="QREL", sender="a@example.org",
                           recipients=RECIPIENTS, subject="lunch", score=13.0)
    row = {"time": when, "mta_host": "mx.test", "queue_id": "QREL", "client_addr": "192.0.2.1", "client_name": "unknown", "helo": "h",
           "sender": "a@example.org", "recipients": RECIPIENTS, "subject": "lunch", "score": 13.0, "reason": "score",
           "symbols": {}, "size": len(RAW), "mode": "discard", "release_count": 0, "learned_ham": False}
    quarantine.store.log_message(record, QuarantineWrite(row, lambda: [RAW]))
    return int(quarantine.rows(limit=1)[0]["id"])


@pytest.fixture
def release(tmp_path: Path, server: tuple[int, TwoPerTransaction]) -> Iterator[tuple[Path, Quarantine, int]]:
    """The configuration releasing to the server, its quarantine, and the id of a message quarantined for RECIPIENTS."""
    conf = qh.quarantine_config(tmp_path / "milter.conf", f"sqlite:///{tmp_path / 'q.sqlite'}", release_smtp=f"127.0.0.1:{server[0]}")
    quarantine = qh.open_quarantine(conf)
    yield conf, quarantine, quarantined(quarantine)
    quarantine.store.close()


def test_a_connection_lost_in_a_later_transaction_keeps_the_earlier_deliveries(
        release: tuple[Path, Quarantine, int], server: tuple[int, TwoPerTransaction]) -> None:
    _, quarantine, row_id = release
    handler = server[1]
    report = quarantine.release(row_id, who="admin@mx.test")
    assert handler.queued == [["u0@example.com", "u1@example.com"]]
    assert report.delivered == {"u0@example.com": "250 2.0.0 Ok: queued as Q1", "u1@example.com": "250 2.0.0 Ok: queued as Q1"}
    assert set(report.refused) == {"u2@example.com", "u3@example.com", "u4@example.com"} and not report.unknown
    # Left for a transaction that never came: not the 452 (a reply naming the server's port may hold "452" elsewhere).
    assert not any(reply.startswith("452") for reply in report.refused.values()), report.refused
    row = quarantine.get(row_id)
    assert row["release_count"] == 1 and row["released_at"] is not None


def test_the_command_line_names_the_delivered_and_the_retry_for_the_others(
        release: tuple[Path, Quarantine, int], server: tuple[int, TwoPerTransaction], capsys: pytest.CaptureFixture[str]) -> None:
    conf, _, row_id = release
    handler = server[1]
    capsys.readouterr()
    assert main(["-c", str(conf), "quarantine", "release", str(row_id)]) == 1
    out, err = capsys.readouterr()
    assert f"{row_id}: <u0@example.com>: released: 250 2.0.0 Ok: queued as Q1" in out
    assert "OUTCOME UNKNOWN" not in err
    retry = err.split("to retry only the refused recipients: ")[1].strip()
    assert retry.endswith(f"quarantine release {row_id} --force --to u2@example.com --to u3@example.com --to u4@example.com")
    handler.transactions, handler.drop_at = 0, 0
    assert main(retry.split()[1:]) == 0  # the command as printed, without "milterd"
    assert handler.queued[1:] == [["u2@example.com", "u3@example.com"], ["u4@example.com"]]


def test_an_interrupt_in_a_later_transaction_leaves_no_recipient_recorded_nowhere(
        release: tuple[Path, Quarantine, int], monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C during transaction 2's RCPTs: the recipient it had accepted was neither delivered, refused nor unknown,
    # and a retry built from the record left it out.
    _, quarantine, row_id = release

    def interrupted(*_args: Any, progress: Any, **_kwargs: Any) -> None:
        progress.delivered.update({"u0@example.com": "250 2.0.0 Ok: queued as Q1", "u1@example.com": "250 2.0.0 Ok: queued as Q1"})
        progress.accepted.extend(["u0@example.com", "u1@example.com", "u2@example.com"])
        progress.in_flight.append("u2@example.com")  # accepted in transaction 2, its dot not sent
        raise KeyboardInterrupt

    monkeypatch.setattr(release_module.reinject, "send", interrupted)
    with pytest.raises(KeyboardInterrupt):
        quarantine.release(row_id, who="admin@mx.test")
    attempt = quarantine.get(row_id)["release_result"][-1]
    assert set(attempt["delivered"]) == {"u0@example.com", "u1@example.com"} and not attempt["unknown"]
    assert set(attempt["refused"]) == {"u2@example.com", "u3@example.com", "u4@example.com"}
