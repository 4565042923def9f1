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

from tests.conftest import Stack, message
from tests.harness.milterd import Milterd
from tests.harness.postfix import Postfix, Sink

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
    data.mkdir(mode=0o755)  # root's: the user cannot create the WAL files there
    milterd = Milterd(tmp_path / "m", {"milter": {"user": USER, "group": GROUP}, "database": {"url": f"sqlite:///{data / 'milterd.sqlite'}"}})
    try:
        milterd.start(timeout=20)  # the socket opens first: the check comes after dropping privileges
    except RuntimeError:
        pass
    assert milterd.process is not None
    assert milterd.process.wait(timeout=30) == 2
    assert "cannot write" in milterd.stderr() and "[database] url" in milterd.stderr()
    milterd.stop()
