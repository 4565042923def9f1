"""Started as root, milterd opens its unix socket inside a Postfix-style chroot
directory with the configured owner, group and mode, then runs as ``[milter] user``."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import message
from tests.harness.milterd import Milterd
from tests.harness.postfix import Postfix, Sink
from tests.harness.stack import Stack

USER, GROUP = "nobody", "nogroup"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")


def _uid_of(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    gid = int(next(line for line in status.splitlines() if line.startswith("Gid:")).split()[1])
    return uid, gid


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A temporary directory others may traverse (pytest's are 0700 all the way up)."""
    path = Path(tempfile.mkdtemp(prefix="milterd-priv-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def dropped(sink: Sink) -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="milterd-priv-"))
    os.chmod(root, 0o755)
    chroot = root / "spool" / "milterd"  # as /var/spool/postfix/milterd
    chroot.mkdir(parents=True)
    data = root / "lib"  # as /var/lib/milterd: the user's own
    data.mkdir()
    shutil.chown(data, USER, GROUP)
    sock = chroot / "milterd.sock"
    milterd = Milterd(root / "m", {
        "milter": {"user": USER, "group": GROUP, "socket_owner": "postfix", "socket_group": "postfix", "socket_mode": "0660"},
        "database": {"url": f"sqlite:///{data / 'milterd.sqlite'}"},
    }, socket=f"unix:{sock}").start()
    postfix = None
    try:
        postfix = Postfix(root / "postfix", relay_port=sink.port, milter=f"unix:{sock}").start()
        yield Stack(milterd, postfix, sink)
    finally:
        if postfix is not None:
            postfix.stop()
        milterd.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_workers_run_as_the_user(dropped: Stack) -> None:
    nobody = pwd.getpwnam(USER).pw_uid
    nogroup = grp.getgrnam(GROUP).gr_gid
    assert dropped.milterd.process is not None
    assert _uid_of(dropped.milterd.process.pid) == (nobody, nogroup)  # the supervisor too
    workers = dropped.milterd.workers()
    assert workers
    for pid in workers:
        assert _uid_of(pid) == (nobody, nogroup)


def test_socket_owner_group_mode(dropped: Stack) -> None:
    path = Path(dropped.milterd.socket.removeprefix("unix:"))
    info = path.stat()
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o660
    assert info.st_uid == pwd.getpwnam("postfix").pw_uid
    assert info.st_gid == grp.getgrnam("postfix").gr_gid


def test_mail_flows_through_the_unix_socket(dropped: Stack) -> None:
    dropped.send(message(subject="privileges dropped"))
    assert dropped.sink.wait(1, match=lambda m: any("privileges dropped" in s for s in m.header("Subject")))
    rows = dropped.milterd.log_json()
    assert any(r["subject"] == "privileges dropped" for r in rows)


def test_unwritable_store_is_refused_clearly(open_tmp: Path) -> None:
    tmp_path = open_tmp
    data = tmp_path / "rootonly"
    data.mkdir(mode=0o700)  # root's: the user cannot even reach the SQLite file
    milterd = Milterd(tmp_path / "m", {"milter": {"user": USER, "group": GROUP}, "database": {"url": f"sqlite:///{data / 'milterd.sqlite'}"}})
    try:
        milterd.start(timeout=20)  # the socket opens first: the check comes after dropping privileges
    except RuntimeError:
        pass
    assert milterd.process is not None
    assert milterd.process.wait(timeout=30) == 2
    assert "cannot write" in milterd.stderr() and "[database] url" in milterd.stderr()
    assert "Traceback" not in milterd.stderr()
    milterd.stop()


def test_unknown_user_is_refused_with_the_key(open_tmp: Path) -> None:
    milterd = Milterd(open_tmp / "m", {"milter": {"user": "no-such-user-milterd"}})
    with pytest.raises(RuntimeError):
        milterd.start(timeout=20)
    milterd.stop()
    assert milterd.process is not None and milterd.process.returncode == 2
    assert "[milter] user: no such user 'no-such-user-milterd'" in milterd.stderr()
    assert "Traceback" not in milterd.stderr()


def _modes(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (stat.S_IMODE(p.stat().st_mode), p.stat().st_uid) for p in directory.iterdir()}


def _umask(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line for line in status.splitlines() if line.startswith("Umask:")).split()[1], 8)


def test_root_without_user_runs_as_nobody(sink: Sink, open_tmp: Path) -> None:
    """Started as root with no [milter] user: not root, but nobody, with a warning; the
    store in a directory only root can write still works (its files are handed over)."""
    data = open_tmp / "lib"  # as the working directory of README's first command: root's, 0755
    data.mkdir(mode=0o755)
    milterd = Milterd(open_tmp / "m", {"milter": {"user": ""}, "database": {"url": f"sqlite:///{data / 'milterd.sqlite'}"}})
    postfix = None
    try:
        milterd.start()
        assert milterd.process is not None
        nobody = pwd.getpwnam("nobody")
        assert _uid_of(milterd.process.pid) == (nobody.pw_uid, nobody.pw_gid)
        assert all(_uid_of(pid) == (nobody.pw_uid, nobody.pw_gid) for pid in milterd.workers())
        assert "started as root without [milter] user: running as nobody" in milterd.stderr()
        postfix = Postfix(open_tmp / "postfix", relay_port=sink.port, milter=milterd.postfix_spec).start()
        Stack(milterd, postfix, sink).send(message(subject="run as nobody"))
        assert sink.wait(1, match=lambda m: any("run as nobody" in s for s in m.header("Subject")))
        assert any(r["subject"] == "run as nobody" for r in milterd.log_json())
        modes = _modes(data)
        for name in ("milterd.sqlite", "milterd.sqlite-wal", "milterd.sqlite-shm"):
            assert modes[name] == (0o600, nobody.pw_uid), (name, modes)
    finally:
        if postfix is not None:
            postfix.stop()
        milterd.stop()


@pytest.mark.parametrize("linked", [False, True], ids=["file", "root-s-link"])
def test_a_root_command_while_no_worker_has_the_store_open_leaves_it_usable(sink: Sink, open_tmp: Path, linked: bool) -> None:
    """A root command (milterd log, doctor) that closed the store's last connection had SQLite remove its -wal and
    -shm, which nobody could not make again in a directory only root may write: every message 451 until a restart.
    Also where the store's name is root's link to the file elsewhere (a third look: the link was taken for no store)."""
    data = open_tmp / "lib"
    data.mkdir(mode=0o755)
    url = data / "milterd.sqlite"
    if linked:
        url = open_tmp / "milterd.sqlite"
        url.symlink_to(data / "milterd.sqlite")
    milterd = Milterd(open_tmp / "m", {"milter": {"user": "", "workers": 1}, "database": {"url": f"sqlite:///{url}"}})
    postfix = None
    try:
        milterd.start()
        assert milterd.log_json() == []  # as root, before any mail: the last connection to close
        nobody = pwd.getpwnam("nobody")
        modes = _modes(data)
        for name in ("milterd.sqlite-wal", "milterd.sqlite-shm"):
            assert modes[name] == (0o600, nobody.pw_uid), (name, modes)
        postfix = Postfix(open_tmp / "postfix", relay_port=sink.port, milter=milterd.postfix_spec).start()
        Stack(milterd, postfix, sink).send(message(subject="after a root command"))
        assert sink.wait(1, match=lambda m: any("after a root command" in s for s in m.header("Subject")))
        assert any(r["subject"] == "after a root command" for r in milterd.log_json())
    finally:
        if postfix is not None:
            postfix.stop()
        milterd.stop()


def test_store_files_and_umask_are_private(dropped: Stack) -> None:
    """The SQLite store (log and quarantine) and its -wal/-shm are 0600 and the user's;
    the supervisor and the workers create anything else (spool files) under umask 077."""
    dropped.send(message(subject="file modes"))
    assert dropped.sink.wait(1, match=lambda m: any("file modes" in s for s in m.header("Subject")))
    url = dropped.milterd.sections["database"]["url"]
    data = Path(url.removeprefix("sqlite:///")).parent
    nobody = pwd.getpwnam(USER).pw_uid
    modes = _modes(data)
    for name in ("milterd.sqlite", "milterd.sqlite-wal", "milterd.sqlite-shm"):
        assert modes[name] == (0o600, nobody), (name, modes)
    assert dropped.milterd.process is not None
    for pid in [dropped.milterd.process.pid, *dropped.milterd.workers()]:
        assert _umask(pid) == 0o077


def test_pid_file_after_the_drop(open_tmp: Path) -> None:
    """--pid-file in a directory the user can write is removed at shutdown; in root's
    directory, milterd says why it stays (no traceback, exit 0)."""
    import signal as signals
    import subprocess
    import sys

    writable = open_tmp / "run"
    writable.mkdir(mode=0o755)
    shutil.chown(writable, USER, GROUP)
    rootonly = open_tmp / "rootrun"
    rootonly.mkdir(mode=0o755)
    for directory in (writable, rootonly):
        milterd = Milterd(open_tmp / f"m-{directory.name}", {"milter": {"user": USER, "group": GROUP}, "database": {"url": f"sqlite:///{writable / (directory.name + '.sqlite')}"}})
        pid_file = directory / "milterd.pid"
        stderr = milterd.stderr_path.open("ab")
        process = subprocess.Popen([sys.executable, "-m", "milterd", "serve", "-c", str(milterd.config), "--pid-file", str(pid_file)],
                                   stdout=stderr, stderr=stderr, cwd=milterd.root, start_new_session=True)
        try:
            from tests.harness.postfix import wait_for_port

            wait_for_port(milterd.port, timeout=30)
            assert int(pid_file.read_text()) == process.pid
            process.send_signal(signals.SIGTERM)
            assert process.wait(timeout=60) == 0
        finally:
            if process.poll() is None:
                process.kill()
            stderr.close()
        if directory is writable:
            assert not pid_file.exists()
            assert "cannot remove the pid file" not in milterd.stderr()
        else:
            assert pid_file.exists()
            assert f"cannot remove the pid file {pid_file}: Permission denied" in milterd.stderr()
        assert "Traceback" not in milterd.stderr()


def test_the_socket_in_a_directory_milterd_made_is_removed_at_sigterm(open_tmp: Path) -> None:
    """The supervisor, no longer root, could not remove its socket from the directory it had made as root
    (owned by root): a warning at every stop, the file left (found by review). That directory is now the user's."""
    own = "mail"  # an account of its own: never the shared nobody, whose other processes could take the socket's place
    data = open_tmp / "lib"
    data.mkdir()
    shutil.chown(data, own, own)
    sock = open_tmp / "run" / "milterd" / "milterd.sock"
    milterd = Milterd(open_tmp / "m", {"milter": {"user": own, "group": own}, "database": {"url": f"sqlite:///{data / 'm.sqlite'}"}},
                      socket=f"unix:{sock}").start()
    try:
        assert stat.S_ISSOCK(sock.stat().st_mode)
        assert (sock.parent.stat().st_uid, sock.parent.stat().st_gid) == (pwd.getpwnam(own).pw_uid, grp.getgrnam(own).gr_gid)
        assert sock.parent.parent.stat().st_uid == 0  # only the socket's own directory is given
    finally:
        assert milterd.stop() == 0
    assert not sock.exists()
    assert "cannot remove" not in milterd.stderr()
    # As nobody (shared by other daemons) or through "..", a directory is never given away.
    for user, path in (("nobody", open_tmp / "run2" / "milterd.sock"), (own, open_tmp / "run3" / "new" / ".." / "m.sock")):
        other = Milterd(open_tmp / f"m-{path.parent.name}", {"milter": {"user": user, "group": user if user == own else GROUP},
                                                             "database": {"url": f"sqlite:///{data / (path.parent.name + '.sqlite')}"}},
                        socket=f"unix:{path}").start()
        try:
            assert path.parent.stat().st_uid == 0, path
        finally:
            assert other.stop() == 0


def test_the_maintenance_child_is_named_after_the_drop(open_tmp: Path) -> None:
    """A review (thirty-first session): after setuid a process is not dumpable and /proc/self/comm is root's,
    so the maintenance child of a milterd running as ``[milter] user`` stayed "python" in ``ps``, not
    milterd-maint as the README says.  Holding SQLite's write lock keeps the child waiting, to be seen."""
    import sqlite3
    import subprocess
    import time

    from milterd.milter.supervisor import MAINTENANCE_NAME

    data = open_tmp / "lib"
    data.mkdir()
    shutil.chown(data, USER, GROUP)
    milterd = Milterd(open_tmp / "m", {"milter": {"user": USER, "group": GROUP, "workers": 1},
                                       "database": {"url": f"sqlite:///{data / 'milterd.sqlite'}"}}).start()
    try:
        assert milterd.process is not None
        holder = sqlite3.connect(data / "milterd.sqlite", timeout=30, isolation_level=None)
        names: dict[int, str] = {}
        try:
            holder.execute("BEGIN IMMEDIATE")
            deadline = time.monotonic() + 30  # the first maintenance round is 5 s after start
            while MAINTENANCE_NAME not in names.values() and time.monotonic() < deadline:
                out = subprocess.run(["pgrep", "-P", str(milterd.process.pid)], capture_output=True, text=True).stdout
                for pid in map(int, out.split()):
                    if pid not in milterd.workers():
                        try:
                            names[pid] = Path(f"/proc/{pid}/comm").read_text().strip()
                        except OSError:
                            pass
                time.sleep(0.2)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert MAINTENANCE_NAME in names.values(), (names, milterd.stderr()[-2000:])
        [maintainer] = [pid for pid, name in names.items() if name == MAINTENANCE_NAME]
        assert maintainer not in milterd.workers()
    finally:
        milterd.stop()
