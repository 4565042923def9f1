"""Supervisor review (thirtieth session), with real milterd processes.

- Ctrl-C on a foreground ``milterd serve`` sends SIGINT to the whole process group (so do ``pkill milterd`` and
  ``systemctl kill`` with SIGTERM): the workers died at once and the message in flight was cut unanswered,
  while the supervisor, taking the same signal, lets it finish.
- A second ``serve`` on the unix socket of a running milterd whose listen backlog is full (its workers busy)
  took the socket over: the probe got EAGAIN, not a timeout, and called the socket stale.
- A worker stuck for good (a C call that never returns; SIGSTOP stands for it here) was never noticed: libmilter's
  accept thread went on taking connections nobody answered, for as long as milterd ran.
"""

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
from tests.integration.test_review15_supervisor_shutdown import _finish, _open_session


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_group_lets_the_message_in_flight_finish(tmp_path: Path, signum: signal.Signals) -> None:
    milterd = Milterd(tmp_path / "m", {**NO_CHECKS, "milter": {"workers": 2, "shutdown_timeout": 15}}).start()
    try:
        held = _open_session(("127.0.0.1", milterd.port))
        assert milterd.process is not None
        os.killpg(milterd.process.pid, signum)  # the supervisor and every worker
        with held:
            reply = _finish(held)
        assert milterd.process.wait(30) == 0
    finally:
        milterd.stop()
    assert reply[:1] in (b"a", b"c"), (reply, milterd.stderr())
    assert "Traceback" not in milterd.stderr()


def test_a_second_serve_leaves_a_busy_unix_socket_alone(tmp_path: Path) -> None:
    sock = tmp_path / "run" / "milterd.sock"
    first = Milterd(tmp_path / "a", {**NO_CHECKS, "milter": {"workers": 1}}, socket=f"unix:{sock}").start()
    stopped = first.workers()
    queued: list[socket.socket] = []
    try:
        before = os.stat(sock).st_ino
        for pid in stopped:
            os.kill(pid, signal.SIGSTOP)  # busy workers: nobody accepts, the backlog fills
        for _ in range(4096):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.setblocking(False)
            try:
                conn.connect(str(sock))
            except BlockingIOError:
                conn.close()
                break
            queued.append(conn)
        conf = first.config
        second = subprocess.run([sys.executable, "-m", "milterd", "serve", "-c", str(conf)],
                                capture_output=True, text=True, timeout=60, cwd=tmp_path)
        assert second.returncode != 0 and "is in use" in second.stderr, second.stderr
        assert os.stat(sock).st_ino == before
    finally:
        for conn in queued:
            conn.close()
        for pid in stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        first.stop()


def test_a_worker_that_gives_no_sign_of_life_is_killed_and_replaced(tmp_path: Path) -> None:
    milterd = Milterd(tmp_path / "m", {**NO_CHECKS, "milter": {"workers": 1, "worker_timeout": 2}}).start()
    try:
        [stuck] = milterd.workers()
        os.kill(stuck, signal.SIGSTOP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and milterd.workers() in ([], [stuck]):
            time.sleep(0.2)
        [replacement] = milterd.workers()
        assert replacement != stuck
        assert f"worker {stuck} gave no sign of life for 2s ([milter] worker_timeout): killed, a new one starts" in milterd.stderr()
        with _open_session(("127.0.0.1", milterd.port)) as conn:  # served again
            assert _finish(conn)[:1] in (b"a", b"c")
    finally:
        milterd.stop()


def test_a_busy_worker_that_beats_is_left_alone(tmp_path: Path) -> None:
    milterd = Milterd(tmp_path / "m", {**NO_CHECKS, "milter": {"workers": 1, "worker_timeout": 2}}).start()
    try:
        [worker] = milterd.workers()
        held = _open_session(("127.0.0.1", milterd.port))  # a session open past worker_timeout, its worker well
        time.sleep(5)
        with held:
            assert _finish(held)[:1] in (b"a", b"c")
        assert milterd.workers() == [worker] and "gave no sign of life" not in milterd.stderr()
    finally:
        milterd.stop()
