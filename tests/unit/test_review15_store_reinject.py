"""Re-injection of a released message: a CR that is not a line end reaches the server as it is, and a
message to more recipients than the server takes in one transaction (Postfix's smtpd_recipient_limit
answers 452 4.5.3 to the rest) reaches them all in further transactions.

The server is an SMTP sink on 127.0.0.1 that records each transaction's envelope and message bytes.
"""

from __future__ import annotations

import re
import smtplib
import socket
from pathlib import Path
from typing import Iterator

import pytest

from milterd import reinject
from milterd.reinject import Target, data_lines, send
from milterd.store import MessageRecord
from milterd.store.quarantine import QuarantineWrite
from tests.harness.quarantine import open_quarantine, quarantine_config
from tests.harness.smtpserver import ScriptedServer

TOO_MANY = b"452 4.5.3 Error: too many recipients"


class Sink(ScriptedServer):
    """An SMTP server on 127.0.0.1 keeping every transaction as (MAIL argument, RCPT arguments, message bytes).

    After *rcpt_limit* recipients in a transaction it answers 452 (as Postfix's smtpd_recipient_limit);
    after *transactions_taken* transactions, 452 to every recipient; *refuse* recipients get 550.
    """

    def __init__(self, rcpt_limit: int | None = None, transactions_taken: int | None = None, refuse: tuple[str, ...] = ()) -> None:
        super().__init__()
        self.rcpt_limit, self.transactions_taken, self.refuse = rcpt_limit, transactions_taken, refuse
        self.transactions: list[tuple[bytes, list[bytes], bytes]] = []
        self.start()

    def session(self, connection: socket.socket) -> None:
        reader = connection.makefile("rb")
        connection.sendall(b"220 sink ESMTP\r\n")
        mail, rcpts = b"", []
        while line := reader.readline():
            verb = line[:4].upper()
            if verb == b"EHLO":
                connection.sendall(b"250-sink\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n")
            elif verb == b"MAIL":
                mail, rcpts = line[10:].strip(), []
                connection.sendall(b"250 ok\r\n")
            elif verb == b"RCPT":
                address = line[8:].strip()
                full = self.transactions_taken is not None and len(self.transactions) >= self.transactions_taken
                if address.strip(b"<>").decode() in self.refuse:
                    connection.sendall(b"550 5.1.1 no such user\r\n")
                elif full or (self.rcpt_limit is not None and len(rcpts) >= self.rcpt_limit):
                    connection.sendall(TOO_MANY + b"\r\n")
                else:
                    rcpts.append(address)
                    connection.sendall(b"250 ok\r\n")
            elif verb == b"DATA":
                connection.sendall(b"354 go\r\n")
                lines = []
                while (data := reader.readline()) != b".\r\n":
                    if not data:
                        return
                    lines.append(data[1:] if data.startswith(b".") else data)
                self.transactions.append((mail, rcpts, b"".join(lines)))
                connection.sendall(b"250 2.0.0 Ok: queued as Q%d\r\n" % len(self.transactions))
            elif verb == b"QUIT":
                connection.sendall(b"221 bye\r\n")
                return
            else:
                connection.sendall(b"250 ok\r\n")


@pytest.fixture
def sink_factory() -> Iterator[type[Sink]]:
    sinks: list[Sink] = []

    class Started(Sink):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            sinks.append(self)

    yield Started
    for sink in sinks:
        sink.stop()


def addresses(rcpts: list[bytes]) -> list[str]:
    return [r.strip(b"<>").decode() for r in rcpts]


# --- bare CR -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [
    b"Subject: a\r\n\r\nline with bare CR\rinside\r\n",
    b"Subject: a\r\n\r\nCR CR LF\r\r\nnext\r\n",
    b"Subject: a\rX-Not-A-Header: b\r\n\r\nbody\r\n",
])
def test_a_bare_cr_reaches_the_server_unchanged(sink_factory: type[Sink], raw: bytes) -> None:
    sink = sink_factory()
    delivered, refused = send(Target(host="127.0.0.1", port=sink.port), "s@example.org", ["r@example.org"], [raw], "mx.test")
    assert list(delivered) == ["r@example.org"] and not refused
    assert sink.transactions[0][2] == raw


def test_data_stream_keeps_bare_cr_and_stuffs_dots_for_any_split() -> None:
    for message in (b"a\r\n.b\r\n..c\n.d\re", b".x", b"abc\r", b"x\n\n.\n", b"\r\r\n.", b"a\r.b\r\r\n.c\r", b"\r.\r\n.\r", b"x\r\r"):
        # Only a bare LF, and a CR ending the message, become CR LF (then the dots are doubled as smtplib does).
        want = smtplib._quote_periods(re.sub(rb"\r?\n|\r\Z", b"\r\n", message))  # type: ignore[attr-defined]
        want += (b"" if want.endswith(b"\r\n") else b"\r\n") + b".\r\n"
        for size in range(1, len(message) + 1):
            assert b"".join(data_lines(message[i:i + size] for i in range(0, len(message), size))) == want, (message, size)


# --- the server's limit of recipients per transaction ----------------------------------------


def test_recipients_over_the_limit_get_the_message_in_further_transactions(sink_factory: type[Sink], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reinject, "SPOOL_IN_MEMORY", 1000)  # the copy for the further transactions goes to a file
    sink = sink_factory(rcpt_limit=3, refuse=("gone@example.org",))
    recipients = [f"user{i}@example.org" for i in range(8)]
    recipients.insert(4, "gone@example.org")
    raw = b"Subject: many\r\n\r\n" + b".dot\r\n" + b"x" * 5000 + b"\r\nend\r\n"
    pieces = (raw[i:i + 700] for i in range(0, len(raw), 700))  # read once: a generator, as the store's chunks
    delivered, refused = send(Target(host="127.0.0.1", port=sink.port), "s@example.org", recipients, pieces, "mx.test")
    assert sorted(delivered) == sorted(r for r in recipients if r != "gone@example.org")
    assert refused == {"gone@example.org": "550 5.1.1 no such user"}
    assert [addresses(rcpts) for _, rcpts, _ in sink.transactions] == [recipients[0:3], recipients[3:4] + recipients[5:7], recipients[7:9]]
    assert [data for _, _, data in sink.transactions] == [raw] * 3
    assert {mail for mail, _, _ in sink.transactions} == {b"<s@example.org> BODY=8BITMIME"}


def test_a_transaction_that_accepts_none_ends_the_retries(sink_factory: type[Sink]) -> None:
    sink = sink_factory(rcpt_limit=2, transactions_taken=1)
    recipients = [f"user{i}@example.org" for i in range(5)]
    delivered, refused = send(Target(host="127.0.0.1", port=sink.port), "", recipients, iter([b"Subject: a\r\n\r\nb\r\n"]), "mx.test")
    assert sorted(delivered) == recipients[:2]
    assert refused == {r: TOO_MANY.decode() for r in recipients[2:]}
    assert [addresses(rcpts) for _, rcpts, _ in sink.transactions] == [recipients[:2]]


def test_release_to_2500_recipients_through_a_limit_of_1000(sink_factory: type[Sink], tmp_path: Path) -> None:
    sink = sink_factory(rcpt_limit=1000)
    quarantine = open_quarantine(quarantine_config(tmp_path / "milter.conf", f"sqlite:///{tmp_path / 'q.sqlite'}", release_smtp=f"127.0.0.1:{sink.port}"))
    recipients = [f"user{i}@example.org" for i in range(2500)]
    raw = b"Subject: a\r\n\r\nb\r\n"
    record = MessageRecord(action="quarantine", sender="s@example.org", recipients=recipients, subject="a")
    row = record.as_row()
    write = QuarantineWrite(row={
        "time": row["time"], "mta_host": "mx.test", "queue_id": "Q1", "client_addr": "", "client_name": "", "helo": "",
        "sender": row["sender"], "recipients": row["recipients"], "subject": "a", "score": 9.0, "reason": "r",
        "symbols": {}, "size": len(raw), "mode": "discard", "release_count": 0, "learned_ham": False,
    }, chunks=lambda: iter([raw]))
    quarantine.store.log_message(record, write)
    row_id = quarantine.rows(limit=1)[0]["id"]

    report = quarantine.release(row_id, who="tester@mx.test")
    assert report.ok, report
    assert sorted(report.delivered) == sorted(recipients) and not report.refused
    assert sorted(r for _, rcpts, _ in sink.transactions for r in addresses(rcpts)) == sorted(recipients)
    assert [len(rcpts) for _, rcpts, _ in sink.transactions] == [1000, 1000, 500]
    assert all(data.endswith(b"\r\n" + raw) for _, _, data in sink.transactions)  # after the X-Milterd-Released header
