"""Review of the scanner clients and checks against in-process fake clamd and spamd on loopback.

Every path where a scan does not happen must end in the configured ``on_error``
(or a size skip over the real size), never in mail passed as if scanned.
"""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path
from typing import Callable, Iterator

import pytest

from milterd.message.model import Action, Envelope, HeaderEdit, Session
from milterd.message.pipeline import Outcome, Pipeline
from milterd.scanners import ScannerError
from milterd.scanners.spamd import SpamdClient, parse_response, parse_result
from tests.harness.pipeline import HAM, scanner_pipeline
from tests.harness.postfix import free_port

MARKER = b"FAKE-VIRUS-MARKER"
SPAMD_SPAM = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5\r\nSpam: True ; 15.0 / 5.0\r\n\r\nRULE1"


class FakeServer:
    """A loopback TCP server answering each connection with ``handler(conn)`` in a thread; keeps what it read.

    *receive_buffer*, when given, is the SO_RCVBUF of the accepted connections (a scanner that reads slowly)."""

    def __init__(self, handler: Callable[["FakeServer", socket.socket], None], receive_buffer: int | None = None) -> None:
        self.handler = handler
        self.requests: list[bytes] = []
        self.server = socket.socket()
        if receive_buffer is not None:
            self.server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # inherited by the accepted socket
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(8)
        self.server.settimeout(0.1)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def address(self) -> str:
        return f"tcp:127.0.0.1:{self.server.getsockname()[1]}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn = self.server.accept()[0]
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                try:
                    self.handler(self, conn)
                except OSError:
                    pass

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.server.close()


def _read_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        piece = conn.recv(size - len(data))
        if not piece:
            raise OSError("closed")
        data += piece
    return data


def fake_clamd(server: FakeServer, conn: socket.socket) -> None:
    """zINSTREAM, chunks, a zero length; FOUND when the stream holds MARKER."""
    assert _read_exact(conn, len(b"zINSTREAM\x00")) == b"zINSTREAM\x00"
    payload = b""
    while True:
        (length,) = struct.unpack(">I", _read_exact(conn, 4))
        if length == 0:
            break
        payload += _read_exact(conn, length)
    server.requests.append(payload)
    conn.sendall(b"stream: Fake.Marker FOUND\x00" if MARKER in payload else b"stream: OK\x00")


def spamd_answering(answer: bytes) -> Callable[[FakeServer, socket.socket], None]:
    """A fake spamd that reads the request to EOF (the client half-closes) and sends *answer*."""

    def handler(server: FakeServer, conn: socket.socket) -> None:
        request = b""
        while True:
            piece = conn.recv(65536)
            if not piece:
                break
            request += piece
        server.requests.append(request)
        conn.sendall(answer)

    return handler


@pytest.fixture()
def clamd() -> Iterator[FakeServer]:
    server = FakeServer(fake_clamd)
    yield server
    server.close()


def drive(
    pipeline: Pipeline, message: bytes, recipient: str = "bob@example.com", mail_args: dict[str, str | None] | None = None,
    session: Session | None = None, sender: str = "alice@example.org",
) -> Outcome:
    """*message* through every stage of *pipeline* (as tests.harness.pipeline.run_message, with MAIL FROM's arguments,
    the recipient, the sender and the client's session chosen)."""
    session = session or Session(client_addr="192.0.2.10", client_name="mail.example.org", helo="mail.example.org", family="inet")
    pipeline.connect(session)
    pipeline.helo(session)
    envelope: Envelope = pipeline.new_envelope(session)
    envelope.sender = sender
    envelope.mail_args = dict(mail_args or {})
    envelope.queue_id = "QID1"
    assert pipeline.mail(session, envelope) is None
    pipeline.rcpt(session, envelope, recipient)
    pipeline.data(session, envelope)
    head, _, body = message.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        pipeline.header(session, envelope, name.decode(), value.strip())
    pipeline.eoh(session, envelope)
    pipeline.body(session, envelope, body)
    try:
        return pipeline.eom(session, envelope)
    finally:
        pipeline.finish(session, envelope)
        pipeline.shutdown()


def only(pipeline: Pipeline, name: str) -> Pipeline:
    """*pipeline* with one of its two scanner checks left."""
    pipeline.shutdown()
    services = pipeline.services
    services.checks = [c for c in services.checks if c.name == name]
    return Pipeline(services)


# --- clamav: MAIL FROM's SIZE= is the client's estimate (RFC 1870), not a reason to skip the scan ---
def test_a_small_virus_declaring_a_large_size_is_still_scanned(tmp_path: Path, clamd: FakeServer) -> None:
    pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__max_size=10_000), "clamav")
    message = HAM.replace(b"See you at noon.", MARKER)
    outcome = drive(pipeline, message, mail_args={"SIZE": "50000000"})
    assert "CLAMAV_SKIPPED_SIZE" not in outcome.verdict.symbols
    assert outcome.verdict.details.get("CLAMAV_VIRUS") == "Fake.Marker"
    assert outcome.verdict.action == Action.REJECT
    assert clamd.requests == [message]  # the message as received, whole, from the spool


def test_a_large_message_declaring_a_large_size_is_skipped_after_its_first_max_size_bytes(tmp_path: Path, clamd: FakeServer) -> None:
    pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__max_size="1K"), "clamav")
    outcome = drive(pipeline, HAM.replace(b"See you at noon.", b"y" * 5000), mail_args={"SIZE": "50000000"})
    assert "CLAMAV_SKIPPED_SIZE" in outcome.verdict.symbols and [len(r) for r in clamd.requests] == [1024]


# --- clamav: a sender must not claim a verdict, also when ours is missing ---
def test_forged_virus_headers_are_removed_when_the_scan_failed(tmp_path: Path) -> None:
    down = f"tcp:127.0.0.1:{free_port()}"
    pipeline = only(scanner_pipeline(tmp_path, down, down, clamav__on_error="accept"), "clamav")
    forged = HAM.replace(b"Subject: lunch\r\n", b"Subject: lunch\r\nX-Virus-Status: Clean\r\nX-Virus-Scanned: ClamAV\r\n")
    outcome = drive(pipeline, forged)
    assert outcome.verdict.action == Action.ACCEPT and "CLAMAV_ERROR" in outcome.verdict.symbols
    assert HeaderEdit("change", "X-Virus-Status", "", 1) in outcome.edits
    assert HeaderEdit("change", "X-Virus-Scanned", "", 1) in outcome.edits
    assert not any(e.op != "change" and e.name.startswith("X-Virus") for e in outcome.edits)


def test_forged_virus_headers_are_removed_when_the_message_is_skipped(tmp_path: Path, clamd: FakeServer) -> None:
    pipeline = only(scanner_pipeline(tmp_path, clamd.address, clamd.address, clamav__max_size="1K"), "clamav")
    forged = HAM.replace(b"Subject: lunch\r\n", b"Subject: lunch\r\nX-Virus-Status: Clean\r\n").replace(b"See you at noon.", b"y" * 5000)
    outcome = drive(pipeline, forged)
    assert "CLAMAV_SKIPPED_SIZE" in outcome.verdict.symbols
    assert HeaderEdit("change", "X-Virus-Status", "", 1) in outcome.edits


# --- spamd: answers that are not a verdict are scanner errors, not exceptions ---
@pytest.mark.parametrize(
    "raw",
    [
        b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1.2.3 / 5.0\r\n\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; . / 5.0\r\n\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 15,0 / 5,0\r\n\r\n",  # a comma locale: never read as a score
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\n\r\n",  # no Spam: header is not ham
    ],
)
def test_unusable_spam_headers_are_scanner_errors(raw: bytes) -> None:
    with pytest.raises(ScannerError):
        parse_result(parse_response(raw))


def test_a_status_code_of_non_ascii_digits_is_a_scanner_error() -> None:
    with pytest.raises(ScannerError):
        parse_response("SPAMD/1.1 ² EX_OK\r\n\r\n".encode())


def test_a_negative_score_is_kept() -> None:
    result = parse_result(parse_response(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -12.5 / -1.0\r\n\r\n"))
    assert (result.spam, result.score, result.required) == (False, -12.5, -1.0)


def test_a_garbled_spamd_answer_follows_on_error(tmp_path: Path) -> None:
    spamd = FakeServer(spamd_answering(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1.2.3 / 5.0\r\n\r\n"))
    try:
        pipeline = only(scanner_pipeline(tmp_path, spamd.address, spamd.address, spamd__on_error="tempfail"), "spamassassin")
        outcome = drive(pipeline, HAM)
    finally:
        spamd.close()
    assert "SPAMD_ERROR" in outcome.verdict.symbols and "CHECK_ERROR" not in outcome.verdict.symbols
    assert outcome.verdict.action == Action.TEMPFAIL


def test_an_unexpected_failure_in_the_spamd_check_follows_on_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise ValueError("a bug, not a scanner answer")

    monkeypatch.setattr(SpamdClient, "check", broken)
    down = f"tcp:127.0.0.1:{free_port()}"
    outcome = drive(only(scanner_pipeline(tmp_path, down, down, spamd__on_error="tempfail"), "spamassassin"), HAM)
    assert "SPAMD_ERROR" in outcome.verdict.symbols and outcome.verdict.action == Action.TEMPFAIL


# --- spamd: User: for "@recipient" is the recipient as Postfix passed it, whatever its bytes ---
def test_spamd_user_from_a_recipient_that_is_not_utf8(tmp_path: Path) -> None:
    spamd = FakeServer(spamd_answering(SPAMD_SPAM))
    try:
        pipeline = only(scanner_pipeline(tmp_path, spamd.address, spamd.address, spamd__user="@recipient", spamd__cache_size=0), "spamassassin")
        outcome = drive(pipeline, HAM, recipient="b\udcfcb@example.com")  # b"b\xfcb@…" decoded with surrogateescape
    finally:
        spamd.close()
    assert outcome.verdict.symbols.get("SPAMASSASSIN") == 15.0
    head, _, body = spamd.requests[0].partition(b"\r\n\r\n")
    assert b"\r\nUser: b\xfcb@example.com" in head
    length = int(head.split(b"Content-length: ")[1].split(b"\r\n")[0])
    assert length == len(body)  # Content-length counts exactly the bytes sent
