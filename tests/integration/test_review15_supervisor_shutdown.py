"""Review 15 of the supervisor: at SIGTERM a new connection is refused at once (Postfix applies
milter_default_action) while the sessions in flight finish; a NUL in a path of milter.conf is
refused at start in one line, with its key."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import NO_CHECKS
from tests.harness.milterd import Milterd


def _command(code: bytes, *fields: bytes) -> bytes:
    body = code + b"".join(fields)
    return len(body).to_bytes(4, "big") + body


def _reply(conn: socket.socket) -> bytes:
    head = conn.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
        return b""
    return conn.recv(int.from_bytes(head, "big"), socket.MSG_WAITALL)


def _connect(address: str | tuple[str, int], timeout: float = 30) -> socket.socket:
    if isinstance(address, str):
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(timeout)
        try:
            conn.connect(address)
        except BaseException:
            conn.close()
            raise
        return conn
    return socket.create_connection(address, timeout=timeout)


def _open_session(address: str | tuple[str, int]) -> socket.socket:
    """A milter session up to RCPT TO, each command answered: a worker serves it."""
    conn = _connect(address)
    conn.sendall(_command(b"O", (6).to_bytes(4, "big"), (0x1FF).to_bytes(4, "big"), (0).to_bytes(4, "big")))
    assert _reply(conn)[:1] == b"O"
    for command in (
        _command(b"C", b"mail.example.net\0", b"4", (2525).to_bytes(2, "big"), b"192.0.2.7\0"),
        _command(b"H", b"mail.example.net\0"),
        _command(b"M", b"<alice@example.net>\0"),
        _command(b"R", b"<bob@example.org>\0"),
    ):
        conn.sendall(command)
        assert _reply(conn)[:1] == b"c"
    return conn


def _finish(conn: socket.socket) -> bytes:
    """Send the rest of the message; the reply to its end of message."""
    conn.sendall(
        _command(b"L", b"From\0", b"alice@example.net\0")
        + _command(b"L", b"Subject\0", b"held over SIGTERM\0")
        + _command(b"N")
        + _command(b"B", b"hello\r\n")
        + _command(b"E")
    )
    continues = 0
    while True:
        reply = _reply(conn)
        if not reply or reply[:1] in (b"a", b"r", b"t", b"d", b"y") or (reply[:1] == b"c" and continues == 4):
            return reply
        continues += reply[:1] == b"c"


def _refused_within(address: str | tuple[str, int], seconds: float) -> float | None:
    """How long until a connection to *address* is refused (None: still accepted after *seconds*)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        try:
            _connect(address, timeout=1).close()
        except (ConnectionRefusedError, FileNotFoundError):
            return time.monotonic() - started
        except ConnectionResetError:  # queued as the listening socket closed: the next try is refused
            pass
        time.sleep(0.05)
    return None


@pytest.mark.parametrize("family", ["inet", "unix"])
def test_sigterm_refuses_new_connections_at_once_while_a_held_session_finishes(tmp_path: Path, family: str) -> None:
    sock = tmp_path / "run" / "milterd.sock"
    milterd = Milterd(tmp_path / "m", {**NO_CHECKS, "milter": {"workers": 2, "shutdown_timeout": 15}},
                      socket=f"unix:{sock}" if family == "unix" else None).start()
    address: str | tuple[str, int] = str(sock) if family == "unix" else ("127.0.0.1", milterd.port)
    try:
        held = _open_session(address)
        milterd.signal(signal.SIGTERM)
        refused_after = _refused_within(address, 3)
        with held:
            reply = _finish(held)
        assert milterd.process is not None
        assert milterd.process.wait(30) == 0
    finally:
        milterd.stop()
    assert refused_after is not None and refused_after < 1.5, f"a new connection was still queued after SIGTERM ({refused_after})"
    assert reply[:1] in (b"a", b"c"), (reply, milterd.stderr())
    assert not sock.exists()
    assert "Traceback" not in milterd.stderr()


def test_sigterm_leaves_another_instances_socket_in_place(tmp_path: Path) -> None:
    """The socket file is removed only while it is still the one this milterd bound."""
    sock = tmp_path / "run" / "milterd.sock"
    milterd = Milterd(tmp_path / "m", {**NO_CHECKS, "milter": {"workers": 1}}, socket=f"unix:{sock}").start()
    try:
        sock.unlink()  # as a second milterd does with a socket nobody listens on: its own in its place
        other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        other.bind(str(sock))
        other.listen()
        milterd.signal(signal.SIGTERM)
        assert milterd.process is not None
        assert milterd.process.wait(30) == 0
        assert sock.exists()
        other.close()
    finally:
        milterd.stop()


NUL_VALUES = [
    ("milter", "spool_dir", "/tmp/a\\u0000b"),
    ("milter", "socket", "unix:/tmp/a\\u0000b.sock"),
    ("database", "url", "sqlite:////tmp/a\\u0000b.sqlite"),
]


@pytest.mark.parametrize(("section", "key", "value"), NUL_VALUES)
def test_serve_refuses_a_nul_in_a_path_in_one_line_without_a_traceback(tmp_path: Path, section: str, key: str, value: str) -> None:
    tables = {
        "milter": {"socket": '"inet:127.0.0.1:9"', **({"user": '"root"'} if os.geteuid() == 0 else {})},
        "database": {"url": f'"sqlite:///{tmp_path}/milterd.sqlite"'},
        "dns": {"nameservers": '["127.0.0.1:9"]'},
    }
    tables[section][key] = f'"{value}"'  # TOML's \u0000: a NUL in the value read
    conf = tmp_path / "milter.conf"
    conf.write_text("".join(f"[{name}]\n" + "".join(f"{k} = {v}\n" for k, v in table.items()) for name, table in tables.items()))
    result = subprocess.run([sys.executable, "-m", "milterd", "serve", "-c", str(conf)],
                            capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"milterd: {conf}: [{section}] {key}: "), lines[0]
    assert "NUL" in lines[0]
