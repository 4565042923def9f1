"""clamav review (twenty-ninth session): a virus padded past ``[clamav] max_size`` was delivered unscanned,
although the part holding it had been streamed to clamd (the stream was dropped without asking its verdict).
The first ``max_size`` bytes of a larger message are now judged (a fake clamd on loopback)."""

from __future__ import annotations

import socket
import struct
from pathlib import Path
from typing import Callable, Iterator

import pytest

from milterd.message.model import Action, Session
from tests.harness.pipeline import HAM, scanner_pipeline
from tests.harness.postfix import free_port

from .test_scanners_review import MARKER, FakeServer, _read_exact, drive, fake_clamd, only


@pytest.fixture()
def clamd() -> Iterator[FakeServer]:
    server = FakeServer(fake_clamd)
    yield server
    server.close()

PADDED = HAM.replace(b"See you at noon.", MARKER + b"\r\n" + b"y" * 5000)


def test_a_virus_padded_past_max_size_is_found_in_the_stream(tmp_path: Path, clamd: FakeServer) -> None:
    pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__max_size="1K"), "clamav")
    outcome = drive(pipeline, PADDED)
    assert outcome.verdict.details.get("CLAMAV_VIRUS") == "Fake.Marker" and outcome.verdict.action == Action.REJECT
    assert [len(request) for request in clamd.requests] == [1024]


def test_a_virus_padded_past_max_size_and_declared_so_is_found_from_the_spool(tmp_path: Path, clamd: FakeServer) -> None:
    pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__max_size="1K"), "clamav")
    outcome = drive(pipeline, PADDED, mail_args={"SIZE": "50000000"})
    assert outcome.verdict.details.get("CLAMAV_VIRUS") == "Fake.Marker" and outcome.verdict.action == Action.REJECT
    assert [len(request) for request in clamd.requests] == [1024]


def test_a_clean_start_of_a_large_message_is_still_skipped_for_size(tmp_path: Path, clamd: FakeServer) -> None:
    pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__max_size="1K"), "clamav")
    outcome = drive(pipeline, HAM.replace(b"See you at noon.", b"y" * 5000 + MARKER))  # the marker past the first 1024 bytes
    assert "CLAMAV_VIRUS" not in outcome.verdict.symbols and outcome.verdict.action == Action.ACCEPT
    assert "first 1024 bytes scanned: clean" in outcome.verdict.details["CLAMAV_SKIPPED_SIZE"]
    assert not any(edit.op == "add" and edit.name.startswith("X-Virus") for edit in outcome.edits)  # not "Clean": not scanned whole


@pytest.mark.parametrize("on_error", ["tempfail", "accept"])
@pytest.mark.parametrize("size", [{"SIZE": "50000000"}, {}], ids=["size-declared", "streamed"])
def test_clamd_down_for_a_large_message_follows_on_error(tmp_path: Path, on_error: str, size: dict[str, str]) -> None:
    """Thirtieth session's review: the first max_size bytes unjudged (clamd down) were a size skip, delivered under
    on_error = "tempfail"; they follow on_error, as a message under max_size does."""
    down = f"tcp:127.0.0.1:{free_port()}"
    pipeline = only(scanner_pipeline(tmp_path, down, down, clamav__max_size="1K", clamav__on_error=on_error), "clamav")
    outcome = drive(pipeline, PADDED, mail_args=size)
    assert "CLAMAV_ERROR" in outcome.verdict.symbols and "CLAMAV_SKIPPED_SIZE" not in outcome.verdict.symbols
    assert outcome.verdict.action == (Action.TEMPFAIL if on_error == "tempfail" else Action.ACCEPT)


def closing_the_first_stream(server: FakeServer, conn: socket.socket) -> None:
    """clamd closing the first stream unanswered (its idle timeout while Postfix sent the rest); then as fake_clamd."""
    if not server.requests:
        server.requests.append(b"")
        conn.recv(65536)
        return
    fake_clamd(server, conn)


def test_a_stream_clamd_closed_is_judged_again_from_the_spool(tmp_path: Path) -> None:
    server = FakeServer(closing_the_first_stream)
    try:
        pipeline = only(scanner_pipeline(tmp_path, server.address, f"tcp:127.0.0.1:{free_port()}", clamav__max_size="1K"), "clamav")
        outcome = drive(pipeline, PADDED)
        assert outcome.verdict.details.get("CLAMAV_VIRUS") == "Fake.Marker" and outcome.verdict.action == Action.REJECT
        assert [len(request) for request in server.requests] == [0, 1024]
    finally:
        server.close()


def test_mail_from_trusted_and_authenticated_clients_is_scanned_for_viruses_by_default(tmp_path: Path, clamd: FakeServer) -> None:
    """A review: EICAR from an SMTP AUTH login or from 127.0.0.1 (sendmail(1) with non_smtpd_milters) never reached
    clamd; clamav-milter, which milterd replaces, scans all mail by default."""
    from milterd.config import Config

    assert Config().clamav.scan_trusted is True
    pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}"), "clamav")
    session = Session(client_addr="192.0.2.10", client_name="mail.example.org", helo="mail.example.org", family="inet", auth_user="alice")
    outcome = drive(pipeline, HAM.replace(b"See you at noon.", MARKER), session=session)
    assert outcome.verdict.details.get("CLAMAV_VIRUS") == "Fake.Marker" and outcome.verdict.action == Action.REJECT


def test_a_forged_clean_status_goes_when_the_check_itself_fails(tmp_path: Path, clamd: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A review's suspicion: with on_check_error = "accept" (the default), an internal error of the clamav check left a
    sender's "X-Virus-Status: Clean" on a message nothing scanned."""
    from milterd.checks import clamav
    from milterd.message.model import HeaderEdit

    def broken(self: object, envelope: object) -> list[object]:
        raise RuntimeError("a bug")

    monkeypatch.setattr(clamav.ClamavCheck, "_verdict", broken)
    pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}"), "clamav")
    forged = HAM.replace(b"Subject: lunch\r\n", b"Subject: lunch\r\nX-Virus-Status: Clean\r\n")
    outcome = drive(pipeline, forged)
    assert outcome.verdict.action == Action.ACCEPT and "CHECK_ERROR" in outcome.verdict.symbols
    assert HeaderEdit("change", "X-Virus-Status", "", 1) in outcome.edits


def test_a_stream_lost_on_its_last_chunk_before_max_size_is_judged_again_from_the_spool(
        tmp_path: Path, clamd: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chunk that reaches max_size failed to send: the size skip hid the failure, the first bytes unjudged."""
    from milterd.scanners import ScannerError
    from milterd.scanners.clamd import InstreamScan

    send = InstreamScan.send
    lost: list[int] = []

    def losing_the_last(self: InstreamScan, data: bytes) -> None:
        if self.sent + len(data) == 1024 and not lost:  # the stream's; the spool's scan sends as ever
            lost.append(len(data))
            self.close()
            raise ScannerError("clamd: connection lost: Broken pipe")
        send(self, data)

    monkeypatch.setattr(InstreamScan, "send", losing_the_last)
    pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__max_size="1K"), "clamav")
    outcome = drive(pipeline, PADDED)
    assert outcome.verdict.details.get("CLAMAV_VIRUS") == "Fake.Marker" and outcome.verdict.action == Action.REJECT
    assert [len(request) for request in clamd.requests] == [1024]


def refusing_past(limit: int) -> Callable[[FakeServer, socket.socket], None]:
    """A clamd whose StreamMaxLength is *limit*: 'size limit exceeded' at the end of a longer stream."""
    def serve(server: FakeServer, conn: socket.socket) -> None:
        _read_exact(conn, len(b"zINSTREAM\x00"))
        total = 0
        while True:
            (length,) = struct.unpack(">I", _read_exact(conn, 4))
            if length == 0:
                break
            total += len(_read_exact(conn, length))
        server.requests.append(b"x" * total)
        conn.sendall(b"INSTREAM size limit exceeded. ERROR\x00" if total > limit else b"stream: OK\x00")
    return serve


def test_a_max_size_over_clamds_stream_limit_sends_the_start_once(tmp_path: Path) -> None:
    """A second look: 'size limit exceeded' at the stream's end sent the same bytes again from the spool.  A fourth
    (tests/unit/test_clamav_streammax.py): what clamd took before the refused chunk is scanned again, not nothing."""
    server = FakeServer(refusing_past(900))
    try:
        pipeline = only(scanner_pipeline(tmp_path, server.address, f"tcp:127.0.0.1:{free_port()}", clamav__max_size="1K"), "clamav")
        outcome = drive(pipeline, PADDED)
        first, again = [len(request) for request in server.requests]
        assert first == 1024 and 0 < again < 900  # the headers, the chunk before the body's refused one
        assert outcome.verdict.details == {"CLAMAV_SKIPPED_SIZE": f"size over {again} (clamd's StreamMaxLength); its first {again} bytes scanned: clean"}
    finally:
        server.close()


def test_a_silent_clamd_on_the_chunk_reaching_max_size_is_not_asked_again(
        tmp_path: Path, clamd: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """A second look: the send timing out on that chunk lost its ScannerTimeout, and the spool was sent to clamd again."""
    from milterd.scanners import ScannerTimeout
    from milterd.scanners.clamd import InstreamScan

    send = InstreamScan.send
    silent: list[int] = []

    def silent_at_the_last(self: InstreamScan, data: bytes) -> None:
        if self.sent + len(data) == 1024 and not silent:  # once: a second stream would be answered
            silent.append(len(data))
            self.close()
            raise ScannerTimeout("clamd: sending timed out after 1.5s")
        send(self, data)

    monkeypatch.setattr(InstreamScan, "send", silent_at_the_last)
    pipeline = only(scanner_pipeline(tmp_path, clamd.address, f"tcp:127.0.0.1:{free_port()}", clamav__max_size="1K", clamav__on_error="tempfail"), "clamav")
    outcome = drive(pipeline, PADDED)
    assert outcome.verdict.action == Action.TEMPFAIL and "sending timed out" in outcome.verdict.details["CLAMAV_ERROR"]
    assert clamd.requests == []  # the stream never ended, and nothing was sent again
