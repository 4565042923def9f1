"""The scanner clients and checks when clamd or spamd is down or hangs (no daemon: a closed port, a silent socket)."""

from __future__ import annotations

import socket
import threading
from pathlib import Path
from typing import Iterator

import pytest

from milterd.message.model import Action
from milterd.scanners import ScannerError
from milterd.scanners.clamd import ClamdClient
from milterd.scanners.spamd import SpamdClient
from tests.harness.pipeline import HAM, run_message, scanner_pipeline
from tests.harness.postfix import free_port


@pytest.fixture()
def silent_server() -> Iterator[str]:
    """A TCP server that accepts and never answers (a hung scanner)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"tcp:127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_clamd_down_and_hung(silent_server: str) -> None:
    port = free_port()
    with pytest.raises(ScannerError, match="cannot connect"):
        ClamdClient(f"tcp:127.0.0.1:{port}", timeout=2).instream()
    with pytest.raises(ScannerError, match="no answer within"):
        ClamdClient(silent_server, timeout=0.3).ping()
    stream = ClamdClient(silent_server, timeout=0.3).instream()
    stream.send(b"hello")
    with pytest.raises(ScannerError, match="no answer within"):
        stream.finish()


def test_spamd_down_and_hung(silent_server: str) -> None:
    with pytest.raises(ScannerError, match="cannot connect"):
        SpamdClient(f"tcp:127.0.0.1:{free_port()}", timeout=2).check(HAM)
    with pytest.raises(ScannerError, match="no answer within"):
        SpamdClient(silent_server, timeout=0.3).check(HAM)


def test_checks_scanners_down(tmp_path: Path) -> None:
    down = f"tcp:127.0.0.1:{free_port()}"
    outcome, _ = run_message(scanner_pipeline(tmp_path, down, down), HAM)
    assert outcome.verdict.action == Action.TEMPFAIL and str(outcome.reply).startswith("451 4.7.1")
    assert {"CLAMAV_ERROR", "SPAMD_ERROR"} <= set(outcome.verdict.symbols)
    outcome, _ = run_message(scanner_pipeline(tmp_path, down, down, clamav__on_error="accept"), HAM)
    assert outcome.verdict.action == Action.ACCEPT
    outcome, _ = run_message(scanner_pipeline(tmp_path, down, down, clamav__on_error="accept", spamd__on_error="tempfail"), HAM)
    assert outcome.verdict.action == Action.TEMPFAIL
