"""clamav review (fourth session): ``[clamav] max_size`` above clamd's ``StreamMaxLength`` delivered a virus
followed by padding unscanned: clamd refused the stream part-way and the check kept only ``CLAMAV_SKIPPED_SIZE``.
What clamd took before the refused chunk is now scanned again from the spool, and the worker cuts its later
messages there up front (a fake clamd on loopback that refuses as clamd does: at the chunk that goes past it).

A second look: the refusal shows late (the socket buffers take what clamd never reads), so the size guessed from
it (the bytes before the last chunk, halved when refused again) was learned anywhere down to half clamd's limit,
and a later message under clamd's StreamMaxLength, scanned whole before, was cut and its virus delivered.  The fake
reads on after refusing, as those buffers do, so that the client has sent well past the limit by then."""

from __future__ import annotations

import logging
import socket
import struct
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from milterd.checks.clamav import MAX_RESCANS, STREAM_LIMITS
from milterd.message.model import Action
from milterd.message.pipeline import Outcome, Pipeline
from tests.harness.pipeline import HAM, run_message, scanner_pipeline
from tests.harness.postfix import free_port
from tests.harness.scanners import EICAR

from .test_scanners_review import FakeServer, _read_exact, drive, only

LIMIT = 200_000  # the fake clamd's StreamMaxLength; [clamav] max_size keeps its default, 25M
CHUNK = 65536  # the client's chunk: the start judged is within one of clamd's limit
PADDING = (b"x" * 998 + b"\r\n") * 600  # 600 kB: Postfix passes it in 64 kB chunks (run_message)
INFECTED = HAM.replace(b"See you at noon.", EICAR + b"\r\n" + PADDING)
CLEAN = HAM.replace(b"See you at noon.", PADDING)


class StreamMaxClamd(FakeServer):
    """A clamd whose StreamMaxLength is *limit*: a chunk going past it is refused as its length is read, and the
    connection closed; a stream it takes whole is FOUND when it holds EICAR.  Before answering ``INSTREAM size
    limit exceeded`` it reads on, unseen, up to the stream's end (or *overshoot* bytes): the socket buffers that
    take a client's chunks clamd never reads, so the refusal shows to the client far past the limit."""

    def __init__(self, limit: int = LIMIT, overshoot: int = 64 << 20) -> None:
        self.limit, self.overshoot = limit, overshoot
        self.refused: list[int] = []  # per connection: the bytes taken before a refusal, or -1 for a verdict
        super().__init__(StreamMaxClamd.serve)

    def serve(self, conn: socket.socket) -> None:
        _read_exact(conn, len(b"zINSTREAM\x00"))
        payload = b""
        while True:
            (length,) = struct.unpack(">I", _read_exact(conn, 4))
            if length == 0:
                break
            if len(payload) + length > self.limit:
                self.requests.append(payload)
                self.refused.append(len(payload))
                unread = 0
                while length and unread <= self.overshoot:  # in the buffers, never read by clamd
                    unread += len(_read_exact(conn, length))
                    (length,) = struct.unpack(">I", _read_exact(conn, 4))
                conn.sendall(b"INSTREAM size limit exceeded. ERROR\x00")
                return
            payload += _read_exact(conn, length)
        self.requests.append(payload)
        self.refused.append(-1)
        conn.sendall(b"stream: Eicar-Test-Signature FOUND\x00" if EICAR in payload else b"stream: OK\x00")


@pytest.fixture()
def clamd() -> Iterator[StreamMaxClamd]:
    server = StreamMaxClamd()
    yield server
    server.close()


def pipeline_for(tmp_path: Path, clamd: StreamMaxClamd) -> Pipeline:
    return only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}"), "clamav")


def judged(clamd: StreamMaxClamd) -> int:
    """The size of the last stream clamd took whole: the longest (a bisection's later tries may be refused), within
    one chunk of its limit; never more than 1 + MAX_RESCANS streams for a message."""
    taken = [len(request) for request, refused in zip(clamd.requests, clamd.refused, strict=True) if refused == -1]
    assert taken and len(clamd.requests) <= 1 + MAX_RESCANS, clamd.refused
    assert clamd.limit - CHUNK < taken[-1] <= clamd.limit and taken[-1] == max(taken), (taken, clamd.refused)
    return taken[-1]


def skipped_clean(size: int) -> str:
    return f"size over {size} (clamd's StreamMaxLength); its first {size} bytes scanned: clean"


def test_a_virus_first_then_padding_past_clamds_stream_limit_is_found(tmp_path: Path, clamd: StreamMaxClamd) -> None:
    outcome, _ = run_message(pipeline_for(tmp_path, clamd), INFECTED)
    assert outcome.verdict.details.get("CLAMAV_VIRUS") == "Eicar-Test-Signature", outcome.verdict.details
    assert outcome.verdict.action == Action.REJECT and "CLAMAV_SKIPPED_SIZE" not in outcome.verdict.symbols
    assert clamd.refused[0] >= 0  # the stream was refused part-way: the virus was found in the start scanned again
    judged(clamd)


def test_a_virus_past_clamds_stream_limit_follows_clamav_action(tmp_path: Path, clamd: StreamMaxClamd) -> None:
    pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__action="quarantine"), "clamav")
    outcome, _ = run_message(pipeline, INFECTED)
    assert outcome.verdict.action == Action.QUARANTINE and "CLAMAV_VIRUS" in outcome.verdict.symbols


def test_a_virus_in_one_body_chunk_past_clamds_stream_limit_is_found(tmp_path: Path, clamd: StreamMaxClamd) -> None:
    """The whole body in one call: the refusal shows chunks late, or only at the end; the start is still judged."""
    outcome = drive(pipeline_for(tmp_path, clamd), INFECTED)
    assert outcome.verdict.details.get("CLAMAV_VIRUS") == "Eicar-Test-Signature", outcome.verdict.details
    judged(clamd)


def test_a_virus_declared_large_past_clamds_stream_limit_is_found(tmp_path: Path, clamd: StreamMaxClamd) -> None:
    """SIZE= over max_size: no stream; the spool's first max_size bytes are refused, and a shorter start judged."""
    outcome = drive(pipeline_for(tmp_path, clamd), INFECTED, mail_args={"SIZE": "50000000"})
    assert outcome.verdict.details.get("CLAMAV_VIRUS") == "Eicar-Test-Signature", outcome.verdict.details
    judged(clamd)


def test_a_clean_start_past_clamds_stream_limit_says_how_much_was_scanned(tmp_path: Path, clamd: StreamMaxClamd) -> None:
    outcome, _ = run_message(pipeline_for(tmp_path, clamd), CLEAN)
    assert outcome.verdict.details == {"CLAMAV_SKIPPED_SIZE": skipped_clean(judged(clamd))}
    assert outcome.verdict.action == Action.ACCEPT
    assert not any(edit.op == "add" and edit.name.startswith("X-Virus") for edit in outcome.edits)  # not scanned whole


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_clamd_gone_before_the_start_is_judged_again_follows_on_error(tmp_path: Path, clamd: StreamMaxClamd, on_error: str) -> None:
    pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__on_error=on_error), "clamav")
    refusing = clamd.handler

    def once_then_gone(server: FakeServer, conn: socket.socket) -> None:
        refusing(server, conn)
        server.handler = lambda server, conn: None  # later connections closed unanswered

    clamd.handler = once_then_gone
    outcome, _ = run_message(pipeline, INFECTED)
    assert "CLAMAV_ERROR" in outcome.verdict.symbols and "CLAMAV_SKIPPED_SIZE" not in outcome.verdict.symbols
    assert outcome.verdict.action == (Action.TEMPFAIL if on_error == "tempfail" else Action.ACCEPT)


def send(tmp_path: Path, clamd: StreamMaxClamd, message: bytes, name: str) -> Outcome:
    (tmp_path / name).mkdir()
    outcome, _ = run_message(pipeline_for(tmp_path / name, clamd), message)
    return outcome


def test_the_next_message_is_cut_at_the_limit_up_front(tmp_path: Path, clamd: StreamMaxClamd, caplog: pytest.LogCaptureFixture) -> None:
    """What clamd took and refused is kept for the worker (its later pipelines too): a message past what it refused
    is cut at what it took, one connection each, never refused."""
    caplog.set_level(logging.WARNING, logger="milterd")
    send(tmp_path, clamd, CLEAN, "first")
    learned = judged(clamd)
    del clamd.requests[:], clamd.refused[:]

    infected = send(tmp_path, clamd, INFECTED, "second")
    assert infected.verdict.details.get("CLAMAV_VIRUS") == "Eicar-Test-Signature"
    assert clamd.refused == [-1] and learned <= len(clamd.requests[0]) <= LIMIT  # one stream, not refused

    clean = send(tmp_path, clamd, CLEAN, "third")
    assert clean.verdict.details == {"CLAMAV_SKIPPED_SIZE": skipped_clean(len(clamd.requests[1]))}
    assert clamd.refused == [-1, -1]
    learnt = [r for r in caplog.records if "StreamMaxLength" in r.getMessage()]
    assert len(learnt) == 1 and str(learned) in learnt[0].getMessage()  # logged once, when learned


def test_a_message_under_the_learned_limit_is_scanned_whole(tmp_path: Path, clamd: StreamMaxClamd) -> None:
    send(tmp_path, clamd, CLEAN, "first")
    small = HAM.replace(b"See you at noon.", EICAR)
    outcome = send(tmp_path, clamd, small, "second")
    assert outcome.verdict.details == {"CLAMAV_VIRUS": "Eicar-Test-Signature"}
    assert clamd.requests[-1] == small


LINE = b"x" * 998 + b"\r\n"


def padded(before: int, virus: bool = True) -> bytes:
    """*before* lines of 1000 bytes, then EICAR (with *virus*)."""
    return HAM.replace(b"See you at noon.", LINE * before + (EICAR + b"\r\n" if virus else b""))


def test_a_virus_under_clamds_stream_limit_is_found_after_a_larger_message(tmp_path: Path) -> None:
    """The second look's case (clamd's StreamMaxLength 1M): EICAR after 850 kB is rejected; a 3 MB message is
    refused part-way; the first message again must still be rejected, not cut at a size under clamd's limit."""
    clamd = StreamMaxClamd(limit=1 << 20)
    try:
        first = send(tmp_path, clamd, padded(850), "first")
        assert first.verdict.details == {"CLAMAV_VIRUS": "Eicar-Test-Signature"}
        assert clamd.refused == [-1]

        large = send(tmp_path, clamd, padded(3000, virus=False), "large")
        assert set(large.verdict.symbols) == {"CLAMAV_SKIPPED_SIZE"} and clamd.refused[1] >= 0  # refused part-way
        del clamd.requests[:], clamd.refused[:]

        again = send(tmp_path, clamd, padded(850), "again")
        assert again.verdict.details == {"CLAMAV_VIRUS": "Eicar-Test-Signature"}, again.verdict.details
        assert again.verdict.action == Action.REJECT
        assert clamd.refused == [-1] and EICAR in clamd.requests[0]  # streamed whole, as before the larger message
    finally:
        clamd.close()


def test_a_message_just_under_clamds_stream_limit_is_streamed_whole_after_learning(tmp_path: Path, clamd: StreamMaxClamd) -> None:
    """Within the last chunk under clamd's limit, past the start it took: sent whole, not cut where it took."""
    send(tmp_path, clamd, CLEAN, "first")
    learned = judged(clamd)
    known = STREAM_LIMITS.get(clamd.address)
    assert known is not None and known.accepted == learned and LIMIT < known.refused <= learned + CHUNK
    del clamd.requests[:], clamd.refused[:]
    message = padded((LIMIT - 200) // 1000)
    assert learned < len(message) <= LIMIT
    outcome = send(tmp_path, clamd, message, "second")
    assert outcome.verdict.details == {"CLAMAV_VIRUS": "Eicar-Test-Signature"}
    assert clamd.refused == [-1] and len(clamd.requests[0]) == len(message)


def test_a_message_between_clamds_limit_and_the_size_it_refused_is_judged_again(tmp_path: Path, clamd: StreamMaxClamd) -> None:
    """Streamed whole (it may have been taken), refused: its start clamd took is judged from the spool, one more."""
    send(tmp_path, clamd, CLEAN, "first")
    known = STREAM_LIMITS.get(clamd.address)
    assert known is not None
    del clamd.requests[:], clamd.refused[:]
    message = padded(LIMIT // 1000 + 1, virus=False)
    assert LIMIT < len(message) < known.refused
    outcome = send(tmp_path, clamd, message, "second")
    assert outcome.verdict.details == {"CLAMAV_SKIPPED_SIZE": skipped_clean(known.accepted)}
    assert clamd.refused[0] >= 0 and clamd.refused[1:] == [-1]


def test_clamds_stream_limit_lowered_after_learning_is_found_again(tmp_path: Path, clamd: StreamMaxClamd) -> None:
    """clamd reloaded with a lower StreamMaxLength: the start known taken is refused, and bisected again."""
    send(tmp_path, clamd, CLEAN, "first")
    clamd.limit = LIMIT // 2
    del clamd.requests[:], clamd.refused[:]
    outcome = send(tmp_path, clamd, CLEAN, "second")
    assert outcome.verdict.details == {"CLAMAV_SKIPPED_SIZE": skipped_clean(judged(clamd))}
    known = STREAM_LIMITS.get(clamd.address)
    assert known is not None and LIMIT // 2 - CHUNK < known.accepted <= LIMIT // 2 < known.refused


def test_a_start_taken_far_under_clamds_limit_is_not_where_later_messages_are_cut(tmp_path: Path, clamd: StreamMaxClamd) -> None:
    """The bisection ends on the first virus, maybe at half clamd's limit: later messages are not cut there."""
    send(tmp_path, clamd, INFECTED, "first")
    known = STREAM_LIMITS.get(clamd.address)
    assert known is not None and known.refused - known.accepted > CHUNK  # stopped early, on EICAR
    late = HAM.replace(b"See you at noon.", LINE * (LIMIT * 85 // 100_000) + EICAR + b"\r\n" + PADDING)
    outcome = send(tmp_path, clamd, late, "second")
    assert outcome.verdict.details == {"CLAMAV_VIRUS": "Eicar-Test-Signature"}, outcome.verdict.details


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_no_start_taken_follows_on_error_after_a_bounded_number_of_streams(tmp_path: Path, on_error: str) -> None:
    clamd = StreamMaxClamd(limit=10)  # not even the headers
    try:
        pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__on_error=on_error), "clamav")
        outcome, _ = run_message(pipeline, INFECTED)
        assert set(outcome.verdict.symbols) == {"CLAMAV_ERROR"}, outcome.verdict.details
        assert outcome.verdict.action == (Action.TEMPFAIL if on_error == "tempfail" else Action.ACCEPT)
        assert -1 not in clamd.refused and len(clamd.requests) == 1 + MAX_RESCANS
    finally:
        clamd.close()


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
def test_a_clamd_that_takes_a_few_bytes_does_not_judge_later_messages_clean(tmp_path: Path, on_error: str) -> None:
    # Third look: a clamd taking 1 byte of a stream learned a cut of 1 byte, and every later message, EICAR
    # included, was CLAMAV_SKIPPED_SIZE "its first 1 bytes scanned: clean".  Too little taken is clamd failing.
    clamd = StreamMaxClamd(limit=1)
    try:
        pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__on_error=on_error), "clamav")
        for _ in range(2):
            outcome, _ = run_message(pipeline, INFECTED)
            assert set(outcome.verdict.symbols) == {"CLAMAV_ERROR"}, outcome.verdict.details
            assert outcome.verdict.action == (Action.TEMPFAIL if on_error == "tempfail" else Action.ACCEPT)
        small, _ = run_message(pipeline, HAM.replace(b"See you at noon.", EICAR))
        assert set(small.verdict.symbols) == {"CLAMAV_ERROR"}, small.verdict.details
    finally:
        clamd.close()


class _Late:
    """A connection whose answers (sendall) come *delay* seconds late."""

    def __init__(self, conn: socket.socket, delay: float) -> None:
        self.conn, self.delay = conn, delay

    def sendall(self, data: bytes) -> None:
        time.sleep(self.delay)
        self.conn.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.conn, name)


class SlowClamd(StreamMaxClamd):
    """A StreamMaxClamd that takes *delay* seconds to answer each stream."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay
        self.handler = SlowClamd.serve_late

    def serve_late(self, conn: socket.socket) -> None:
        StreamMaxClamd.serve(self, _Late(conn, self.delay))  # type: ignore[arg-type]


def test_the_bisection_has_one_deadline(tmp_path: Path) -> None:
    # Third look: each rescan had the scanner's whole timeout, and twelve of a slow clamd held end of message for
    # minutes.  With a 1 s timeout and 0.6 s a rescan, no third rescan starts (a bound, not a measure of speed).
    clamd = SlowClamd(0.6)
    try:
        pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__timeout=1.0), "clamav")
        outcome, _ = run_message(pipeline, CLEAN)
        assert len(clamd.requests) <= 1 + 2, clamd.refused
        assert set(outcome.verdict.symbols) & {"CLAMAV_SKIPPED_SIZE", "CLAMAV_ERROR"}, outcome.verdict.details
    finally:
        clamd.close()


@pytest.mark.parametrize("lines", [60, 90])
def test_a_clamd_that_takes_enough_is_bisected_past_the_floor(tmp_path: Path, lines: int) -> None:
    # A quick look at the floor: with max_size 100K (floor 25,600) and clamd taking 30,000 bytes, the bisection
    # stopped within a chunk at 15,025 or 22,025 bytes taken: under the floor, every retry 451.
    clamd = StreamMaxClamd(limit=30_000)
    try:
        pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__max_size="100K"), "clamav")
        line = b"x" * 998 + b"\r\n"
        for _ in range(2):
            outcome, _ = run_message(pipeline, HAM.replace(b"See you at noon.", line * lines))
            assert "CLAMAV_SKIPPED_SIZE" in outcome.verdict.symbols, outcome.verdict.details
        infected, _ = run_message(pipeline, HAM.replace(b"See you at noon.", line * 20 + EICAR + b"\r\n" + line * lines))
        assert infected.verdict.details.get("CLAMAV_VIRUS") == "Eicar-Test-Signature"
    finally:
        clamd.close()
