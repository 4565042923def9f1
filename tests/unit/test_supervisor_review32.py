"""Supervisor (32nd review): a draining worker's listening socket is one that never becomes readable, and the
unix socket's directory milterd makes is searchable whatever the start's umask."""

from __future__ import annotations

import os
import select
import socket
import stat
from pathlib import Path

import pytest

from milterd.config import Config
from milterd.milter import supervisor

from .test_exposure_review import bound_by_bind


def test_a_stopping_worker_s_listening_socket_is_never_readable() -> None:
    # /dev/null in its place was always readable: libmilter's accept failed (ENOTSOCK, an error to syslog each time),
    # it waited 1, 2… 16 s between tries, and at the sixteenth (about 140 s) aborted the sessions in flight.
    listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    fd, address = listening.fileno(), listening.getsockname()
    pair = supervisor.stop_accepting(fd)
    try:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        assert poller.poll(0) == []  # libmilter's loop waits, never calls accept()
        assert socket.socket(fileno=os.dup(fd)).getsockopt(socket.SOL_SOCKET, socket.SO_TYPE) == socket.SOCK_STREAM
        with pytest.raises(ConnectionRefusedError):  # and the address is no longer served by this descriptor
            socket.create_connection(address, timeout=1).close()
    finally:
        listening.close()
        for end in pair:
            end.close()


@pytest.mark.parametrize("umask", [0o077, 0o027])
def test_the_socket_directory_milterd_makes_is_searchable_whatever_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, umask: int) -> None:
    # With systemd's UMask=0077 it was drwx------: Postfix could not reach the socket, and all mail got
    # milter_default_action while milterd logged "listening".
    path = tmp_path / "spool" / "milterd" / "milterd.sock"
    bound = bound_by_bind(path, monkeypatch)
    before = os.umask(umask)
    try:
        supervisor.open_socket(Config().with_changes({"milter.socket": f"unix:{path}", "milter.socket_mode": "0660"}))
    finally:
        os.umask(before)
        for sock in bound:
            sock.close()
    for directory in (path.parent, path.parent.parent):
        assert stat.S_IMODE(os.lstat(directory).st_mode) == 0o755, directory
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660


def test_a_drain_puts_the_quiet_socket_in_once_past_quiet_after(monkeypatch: pytest.MonkeyPatch) -> None:
    # Threads only: the drain waits for adapter.active (the connections in flight) with a clock of its own.
    clock = [0.0]
    monkeypatch.setattr(supervisor.time, "monotonic", lambda: clock[0])
    monkeypatch.setattr(supervisor.time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    monkeypatch.setattr(supervisor.adapter, "active", 1)
    quieted: list[float] = []
    supervisor._drain(60.0, lambda: quieted.append(clock[0]))
    assert len(quieted) == 1 and supervisor.QUIET_AFTER <= quieted[0] < supervisor.QUIET_AFTER + 0.1
    quieted.clear()
    supervisor._drain(supervisor.QUIET_AFTER / 2, lambda: quieted.append(clock[0]))
    assert quieted == []  # a drain that ends sooner leaves /dev/null in place
