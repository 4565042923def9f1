"""Review of the supervisor's lifecycle (milterd/milter/supervisor.py, milterd/commands/serve.py):
the store is checked before the milter socket listens, a second ``serve`` leaves the running
one alone, and a worker that dies at once on every start is not restarted in a tight loop."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from milterd.config import Config, ConfigError
from milterd.endpoints import parse_socket
from milterd.milter import supervisor
from milterd.services import build
from tests.harness.milterd import Milterd


def _popen(milterd: Milterd, *extra: str, code: str | None = None) -> subprocess.Popen[bytes]:
    """``milterd serve`` for *milterd*'s milter.conf, its output appended to its stderr file;
    with *code*, that Python runs first (a fault injected into the supervisor's module)."""
    stderr = milterd.stderr_path.open("ab")
    if code is None:
        argv = [sys.executable, "-m", "milterd", "serve", "-c", str(milterd.config), *extra]
    else:
        boot = f"import sys\n{code}\nfrom milterd.cli import main\nsys.exit(main(sys.argv[1:]))\n"
        argv = [sys.executable, "-c", boot, "serve", "-c", str(milterd.config), *extra]
    try:
        return subprocess.Popen(argv, stdout=stderr, stderr=stderr, cwd=milterd.root, start_new_session=True,
                                env=dict(os.environ, PYTHONUNBUFFERED="1"))
    finally:
        stderr.close()


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


def _wait_for(predicate: object, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_a_store_that_cannot_be_used_is_refused_before_the_socket_listens(tmp_path: Path) -> None:
    """The store is checked first: Postfix never gets a connection accepted by a milterd
    that is about to exit (it would apply milter_default_action to that session)."""
    store = tmp_path / "empty.sqlite"
    sqlite3.connect(store).close()  # a database without milterd's schema, which serve may not create
    store.chmod(0o600)  # private, as serve requires of a store it did not make
    sock = tmp_path / "run" / "milterd.sock"
    milterd = Milterd(tmp_path / "m", {"database": {"url": f"sqlite:///{store}", "auto_upgrade": False}}, socket=f"unix:{sock}")
    process = _popen(milterd)
    appeared = False
    try:
        while process.poll() is None:
            appeared = appeared or sock.exists()
            time.sleep(0.001)
    finally:
        _stop(process)
    assert process.returncode == 1
    assert "schema is at nothing" in milterd.stderr() and "milterd db upgrade" in milterd.stderr()
    assert "Traceback" not in milterd.stderr()
    assert not appeared, "the milter socket listened before the store was checked"
    assert not sock.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="the review's start as root")
def test_a_socket_directory_others_may_write_is_refused_before_anything_listens(tmp_path: Path) -> None:
    """Thirty-fifth review: in a directory mode 0777, another account removed the socket and listened in its
    place; Postfix handed it every message.  serve refuses the place, naming the key and what to do."""
    shared = Path(tempfile.mkdtemp(prefix="milterd-review35-"))
    try:
        shared.chmod(0o777)
        sock = shared / "milterd.sock"
        milterd = Milterd(tmp_path / "m", socket=f"unix:{sock}")
        process = _popen(milterd)
        try:
            process.wait(60)
        finally:
            _stop(process)
        assert process.returncode == 2, milterd.stderr()
        assert f"[milter] socket: not listening on {sock}: {shared} is mode 0777: other users may replace milterd's socket" in milterd.stderr()
        assert "/run/milterd" in milterd.stderr() and "Traceback" not in milterd.stderr()
        assert not sock.exists()
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@pytest.mark.parametrize("user", ["root", "nobody"])
def test_an_unwritable_store_is_refused_with_its_key_before_the_socket_listens(tmp_path: Path, user: str) -> None:
    """Same, for a configuration error found while preparing the store (file, key, reason; exit 2),
    as root and as the account a root-started milterd drops to (pytest's directory is root's, 0700)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to start as root and to drop privileges")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    os.chmod(blocker, 0o600)
    store = blocker / "milterd.sqlite" if user == "root" else tmp_path / "milterd.sqlite"
    milterd = Milterd(tmp_path / "m", {"milter": {"user": user}, "database": {"url": f"sqlite:///{store}"}})
    process = _popen(milterd)
    accepted = False
    try:
        while process.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", milterd.port), timeout=0.05).close()
                accepted = True
            except OSError:
                pass
            time.sleep(0.001)
    finally:
        _stop(process)
    assert process.returncode == 2
    assert f"{milterd.config}: [database] url: " in milterd.stderr() and "cannot write" in milterd.stderr()
    assert "Traceback" not in milterd.stderr()
    assert not accepted, "the milter socket accepted a connection before the store was checked"
    assert f"user {user} cannot write" in milterd.stderr()


def _serves(path: Path) -> bool:
    """Whether a process accepts connections on the unix socket *path*."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def test_a_second_serve_leaves_the_running_ones_socket_and_pid_file(tmp_path: Path) -> None:
    """A second ``serve`` on the same unix socket and pid file (started by mistake) is refused
    with the key and the reason; the running milterd keeps its socket and its pid file."""
    sock = tmp_path / "run" / "milterd.sock"
    pid_file = tmp_path / "milterd.pid"
    first = Milterd(tmp_path / "first", socket=f"unix:{sock}")
    running = _popen(first, "--pid-file", str(pid_file))
    second = Milterd(tmp_path / "second", socket=f"unix:{sock}")
    try:
        assert _wait_for(lambda: "listening on" in first.stderr()), first.stderr()
        assert int(pid_file.read_text()) == running.pid
        intruder = _popen(second, "--pid-file", str(tmp_path / "second.pid"))  # its own pid file: the socket decides
        try:
            intruder.wait(20)
        except subprocess.TimeoutExpired:
            pass
        assert _stop(intruder) == 2, second.stderr()
        assert f"{second.config}: [milter] socket: {sock} is in use" in second.stderr()
        assert "Traceback" not in second.stderr()
        assert _serves(sock), "the running milterd lost its socket"
        assert int(pid_file.read_text()) == running.pid
        assert running.poll() is None
        # The same pid file too: refused before anything else, the running one's file stays.
        intruder = _popen(second, "--pid-file", str(pid_file))
        assert intruder.wait(20) == 2, second.stderr()
        assert f"{pid_file}: milterd is already running as pid {running.pid}" in second.stderr()
        assert _serves(sock) and int(pid_file.read_text()) == running.pid
    finally:
        assert _stop(running) == 0
    assert not sock.exists() and not pid_file.exists()


def test_a_second_serve_on_a_busy_tcp_port_leaves_the_pid_file(tmp_path: Path) -> None:
    """The same on a TCP socket: the bind fails, and the running milterd's pid file stays."""
    pid_file = tmp_path / "milterd.pid"
    first = Milterd(tmp_path / "first")
    running = _popen(first, "--pid-file", str(pid_file))
    second = Milterd(tmp_path / "second", socket=first.socket)
    try:
        assert _wait_for(lambda: "listening on" in first.stderr()), first.stderr()
        intruder = _popen(second, "--pid-file", str(pid_file))
        assert intruder.wait(30) == 2, second.stderr()
        assert "Traceback" not in second.stderr()
        assert pid_file.exists() and int(pid_file.read_text()) == running.pid
    finally:
        assert _stop(running) == 0
    assert not pid_file.exists()


def test_a_stale_pid_file_and_socket_do_not_block_the_start(tmp_path: Path) -> None:
    """After a crash: the pid file names a dead process, the socket file has no listener."""
    sock = tmp_path / "run" / "milterd.sock"
    sock.parent.mkdir()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(sock))  # bound, never listening, closed: what a SIGKILLed milterd leaves
    dead = subprocess.Popen(["true"])
    dead.wait()
    pid_file = tmp_path / "milterd.pid"
    pid_file.write_text(f"{dead.pid}\n")
    milterd = Milterd(tmp_path / "m", socket=f"unix:{sock}")
    process = _popen(milterd, "--pid-file", str(pid_file))
    try:
        assert _wait_for(lambda: "listening on" in milterd.stderr()), milterd.stderr()
        assert _serves(sock)
        assert int(pid_file.read_text()) == process.pid
    finally:
        assert _stop(process) == 0
    assert not sock.exists() and not pid_file.exists()
    os.mkfifo(pid_file)  # planted where the pid file goes: read without waiting, then replaced
    process = _popen(milterd, "--pid-file", str(pid_file))
    try:
        assert _wait_for(lambda: milterd.stderr().count("listening on") == 2), milterd.stderr()
        assert int(pid_file.read_text()) == process.pid
    finally:
        assert _stop(process) == 0
    assert not pid_file.exists()


def test_a_stale_pid_file_naming_another_process_is_neither_signalled_nor_blocking(tmp_path: Path) -> None:
    """After a crash the pid went to a process whose command line says milterd (tail -f milterd.log): milterd
    reload sent it SIGHUP (it died) and serve refused to start as 'already running'."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", "/var/log/milterd.log"])
    pid_file = tmp_path / "milterd.pid"
    pid_file.write_text(f"{other.pid}\n")
    milterd = Milterd(tmp_path / "m")
    try:
        reload = subprocess.run([sys.executable, "-m", "milterd", "reload", "--pid-file", str(pid_file)], capture_output=True, text=True, timeout=60)
        assert reload.returncode == 1 and f"pid {other.pid} is not a running milterd serve" in reload.stderr, reload.stderr
        assert other.poll() is None
        process = _popen(milterd, "--pid-file", str(pid_file))
        try:
            assert _wait_for(lambda: "listening on" in milterd.stderr()), milterd.stderr()
            assert int(pid_file.read_text()) == process.pid
            reload = subprocess.run([sys.executable, "-m", "milterd", "reload", "--pid-file", str(pid_file)], capture_output=True, text=True, timeout=60)
            assert reload.returncode == 0 and _wait_for(lambda: "reload done" in milterd.stderr(), timeout=60), reload.stderr
        finally:
            assert _stop(process) == 0
    finally:
        other.kill()
        other.wait()


#: Injected into the supervisor's module: every worker fails as soon as it starts
#: (a check that cannot initialise, a store that refuses every worker...).
FAILING_WORKER = """
import milterd.milter.supervisor as supervisor
def failing_worker(*args):
    raise RuntimeError("injected: this worker cannot start")
supervisor.run_worker = failing_worker
"""


def test_workers_that_die_at_once_are_restarted_with_a_backoff(tmp_path: Path) -> None:
    """A worker that dies at once on every start is replaced after a growing delay, said in
    the log, not five times a second per worker; SIGTERM still stops the supervisor at once."""
    milterd = Milterd(tmp_path / "m", {"milter": {"workers": 2}})
    process = _popen(milterd, code=FAILING_WORKER)
    try:
        assert _wait_for(lambda: "listening on" in milterd.stderr()), milterd.stderr()
        time.sleep(6)
        assert process.poll() is None
        restarts = milterd.stderr().count("worker died; starting a new one")
        started = time.monotonic()
        assert _stop(process) == 0
        assert time.monotonic() - started < 5
    finally:
        _stop(process)
    assert milterd.stderr().count("injected: this worker cannot start") >= 2  # each failure is logged
    assert "restarting in" in milterd.stderr()
    assert restarts <= 16, f"{restarts} restarts in 6 s"


def _negotiates(port: int) -> bool:
    """Whether a worker answers a milter option negotiation on 127.0.0.1:*port*."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
            body = b"O" + (6).to_bytes(4, "big") + (0x1FF).to_bytes(4, "big") + (0x1FFFFF).to_bytes(4, "big")
            conn.sendall(len(body).to_bytes(4, "big") + body)
            size = int.from_bytes(conn.recv(4, socket.MSG_WAITALL), "big")
            reply = conn.recv(size, socket.MSG_WAITALL)
    except OSError:
        return False
    return reply[:1] == b"O"


def test_reload_with_a_broken_milter_conf_keeps_the_old_one_and_names_the_key(tmp_path: Path) -> None:
    """A misspelt key, then bad TOML, then an unreadable milter.conf: each SIGHUP is refused with
    the file (and key), no traceback, the same workers keep serving; a SIGHUP storm of good ones ends
    with the right number of workers, all serving."""
    milterd = Milterd(tmp_path / "m").start()
    try:
        good = milterd.config.read_text()
        workers = sorted(milterd.workers())
        assert len(workers) == 2
        for broken, said in (
            (good.replace("[milter]\n", "[milter]\nworkerz = 3\n"), "workerz"),
            (good + "\n[milter\n", str(milterd.config)),
            (None, str(milterd.config)),
        ):
            refused = milterd.stderr().count("reload refused")
            if broken is None:
                milterd.config.write_text(good)
                milterd.config.chmod(0)
                os.rename(milterd.config, milterd.config.with_suffix(".gone"))
            else:
                milterd.config.write_text(broken)
            milterd.signal(signal.SIGHUP)
            assert _wait_for(lambda: milterd.stderr().count("reload refused") > refused)  # noqa: B023 - waited for here, milterd.stderr()
            refusal = milterd.stderr().split("reload refused")[-1].splitlines()[0]
            assert said in refusal and str(milterd.config) in refusal, refusal
            assert sorted(milterd.workers()) == workers
            assert _negotiates(milterd.port)
        os.rename(milterd.config.with_suffix(".gone"), milterd.config)
        milterd.config.chmod(0o644)
        for _ in range(10):
            milterd.signal(signal.SIGHUP)
        assert _wait_for(lambda: "reload done" in milterd.stderr(), timeout=60), milterd.stderr()
        time.sleep(1)
        assert _wait_for(lambda: len(milterd.workers()) == 2 and not set(milterd.workers()) & set(workers), timeout=60), milterd.workers()
        assert all(_negotiates(milterd.port) for _ in range(4))
        assert milterd.process is not None and milterd.process.poll() is None
        assert "Traceback" not in milterd.stderr()
    finally:
        assert milterd.stop() == 0


def test_a_sighup_to_the_whole_group_reloads_without_killing_the_workers(tmp_path: Path) -> None:
    """pkill -HUP milterd (a logrotate idiom) signals every process: the workers took SIGHUP's default, died
    with the messages in flight, and were replaced as crashed workers."""
    milterd = Milterd(tmp_path / "m").start()
    try:
        assert milterd.process is not None
        os.killpg(milterd.process.pid, signal.SIGHUP)
        assert _wait_for(lambda: "reload done" in milterd.stderr(), timeout=60), milterd.stderr()
        assert "killed by signal 1" not in milterd.stderr() and "worker died" not in milterd.stderr(), milterd.stderr()
        assert _wait_for(lambda: len(milterd.workers()) == 2, timeout=30) and _negotiates(milterd.port)
    finally:
        assert milterd.stop() == 0


def test_fix_a_worker_killed_at_shutdown_is_named_in_the_log(tmp_path: Path) -> None:
    # A worker stuck past shutdown_timeout (SIGSTOP stands for it) was SIGKILLed unsaid: the log said "stopping …
    # stopped" while its clients' sessions were cut.
    milterd = Milterd(tmp_path / "m", {"milter": {"shutdown_timeout": 1}}).start()
    stuck = milterd.workers()[0]
    os.kill(stuck, signal.SIGSTOP)
    try:
        assert milterd.stop() == 0
    finally:
        try:
            os.kill(stuck, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert f"worker {stuck} did not stop within shutdown_timeout 1s (+5s): killed" in milterd.stderr(), milterd.stderr()


def test_fix_a_reload_lowering_shutdown_timeout_lets_old_workers_drain_by_their_own(tmp_path: Path) -> None:
    # The new configuration's 1 s was applied to the old workers too: killed 6 s in, while their own 30 s ran.
    milterd = Milterd(tmp_path / "m", {"milter": {"shutdown_timeout": 30}}).start()
    busy = milterd.workers()[0]
    os.kill(busy, signal.SIGSTOP)  # a worker still draining (stopped: it cannot end before we let it)
    try:
        milterd.config.write_text(milterd.config.read_text().replace("shutdown_timeout = 30", "shutdown_timeout = 1"))
        milterd.signal(signal.SIGHUP)
        assert _wait_for(lambda: "replacing workers" in milterd.stderr(), timeout=30), milterd.stderr()
        time.sleep(8)  # past the new 1 s + 5 s
        assert f"worker {busy} did not stop" not in milterd.stderr(), milterd.stderr()
        os.kill(busy, 0)  # still there, draining
    finally:
        os.kill(busy, signal.SIGCONT)
    assert _wait_for(lambda: "reload done" in milterd.stderr(), timeout=60), milterd.stderr()
    assert milterd.stop() == 0


def test_sigkill_of_the_supervisor_frees_the_socket_for_the_next_start(tmp_path: Path) -> None:
    """The workers see their stop pipe close, stop accepting and exit; the next start (on the
    same unix socket, with the stale socket file) listens and serves."""
    sock = tmp_path / "run" / "milterd.sock"
    first = Milterd(tmp_path / "first", socket=f"unix:{sock}").start()
    workers = first.workers()
    assert first.process is not None
    first.process.kill()
    first.process.wait()
    assert _wait_for(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers), timeout=20), "the workers outlived the supervisor"
    assert sock.exists() and not _serves(sock)
    second = Milterd(tmp_path / "second", socket=f"unix:{sock}").start()
    try:
        assert _serves(sock)
    finally:
        assert second.stop() == 0
    first.stop()


def _command(code: bytes, *fields: bytes) -> bytes:
    body = code + b"".join(fields)
    return len(body).to_bytes(4, "big") + body


def _send_message(port: int, subject: bytes) -> tuple[socket.socket, bytes]:
    """Open a milter session on 127.0.0.1:*port* and send one message up to end of message;
    return the connection and what came back before the end of message was sent."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=60)
    conn.sendall(_command(b"O", (6).to_bytes(4, "big"), (0x1FF).to_bytes(4, "big"), (0).to_bytes(4, "big")))
    size = int.from_bytes(conn.recv(4, socket.MSG_WAITALL), "big")
    assert conn.recv(size, socket.MSG_WAITALL)[:1] == b"O"
    conn.sendall(
        _command(b"C", b"mail.example.net\0", b"4", (2525).to_bytes(2, "big"), b"192.0.2.7\0")
        + _command(b"H", b"mail.example.net\0")
        + _command(b"M", b"<alice@example.net>\0")
        + _command(b"R", b"<bob@example.org>\0")
        + _command(b"L", b"From\0", b"alice@example.net\0")
        + _command(b"L", b"Subject\0", subject + b"\0")
        + _command(b"N")
        + _command(b"B", b"hello\r\n")
        + _command(b"E")
    )
    return conn, b""


def _final_reply(conn: socket.socket) -> bytes:
    """The reply that ends the message: accept, reject, tempfail, discard, a reply code, or the
    continue that answers the end of message (after the 8 that answer the commands before it)."""
    continues = 0
    while True:
        head = conn.recv(4, socket.MSG_WAITALL)
        if len(head) < 4:
            return b""
        reply = conn.recv(int.from_bytes(head, "big"), socket.MSG_WAITALL)
        if reply[:1] in (b"a", b"r", b"t", b"d", b"y") or (reply[:1] == b"c" and continues == 8):
            return reply
        continues += reply[:1] == b"c"


def test_sigterm_lets_a_message_at_end_of_message_finish_within_the_budget(tmp_path: Path) -> None:
    """A message whose DNS lookups hang (a resolver that never answers) gets its verdict and its
    log row after SIGTERM; the supervisor exits 0 within shutdown_timeout, its socket gone."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))  # receives the queries, never answers
    try:
        milterd = Milterd(tmp_path / "m", {"milter": {"shutdown_timeout": 15},
                                           "dns": {"nameservers": [f"127.0.0.1:{silent.getsockname()[1]}"], "timeout": 2}})
        milterd.start()
        started = time.monotonic()
        conn, _ = _send_message(milterd.port, b"in flight at SIGTERM")
        time.sleep(0.5)
        milterd.signal(signal.SIGTERM)
        with conn:
            reply = _final_reply(conn)
        took = time.monotonic() - started
        assert milterd.process is not None
        assert milterd.process.wait(30) == 0
        stopped = time.monotonic() - started
        milterd.stop()
    finally:
        silent.close()
    assert reply[:1] in (b"a", b"c"), (reply, took, milterd.stderr())
    assert took > 1, "the DNS lookups did not hang: this test proves nothing"
    assert stopped < 15 + 5
    rows = milterd.log_json()
    assert [row.get("subject") for row in rows] == ["in flight at SIGTERM"], rows
    assert "Traceback" not in milterd.stderr()


def _as_nobody() -> None:
    nobody = pwd.getpwnam("nobody")
    os.setgroups([nobody.pw_gid])
    os.setgid(nobody.pw_gid)
    os.setuid(nobody.pw_uid)


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory nobody may traverse (pytest's are 0700 all the way up); the ``data`` in it is nobody's."""
    path = Path(tempfile.mkdtemp(prefix="milterd-lifecycle-"))
    path.chmod(0o755)
    (path / "data").mkdir()
    shutil.chown(path / "data", "nobody")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@contextmanager
def _effectively_nobody() -> Iterator[None]:
    """This process with nobody's effective ids (the interpreter may not be nobody's to run), then root's again."""
    nobody = pwd.getpwnam("nobody")
    groups = os.getgroups()
    os.setgroups([nobody.pw_gid])
    os.setegid(nobody.pw_gid)
    os.seteuid(nobody.pw_uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)
        os.setgroups(groups)


def _nobody_runs_python() -> bool:
    try:
        return subprocess.run([sys.executable, "-c", "pass"], preexec_fn=_as_nobody, capture_output=True).returncode == 0
    except OSError:  # the interpreter is under root's 0700 home
        return False


def test_a_socket_directory_that_cannot_be_made_is_refused_with_the_key(open_tmp: Path) -> None:
    """A file in the socket's path (serve as root), then a directory a non-root user cannot
    write: refused with file, key and reason, never a traceback."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become nobody")
    (open_tmp / "file").write_text("")
    for number, (sock, said) in enumerate((
        (f"unix:{open_tmp}/file/run/milterd.sock", f"cannot create the directory of {open_tmp}/file/run/milterd.sock: Not a directory"),
        (f"unix:{open_tmp}/file/milterd.sock", f"cannot create {open_tmp}/file/milterd.sock: a part of its directory is not a directory"),
    )):
        milterd = Milterd(open_tmp / f"m{number}", {"database": {"url": f"sqlite:///{open_tmp / 'data' / f'{number}.sqlite'}"}}, socket=sock)
        result = subprocess.run([sys.executable, "-m", "milterd", "serve", "-c", str(milterd.config)], capture_output=True, text=True, cwd=open_tmp, timeout=60)
        assert result.returncode == 2, result.stderr
        assert f"milterd: {milterd.config}: [milter] socket: {said}" in result.stderr, result.stderr
        assert "Traceback" not in result.stderr
    sock = open_tmp / "run" / "milterd.sock"  # bound, then given to an owner that does not exist: refused, and gone
    milterd = Milterd(open_tmp / "owner", {"milter": {"socket_owner": "no-such-user-milterd"}, "database": {"url": f"sqlite:///{open_tmp / 'data' / 'owner.sqlite'}"}}, socket=f"unix:{sock}")
    result = subprocess.run([sys.executable, "-m", "milterd", "serve", "-c", str(milterd.config)], capture_output=True, text=True, cwd=open_tmp, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"milterd: {milterd.config}: [milter] socket_owner: no such user 'no-such-user-milterd'" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not sock.exists()
    rootonly = open_tmp / "rootonly"
    rootonly.mkdir(mode=0o755)
    where = open_tmp / "milter.conf"
    with _effectively_nobody():
        config = Config().with_changes({"milter.socket": f"unix:{rootonly}/run/milterd.sock"}).model_copy(update={"path": where})
        with pytest.raises(ConfigError) as info:
            supervisor.open_socket(config)
        why = supervisor._why_not(parse_socket(f"unix:{rootonly}/milterd.sock"))  # noqa: SLF001 - what libmilter does not say
    assert str(info.value) == f"{where}: [milter] socket: cannot create the directory of {rootonly}/run/milterd.sock: Permission denied"
    assert why == f"user nobody cannot write {rootonly}"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert supervisor._why_not(parse_socket(f"inet:127.0.0.1:{busy.getsockname()[1]}")) == "Address already in use"  # noqa: SLF001
    assert supervisor._why_not(parse_socket("inet:192.0.2.1:7777")) == "Cannot assign requested address"  # noqa: SLF001


def test_started_as_a_user_it_serves_and_stops_cleanly(open_tmp: Path) -> None:
    """Not root: no drop, the store and the socket made by that user; SIGTERM removes the socket."""
    if os.geteuid() != 0 or not _nobody_runs_python():
        pytest.skip("needs root to start as nobody, and an interpreter nobody may run")
    sock = open_tmp / "data" / "run" / "milterd.sock"
    milterd = Milterd(open_tmp / "m", {"database": {"url": f"sqlite:///{open_tmp / 'data' / 'milterd.sqlite'}"}}, socket=f"unix:{sock}")
    stderr = milterd.stderr_path.open("ab")
    process = subprocess.Popen([sys.executable, "-m", "milterd", "serve", "-c", str(milterd.config)], stdout=stderr, stderr=stderr,
                               cwd=open_tmp, start_new_session=True, preexec_fn=_as_nobody)
    stderr.close()
    try:
        assert _wait_for(lambda: "listening on" in milterd.stderr() or process.poll() is not None), milterd.stderr()
        assert process.poll() is None, milterd.stderr()
        assert _serves(sock)
        assert (open_tmp / "data" / "milterd.sqlite").stat().st_uid == pwd.getpwnam("nobody").pw_uid
        assert stat.S_IMODE((open_tmp / "data" / "milterd.sqlite").stat().st_mode) == 0o600
    finally:
        assert _stop(process) == 0
    assert not sock.exists()
    assert "Traceback" not in milterd.stderr()


def test_the_store_check_runs_as_the_account_and_gives_root_back(open_tmp: Path) -> None:
    """check_store (before the socket): the schema is made by [milter] user under umask 077, then the
    supervisor has root's ids, groups and umask again (it still has to bind the socket); also after a refusal."""
    if os.geteuid() != 0:
        pytest.skip("needs root to become nobody")
    nobody = pwd.getpwnam("nobody")
    store = open_tmp / "data" / "milterd.sqlite"
    ids = (os.getresuid(), os.getresgid(), sorted(os.getgroups()))
    umask = os.umask(0o022)
    try:
        config = Config().with_changes({"milter.user": "nobody", "database.url": f"sqlite:///{store}"}).model_copy(update={"path": open_tmp / "milter.conf"})
        services = build(config)
        supervisor.check_store(config, services)
        assert (os.getresuid(), os.getresgid(), sorted(os.getgroups())) == ids
        assert os.umask(0o022) == 0o022
        info = store.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (nobody.pw_uid, 0o600)
        assert services._store is None  # noqa: SLF001 - nothing opened as the account stays open for root
        refused = config.with_changes({"database.url": f"sqlite:///{open_tmp / 'rootonly' / 'milterd.sqlite'}"}).model_copy(update={"path": open_tmp / "milter.conf"})
        (open_tmp / "rootonly").mkdir(mode=0o700)
        (open_tmp / "rootonly" / "milterd.sqlite").write_bytes(b"")
        (open_tmp / "rootonly" / "milterd.sqlite").chmod(0o600)  # root's and private: only the account's access is wrong
        with pytest.raises(ConfigError, match=r"\[database\] url: user nobody cannot write"):
            supervisor.check_store(refused, build(refused))
        assert (os.getresuid(), os.getresgid(), sorted(os.getgroups())) == ids
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(umask)
