"""clamav review (fourth session): ``[clamav] max_size`` above clamd's ``StreamMaxLength`` delivered a virus
followed by padding unscanned: clamd refused the stream part-way and the check kept only ``CLAMAV_SKIPPED_SIZE``.
What clamd took before the refused chunk is now scanned again from the spool, and the worker cuts its later
messages there up front (a fake clamd on loopback that refuses as clamd does: at the chunk that goes past it)."""

from __future__ import annotations

import logging
import socket
import struct
from pathlib import Path
from typing import Iterator

import pytest

from milterd.message.model import Action
from milterd.message.pipeline import Outcome, Pipeline
from tests.harness.pipeline import HAM, run_message, scanner_pipeline
from tests.harness.postfix import free_port
from tests.harness.scanners import EICAR

from .test_scanners_review import FakeServer, _read_exact, drive, only

LIMIT = 200_000  # the fake clamd's StreamMaxLength; [clamav] max_size keeps its default, 25M
PADDING = (b"x" * 998 + b"\r\n") * 600  # 600 kB: Postfix passes it in 64 kB chunks (run_message)
INFECTED = HAM.replace(b"See you at noon.", EICAR + b"\r\n" + PADDING)
CLEAN = HAM.replace(b"See you at noon.", PADDING)


class StreamMaxClamd(FakeServer):
    """A clamd whose StreamMaxLength is LIMIT: a chunk going past it is answered ``INSTREAM size limit exceeded``
    as its length is read, and the connection closed; a stream it takes whole is FOUND when it holds EICAR."""

    def __init__(self) -> None:
        self.refused: list[int] = []  # per connection: the bytes taken before a refusal, or -1 for a verdict
        super().__init__(StreamMaxClamd.serve)

    def serve(self, conn: socket.socket) -> None:
        _read_exact(conn, len(b"zINSTREAM\x00"))
        payload = b""
        while True:
            (length,) = struct.unpack(">I", _read_exact(conn, 4))
            if length == 0:
                break
            if len(payload) + length > LIMIT:
                self.requests.append(payload)
                self.refused.append(len(payload))
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
    """The size of the last stream clamd took whole (a refusal before it may show a chunk late: retried smaller)."""
    assert clamd.refused and clamd.refused[-1] == -1, clamd.refused
    size = len(clamd.requests[-1])
    assert 0 < size <= LIMIT
    return size


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
    """The size clamd took is kept for the worker (its later pipelines too): one connection each, never refused."""
    caplog.set_level(logging.WARNING, logger="milterd")
    send(tmp_path, clamd, CLEAN, "first")
    learned = judged(clamd)
    del clamd.requests[:], clamd.refused[:]

    infected = send(tmp_path, clamd, INFECTED, "second")
    assert infected.verdict.details.get("CLAMAV_VIRUS") == "Eicar-Test-Signature"
    assert clamd.refused == [-1] and len(clamd.requests[0]) == learned  # one stream, cut where clamd took the first

    clean = send(tmp_path, clamd, CLEAN, "third")
    assert clean.verdict.details == {"CLAMAV_SKIPPED_SIZE": skipped_clean(learned)}
    assert clamd.refused == [-1, -1]
    learnt = [r for r in caplog.records if "StreamMaxLength" in r.getMessage()]
    assert len(learnt) == 1 and str(learned) in learnt[0].getMessage()  # logged once, when learned


def test_a_message_under_the_learned_limit_is_scanned_whole(tmp_path: Path, clamd: StreamMaxClamd) -> None:
    send(tmp_path, clamd, CLEAN, "first")
    small = HAM.replace(b"See you at noon.", EICAR)
    outcome = send(tmp_path, clamd, small, "second")
    assert outcome.verdict.details == {"CLAMAV_VIRUS": "Eicar-Test-Signature"}
    assert clamd.requests[-1] == small
