"""Small leftovers: the release password and the Public Suffix List read without blocking and refused
when unusable, doctor on a check whose setup raises, and clamd's INSTREAM close and cut replies."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import pytest

from milterd import diagnostics
from milterd.checks.dmarc import Dmarc, org_domain
from milterd.config import Config
from milterd.options import ConfigError
from milterd.quarantine import Quarantine, QuarantineError
from milterd.scanners import ScannerError, parse_address
from milterd.scanners.clamd import InstreamScan

#: How long a call may take before it counts as hung.
PATIENCE = 3.0


def _in_time(call: Callable[[], Any], fifo: Path | None = None) -> Any:
    """What *call* returns or raises (the exception itself), failing the test if it blocks; a reader
    stuck on *fifo* is let go (a writer opens and closes it) so that no thread stays behind."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as exc:  # noqa: BLE001 - the test looks at what was raised
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(PATIENCE)
    hung = thread.is_alive()
    if hung and fifo is not None:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(PATIENCE)
    assert not hung, "blocked"
    return outcome[0]


# --- [quarantine] release_password_file ------------------------------------------------
def _quarantine(password_file: Path) -> Quarantine:
    config = Config().with_changes({"quarantine.release_user": "release", "quarantine.release_password_file": str(password_file)})
    return Quarantine(SimpleNamespace(engine=None), config)  # type: ignore[arg-type]  # _auth touches no store


def test_a_fifo_as_the_release_password_file_is_refused_without_hanging(tmp_path: Path) -> None:
    fifo = tmp_path / "release.pw"
    os.mkfifo(fifo)
    error = _in_time(_quarantine(fifo)._auth, fifo)
    assert isinstance(error, QuarantineError)
    assert str(error) == f"[quarantine] release_password_file: cannot read {fifo}: not a regular file"


def test_a_release_password_file_that_is_not_utf8_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "release.pw"
    path.write_bytes(b"s\xffcret\n")
    with pytest.raises(QuarantineError) as caught:
        _quarantine(path)._auth()
    assert str(caught.value) == f"[quarantine] release_password_file: cannot read {path}: not UTF-8 text"


def test_the_release_password_is_still_the_first_line_of_a_regular_file(tmp_path: Path) -> None:
    path = tmp_path / "release.pw"
    path.write_text("s3cret\nignored\n")
    assert _quarantine(path)._auth() == ("release", "s3cret")


# --- [checks.dmarc] public_suffix_list -------------------------------------------------
def _dmarc(path: Path) -> Dmarc:
    config = Config.model_validate({"checks": {"dmarc": {"public_suffix_list": str(path)}}})
    return Dmarc(SimpleNamespace(config=config))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda p: None, "No such file or directory"),
        (lambda p: p.mkdir(), "Is a directory"),
        (lambda p: p.write_bytes(b""), "not a Public Suffix List: it holds no rule"),
        (lambda p: p.write_bytes(b"// only a comment\n\n"), "not a Public Suffix List: it holds no rule"),
        (lambda p: p.write_bytes(b"com\n\xff\n"), "not UTF-8 text (byte 4)"),
    ],
    ids=["missing", "directory", "empty", "comments only", "not UTF-8"],
)
def test_a_bad_public_suffix_list_is_refused_when_the_check_is_built(tmp_path: Path, make: Callable[[Path], None], reason: str) -> None:
    path = tmp_path / "psl.dat"
    make(path)
    with pytest.raises(ConfigError) as caught:
        _dmarc(path)
    assert (caught.value.file, caught.value.key) == ("milter.conf", "[checks.dmarc] public_suffix_list")
    assert caught.value.reason == f"cannot use {path}: {reason}"


def test_a_fifo_as_the_public_suffix_list_is_refused_when_the_check_is_built(tmp_path: Path) -> None:
    fifo = tmp_path / "psl.dat"
    os.mkfifo(fifo)
    error = _in_time(lambda: _dmarc(fifo), fifo)
    assert isinstance(error, ConfigError)
    assert error.reason == f"cannot use {fifo}: not a regular file"


def test_the_public_suffix_list_is_loaded_when_the_check_is_built_not_by_the_first_message(tmp_path: Path) -> None:
    path = tmp_path / "psl.dat"
    path.write_text("// a small list\nuk\nco.uk\n")
    _dmarc(path)
    path.unlink()  # the workers, forked after the build, never open it
    assert org_domain("mail.bank.co.uk", str(path)) == "bank.co.uk"


# --- doctor --------------------------------------------------------------------------
def test_doctor_reports_a_check_whose_setup_raises_as_a_failed_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_build(config: Config) -> Any:
        raise RuntimeError("the check's database is not there")

    monkeypatch.setattr(diagnostics, "load_config", lambda path: Config())
    monkeypatch.setattr(diagnostics, "build", broken_build)
    for probe in ("probe_database", "probe_connections", "probe_scanners", "probe_dns", "probe_dkim_keys", "probe_private_files", "probe_socket_exposure"):
        monkeypatch.setattr(diagnostics, probe, lambda *args: [])
    monkeypatch.setattr(diagnostics, "probe_learner", lambda config: diagnostics.Finding("learner", "skip", "stub"))
    monkeypatch.setattr(diagnostics, "probe_release_smtp", lambda config: diagnostics.Finding("release smtp", "skip", "stub"))
    findings = diagnostics.diagnose(None, use_postconf=False)
    assert findings[0] == diagnostics.Finding("configuration", "fail", "RuntimeError: the check's database is not there")
    assert [f.name for f in findings[1:]] == ["learner", "release smtp"]  # the other probes still ran


# --- clamd INSTREAM ------------------------------------------------------------------
class SlowCloseSocket:
    """A socket whose close() takes a while, counting its calls."""

    def __init__(self) -> None:
        self.closes = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def close(self) -> None:
        self.closes += 1
        self.entered.set()
        self.release.wait(PATIENCE)


def test_instream_close_from_two_threads_closes_the_socket_once() -> None:
    sock = SlowCloseSocket()
    scan = InstreamScan(sock, parse_address("tcp:127.0.0.1:3310"), 1.0, 65536)  # type: ignore[arg-type]
    first = threading.Thread(target=scan.close)
    first.start()
    assert sock.entered.wait(PATIENCE)
    second = threading.Thread(target=scan.close)  # the timeout's cleanup while the check's close is under way
    second.start()
    second.join(0.5)
    sock.release.set()
    first.join(PATIENCE)
    second.join(PATIENCE)
    assert sock.closes == 1
    scan.close()
    assert sock.closes == 1 and scan.closed


def _finish_with_reply(reply: bytes) -> Any:
    ours, clamd = socket.socketpair()
    try:
        scan = InstreamScan(ours, parse_address("tcp:127.0.0.1:3310"), 2.0, 65536)
        clamd.sendall(reply)
        clamd.shutdown(socket.SHUT_WR)
        try:
            return scan.finish()
        except ScannerError as exc:
            return exc
    finally:
        clamd.close()


def test_a_clean_verdict_cut_off_by_a_closed_connection_is_an_error() -> None:
    outcome = _finish_with_reply(b"stream: OK")
    assert isinstance(outcome, ScannerError)
    assert str(outcome) == "clamd tcp:127.0.0.1:3310: answer cut off by a closed connection ('stream: OK')"


@pytest.mark.parametrize("reply", [b"stream: OK\x00", b"stream: OK\n"])
def test_a_terminated_clean_verdict_is_clean(reply: bytes) -> None:
    assert _finish_with_reply(reply).status == "OK"


def test_a_virus_verdict_cut_off_still_counts_as_found() -> None:
    outcome = _finish_with_reply(b"stream: Eicar-Test-Signature FOUND")
    assert (outcome.status, outcome.virus) == ("FOUND", "Eicar-Test-Signature")
