"""Review of the scanners' failure modes: a scanner that misbehaves must give on_error (or a size skip), within its timeout.

Fake clamd and spamd run as threads on loopback.  The slow-reader ones keep
both ends' socket buffers small, so that a send waits for the scanner to read
as it would with a large message and a real clamd or spamd.
"""

from __future__ import annotations

import socket
import time
import types
from pathlib import Path
from typing import Iterator, cast

import pytest

from milterd.message.model import Action, Envelope
from milterd.scanners import Address, ScannerError, connect
from milterd.scanners import clamd as clamd_module
from milterd.scanners import spamd as spamd_module
from milterd.scanners.clamd import ClamdClient, InstreamScan, parse_reply
from milterd.scanners.spamd import SpamdClient, parse_response, parse_result
from tests.harness.pipeline import HAM, scanner_pipeline
from tests.harness.postfix import free_port
from tests.unit.test_scanners_review import MARKER, SPAMD_SPAM, FakeServer, drive, fake_clamd, only, spamd_answering

SPAMD_HAM = b"SPAMD/1.1 0 EX_OK\r\nContent-length: 0\r\nSpam: False ; 0.0 / 5.0\r\n\r\n"


def slow_reader(answer: bytes, clamd: bool = False) -> FakeServer:
    """A loopback scanner that reads 512 bytes every 20 ms into a small buffer, then answers *answer* at EOF or end of stream."""

    def handle(server: FakeServer, conn: socket.socket) -> None:
        conn.settimeout(10)
        data = b""
        while not server.stop.is_set():
            piece = conn.recv(512)
            if not piece:
                break
            data += piece
            if clamd and data.endswith(b"\x00\x00\x00\x00"):
                break
            time.sleep(0.02)
        conn.sendall(answer)

    return FakeServer(handle, receive_buffer=1024)


@pytest.fixture()
def small_send_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The scanner clients' sockets with a small send buffer (else the kernel takes the whole test message at once)."""

    def small(address: Address, timeout: float) -> socket.socket:
        sock = connect(address, timeout)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        return sock

    monkeypatch.setattr(spamd_module, "connect", small)
    monkeypatch.setattr(clamd_module, "connect", small)


@pytest.fixture()
def clamd() -> Iterator[FakeServer]:
    server = FakeServer(fake_clamd)
    yield server
    server.close()


# --- the timeout bounds the whole exchange, not each send ---
class FakeClock:
    """The scanner clients' time.monotonic(), moved by the fake sockets' waits: no test waits in real time."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    for module in (clamd_module, spamd_module):
        monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


class SlowReadingSocket:
    """A scanner's connection that reads *rate* bytes a second of the fake clock (a send waits for that, or its
    timeout, then TimeoutError) and answers *answer* once it has the whole request."""

    def __init__(self, clock: FakeClock, answer: bytes, rate: float, timeout: float, clamd: bool = False) -> None:
        self.clock, self.answer, self.rate, self.timeout, self.clamd = clock, answer, rate, timeout, clamd
        self.received = b""
        self.ended = False

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def sendall(self, data: bytes) -> None:
        needed = len(data) / self.rate
        if needed > self.timeout:
            self.clock.now += self.timeout
            raise TimeoutError
        self.clock.now += needed
        self.received += data
        self.ended = self.ended or (self.clamd and self.received.endswith(b"\x00\x00\x00\x00"))

    def shutdown(self, how: int) -> None:
        self.ended = True

    def recv(self, size: int) -> bytes:
        if not self.ended:
            self.clock.now += self.timeout
            raise TimeoutError
        answer, self.answer = self.answer, b""
        return answer

    def close(self) -> None:
        pass

    def __enter__(self) -> "SlowReadingSocket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def slow_scanner(monkeypatch: pytest.MonkeyPatch, clock: FakeClock, answer: bytes, clamd: bool = False) -> None:
    """The clients connect to a scanner that takes 4 s of the fake clock to read 15 chunks of 4 KB (each within the timeout)."""

    def connect(address: Address, timeout: float) -> SlowReadingSocket:
        return SlowReadingSocket(clock, answer, 15 * 4096 / 4.0, timeout, clamd)

    monkeypatch.setattr(clamd_module if clamd else spamd_module, "connect", connect)


def test_a_spamd_reading_slowly_is_given_the_timeout_in_all(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    slow_scanner(monkeypatch, clock, SPAMD_HAM)
    chunks = [b"x" * 4096] * 15  # each send within the timeout, all of them ~4 s
    started = clock.now
    with pytest.raises(ScannerError, match="timed out after 0.6s"):
        SpamdClient(Address("tcp", "127.0.0.1", 9), timeout=0.6).check(iter(chunks), sum(len(c) for c in chunks))
    assert clock.now - started <= 0.6 + 1e-9  # before: ~4 s, then the verdict taken


def test_a_clamd_reading_slowly_is_given_the_timeout_in_all_for_a_whole_message(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    slow_scanner(monkeypatch, clock, b"stream: OK\x00", clamd=True)
    started = clock.now
    with pytest.raises(ScannerError, match="timed out after 0.6s"):
        ClamdClient(Address("tcp", "127.0.0.1", 9), timeout=0.6, chunk_size=4096).scan([b"x" * 4096] * 15)
    assert clock.now - started <= 0.6 + 1e-9  # before: ~4 s, then "stream: OK" taken as the verdict


@pytest.mark.usefixtures("small_send_buffers")
def test_fix_a_clamd_reading_slowly_is_given_the_timeout_for_the_whole_stream() -> None:
    # The stream a message's body is sent in as it arrives (instream() without a deadline, the usual path): each
    # chunk's send had the timeout of its own, so a clamd reading each just in time held the message for chunks
    # x timeout, then its "stream: OK" was taken as the scan.
    clamd = slow_reader(b"stream: OK\x00", clamd=True)
    try:
        with pytest.raises(ScannerError, match="sending timed out after 0.6s"):
            with ClamdClient(clamd.address, timeout=0.6, chunk_size=4096).instream() as stream:
                for _ in range(15):  # ~4 s for this clamd to read
                    stream.send(b"x" * 4096)
                stream.finish()
    finally:
        clamd.close()


class DrainingSocket:
    """Stands for a socket whose sendall waits 0.4 s (of the fake clock) for room (a buffer clamd drains slowly) and that never gets an answer."""

    def __init__(self, clock: FakeClock, timeout: float) -> None:
        self.clock = clock
        self.timeout = timeout

    def settimeout(self, timeout: float) -> None:
        self.timeout = timeout

    def sendall(self, data: bytes) -> None:
        if self.timeout < 0.4:
            self.clock.now += self.timeout
            raise TimeoutError
        self.clock.now += 0.4

    def recv(self, size: int) -> bytes:
        self.clock.now += self.timeout
        raise TimeoutError

    def close(self) -> None:
        pass


def test_the_end_of_a_clamd_stream_and_its_verdict_share_one_timeout(clock: FakeClock) -> None:
    stream = InstreamScan(cast(socket.socket, DrainingSocket(clock, 0.6)), Address("tcp", "127.0.0.1", 9), 0.6, 4096)
    started = clock.now
    with pytest.raises(ScannerError, match="no answer within 0.6s"):
        stream.finish()
    assert clock.now - started <= 0.6 + 1e-9  # before: 0.4 s sending the end, then 0.6 s more for the verdict
    assert stream.closed


def test_a_fast_clamd_still_scans_a_whole_message_in_chunks(clamd: FakeServer) -> None:
    message = b"y" * 100_000 + MARKER
    result = ClamdClient(clamd.address, timeout=5, chunk_size=4096).scan([message[:50_000], message[50_000:]])
    assert result.infected and result.virus == "Fake.Marker" and clamd.requests == [message]


# --- spamd: a score that is not a finite number is no verdict ---
@pytest.mark.parametrize(
    "spam",
    [
        "False ; -1" + "0" * 400 + ".0 / 5.0",  # -inf: would pass anything, and learn it as ham
        "True ; 1" + "0" * 400 + ".0 / 5.0",
        "False ; 0.0 / 1" + "0" * 400 + ".0",
    ],
)
def test_a_score_overflowing_to_infinity_is_a_scanner_error(spam: str) -> None:
    with pytest.raises(ScannerError, match="out of range"):
        parse_result(parse_response(f"SPAMD/1.1 0 EX_OK\r\nSpam: {spam}\r\n\r\n".encode()))


def test_an_infinite_score_from_spamd_follows_on_error(tmp_path: Path) -> None:
    spamd = FakeServer(spamd_answering(b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; -1" + b"0" * 400 + b".0 / 5.0\r\n\r\n"))
    try:
        outcome = drive(only(scanner_pipeline(tmp_path, spamd.address, spamd.address, spamd__on_error="tempfail"), "spamassassin"), HAM)
    finally:
        spamd.close()
    assert "SPAMASSASSIN" not in outcome.verdict.symbols and "SPAMD_ERROR" in outcome.verdict.symbols
    assert outcome.verdict.action == Action.TEMPFAIL


# --- spamd: the cache key failing otherwise than on the spool is an unscanned message, under on_error ---
# (the spool's own read failure, SpoolError, is answered 451 whatever on_error says: test_spool_unreadable.py)
def test_an_unreadable_spool_with_the_cache_on_follows_on_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def unreadable(self: Envelope, size: int = 65536) -> Iterator[bytes]:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Envelope, "message_chunks", unreadable)
    down = f"tcp:127.0.0.1:{free_port()}"
    outcome = drive(only(scanner_pipeline(tmp_path, down, down, spamd__on_error="tempfail"), "spamassassin"), HAM)
    assert "CHECK_ERROR" not in outcome.verdict.symbols  # before: CHECK_ERROR, scored 0, accepted unscanned
    assert "SPAMD_ERROR" in outcome.verdict.symbols and outcome.verdict.action == Action.TEMPFAIL


# --- behaviours checked and kept (no change needed) ---
@pytest.mark.parametrize(
    "reply, status",
    [
        (b"stream: Eicar-Test: Sig FOUND\x00", "FOUND"),  # a colon in the name
        (b"stream: FOUND.In.Name FOUND\x00", "FOUND"),
        (b"stream: OK\x00junk", "ERROR"),
        (b"INSTREAM size limit exceeded. ERROR\x00", "ERROR"),
        (b"UNKNOWN COMMAND\x00", "ERROR"),
        (b"PONG\x00", "ERROR"),  # an answer to another request
        (b"\x00", "ERROR"),
        (b"stream: FOUND\x00", "ERROR"),  # no name: not clean either
    ],
)
def test_odd_clamd_replies_are_never_clean(reply: bytes, status: str) -> None:
    assert parse_reply(reply).status == status


def test_one_scanner_failing_does_not_hide_the_others_verdict(tmp_path: Path, clamd: FakeServer) -> None:
    down = f"tcp:127.0.0.1:{free_port()}"
    outcome = drive(scanner_pipeline(tmp_path, clamd.address, down, spamd__on_error="tempfail"), HAM.replace(b"See you at noon.", MARKER))
    assert outcome.verdict.details.get("CLAMAV_VIRUS") == "Fake.Marker" and "SPAMD_ERROR" in outcome.verdict.symbols
    assert outcome.verdict.action == Action.REJECT  # the virus wins over the tempfail


def test_a_failed_spamd_scan_is_not_cached(tmp_path: Path) -> None:
    replies = [b"SPAMD/1.1 74 EX_TEMPFAIL\r\n\r\n", SPAMD_SPAM]

    def handler(server: FakeServer, conn: socket.socket) -> None:
        spamd_answering(replies.pop(0))(server, conn)

    spamd = FakeServer(handler)
    try:
        pipeline = only(scanner_pipeline(tmp_path, spamd.address, spamd.address), "spamassassin")
        check = pipeline.services.checks[0]
        first = drive(pipeline, HAM)
        kept_after_failure = len(check.cache)  # type: ignore[attr-defined]
        pipeline = only(scanner_pipeline(tmp_path, spamd.address, spamd.address), "spamassassin")
        pipeline.services.checks[0].cache = check.cache  # type: ignore[attr-defined]  # the same worker's cache
        second = drive(pipeline, HAM)
    finally:
        spamd.close()
    assert "SPAMD_ERROR" in first.verdict.symbols and kept_after_failure == 0
    assert second.verdict.symbols.get("SPAMASSASSIN") == 15.0 and "SPAMD_CACHED" not in second.verdict.symbols


def test_a_message_exactly_at_clamav_max_size_is_scanned_and_one_byte_more_is_skipped(tmp_path: Path, clamd: FakeServer) -> None:
    # its last byte past max_size cuts the marker: the first max_size bytes are scanned clean (over 1K, max_size's least)
    message = HAM.replace(b"See you at noon.", b"See you at noon. " * 80) + MARKER
    at_limit = drive(only(scanner_pipeline(tmp_path, clamd.address, clamd.address, clamav__max_size=len(message)), "clamav"), message)
    assert at_limit.verdict.details.get("CLAMAV_VIRUS") == "Fake.Marker"
    over = drive(only(scanner_pipeline(tmp_path, clamd.address, clamd.address, clamav__max_size=len(message) - 1), "clamav"), message)
    assert "CLAMAV_SKIPPED_SIZE" in over.verdict.symbols and over.verdict.symbols["CLAMAV_SKIPPED_SIZE"] == 0.0
    assert over.verdict.action == Action.ACCEPT


# --- spamd: max_size is of the message as received, as the option says ("Larger messages are not sent") ---
def test_a_message_exactly_at_spamd_max_size_is_sent_and_one_byte_more_is_skipped(tmp_path: Path) -> None:
    spamd = FakeServer(spamd_answering(SPAMD_SPAM))
    message = HAM.replace(b"See you at noon.", b"See you at noon. " * 80)  # over 1K, max_size's least
    try:
        at_limit = drive(only(scanner_pipeline(tmp_path, spamd.address, spamd.address, spamd__max_size=len(message)), "spamassassin"), message)
        over = drive(only(scanner_pipeline(tmp_path, spamd.address, spamd.address, spamd__max_size=len(message) - 1), "spamassassin"), message)
    finally:
        spamd.close()
    assert at_limit.verdict.symbols.get("SPAMASSASSIN") == 15.0  # before: skipped, our own Received: header counted in
    assert len(spamd.requests) == 1 and spamd.requests[0].endswith(message)  # the message whole, after our Received:
    assert over.verdict.details.get("SPAMD_SKIPPED_SIZE") == f"size {len(message)} > {len(message) - 1}"
    assert over.verdict.symbols["SPAMD_SKIPPED_SIZE"] == 0.0 and over.verdict.action == Action.ACCEPT
