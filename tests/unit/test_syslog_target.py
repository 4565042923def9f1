"""log_target = "syslog" when syslog does not take the lines: each line became a "--- Logging error ---" traceback
on stderr and was lost (its daemon stopped), or stderr was used without a word (no /dev/log; found by review)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Iterator

import pytest

from milterd import logs


@pytest.fixture(autouse=True)
def _own_handlers() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def syslog_daemon(path: Path) -> socket.socket:
    """A syslog daemon's socket at *path*: what milterd sends there, to read."""
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon.bind(str(path))
    return daemon


def logging_to_syslog(path: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    """milterd's log set to syslog at *path*, with a daemon listening there."""
    daemon = syslog_daemon(path)
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", str(path))
    logs.setup_logging("syslog", "info")
    return daemon


def test_a_syslog_that_stops_taking_lines_sends_them_to_stderr_said_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                          capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "log"
    daemon = logging_to_syslog(path, monkeypatch)
    logging.getLogger("milterd").info("first line")
    assert b"first line" in daemon.recv(4096)
    daemon.close()
    path.unlink()  # the daemon is gone
    logging.getLogger("milterd").info("second line")
    logging.getLogger("milterd").info("third line")
    err = capsys.readouterr().err
    assert "Logging error" not in err and "Traceback" not in err, err
    assert err.count("does not take milterd's log") == 1
    assert "milterd[" in err and "INFO second line" in err and "INFO third line" in err  # stderr's format, with the level
    daemon = syslog_daemon(path)  # back
    logging.getLogger("milterd").info("fourth line")
    assert b"fourth line" in daemon.recv(4096)
    assert "takes milterd's log again" in capsys.readouterr().err
    daemon.close()


def test_no_syslog_at_all_is_said_and_logs_to_stderr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", str(tmp_path / "missing"))
    logs.setup_logging("syslog", "info")
    logging.getLogger("milterd").info("a line")
    err = capsys.readouterr().err
    assert "does not take milterd's log" in err and "a line" in err and "Traceback" not in err


def test_a_line_that_cannot_be_formatted_is_no_syslog_outage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    # Taken for syslog failing ("does not take", then "takes again"), the line and its call site lost (review).
    daemon = logging_to_syslog(tmp_path / "log", monkeypatch)
    logging.getLogger("milterd").info("count %d", "x")
    err = capsys.readouterr().err
    assert "does not take" not in err and "Logging error" in err
    daemon.close()
