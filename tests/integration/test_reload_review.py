"""Review of the SIGHUP reload with a running milterd: new workers that die at start leave the
old ones serving, and a key only root can read is said at start and refuses the reload by name."""

from __future__ import annotations

import grp
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from milterd import dkimsign
from tests.harness.milterd import Milterd

#: Injected into the supervisor's module: a worker of a configuration whose hostname is
#: dies.test fails as it initialises (as a check that cannot set up in a worker would).
DYING_WORKER = """
import milterd.milter.supervisor as supervisor
real_run_worker = supervisor.run_worker
def run_worker(services, *args):
    if services.config.milter.hostname == "dies.test":
        raise RuntimeError("injected: a worker of this configuration cannot start")
    return real_run_worker(services, *args)
supervisor.run_worker = run_worker
"""

#: As DYING_WORKER, but with hostname second.test only the first worker started (it makes the
#: directory "first" in the working directory) initialises; those after it fail.
SECOND_DIES = """
import os
import milterd.milter.supervisor as supervisor
real_run_worker = supervisor.run_worker
def run_worker(services, *args):
    if services.config.milter.hostname == "second.test":
        try:
            os.mkdir("first")
        except FileExistsError:
            raise RuntimeError("injected: a worker after the first cannot start") from None
    return real_run_worker(services, *args)
supervisor.run_worker = run_worker
"""


#: Injected: a SIGHUP arrives while ``serve`` reads its configuration (a reload sent just after a start), once.
HUP_WHILE_STARTING = """
import os, signal
import milterd.milter.supervisor as supervisor
real_load_config = supervisor.load_config
sent = []
def load_config(path):
    if not sent:
        sent.append(os.kill(os.getpid(), signal.SIGHUP))
    return real_load_config(path)
supervisor.load_config = load_config
"""


def _popen(milterd: Milterd, code: str) -> subprocess.Popen[bytes]:
    """``milterd serve`` for *milterd*'s milter.conf with *code* run first, its output in its stderr file."""
    milterd._stderr = milterd.stderr_path.open("ab")
    boot = f"import sys\n{code}\nfrom milterd.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    argv = [sys.executable, "-c", boot, "serve", "-c", str(milterd.config)]
    milterd.process = subprocess.Popen(argv, stdout=milterd._stderr, stderr=milterd._stderr, cwd=milterd.root, start_new_session=True,
                                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return milterd.process


def _wait_for(predicate: Callable[[], bool], timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


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


def test_a_reload_whose_new_workers_die_at_start_keeps_the_old_workers(tmp_path: Path) -> None:
    """Every old worker was stopped although none of the new configuration could start: nothing
    served.  Now the first new worker that dies ends the reload, refused, and the old ones stay."""
    milterd = Milterd(tmp_path / "m", {"milter": {"workers": 2}})
    _popen(milterd, DYING_WORKER)
    try:
        assert _wait_for(lambda: "listening on" in milterd.stderr() and len(milterd.workers()) == 2), milterd.stderr()
        old = sorted(milterd.workers())
        good = milterd.config.read_text()
        milterd.config.write_text(good.replace('hostname = "mx.test"', 'hostname = "dies.test"'))
        milterd.signal(signal.SIGHUP)
        assert _wait_for(lambda: "a worker of the new configuration did not start" in milterd.stderr(), timeout=20), milterd.stderr()
        time.sleep(1)
        assert sorted(milterd.workers()) == old, milterd.stderr()
        assert all(_negotiates(milterd.port) for _ in range(4))
        assert "injected: a worker of this configuration cannot start" in milterd.stderr()
        # A good configuration afterwards still replaces them all.
        milterd.config.write_text(good)
        milterd.signal(signal.SIGHUP)
        assert _wait_for(lambda: "reload done" in milterd.stderr(), timeout=60), milterd.stderr()
        assert _wait_for(lambda: len(milterd.workers()) == 2 and not set(milterd.workers()) & set(old)), milterd.workers()
        assert _negotiates(milterd.port)
    finally:
        assert milterd.stop() == 0


def test_a_reload_stopped_half_way_goes_back_to_the_old_configuration(tmp_path: Path) -> None:
    """The first new worker started and replaced an old one, the second died: the reload is
    refused, the new worker is stopped and replaced by one of the old configuration, the old
    worker not replaced yet keeps serving, and two workers serve throughout."""
    milterd = Milterd(tmp_path / "m", {"milter": {"workers": 2}})
    _popen(milterd, SECOND_DIES)
    try:
        assert _wait_for(lambda: "listening on" in milterd.stderr() and len(milterd.workers()) == 2), milterd.stderr()
        old = set(milterd.workers())
        milterd.config.write_text(milterd.config.read_text().replace('hostname = "mx.test"', 'hostname = "second.test"'))
        milterd.signal(signal.SIGHUP)
        assert _wait_for(lambda: "a worker of the new configuration did not start" in milterd.stderr(), timeout=30), milterd.stderr()
        assert _wait_for(lambda: len(milterd.workers()) == 2 and len(set(milterd.workers()) & old) == 1, timeout=30), milterd.workers()
        assert all(_negotiates(milterd.port) for _ in range(4))
        assert milterd.stderr().count("injected: a worker after the first cannot start") == 1  # no worker of it was started again
        assert "reload done" not in milterd.stderr()
    finally:
        assert milterd.stop() == 0


def test_a_reload_changes_the_number_of_workers_both_ways(tmp_path: Path) -> None:
    """[milter] workers lowered from 3 to 1 left 3 workers (each old one was replaced one for one); raised, the
    new ones were said to replace dead workers and counted as restarts (found by review)."""
    milterd = Milterd(tmp_path / "m", {"milter": {"workers": 3}})
    milterd.start()
    try:
        assert _wait_for(lambda: len(milterd.workers()) == 3), milterd.workers()
        first = milterd.config.read_text()
        assert "workers = 3" in first
        milterd.config.write_text(first.replace("workers = 3", "workers = 1"))
        milterd.signal(signal.SIGHUP)
        assert _wait_for(lambda: milterd.stderr().count("reload done") == 1, timeout=60), milterd.stderr()
        assert _wait_for(lambda: len(milterd.workers()) == 1), milterd.workers()
        time.sleep(1)
        assert len(milterd.workers()) == 1 and _negotiates(milterd.port)
        milterd.config.write_text(first)
        milterd.signal(signal.SIGHUP)
        assert _wait_for(lambda: milterd.stderr().count("reload done") == 2, timeout=60), milterd.stderr()
        assert _wait_for(lambda: len(milterd.workers()) == 3), milterd.workers()
        assert "worker died" not in milterd.stderr()
    finally:
        assert milterd.stop() == 0


def test_a_sighup_while_starting_is_a_reload_not_the_end(tmp_path: Path) -> None:
    """SIGHUP's default ended the process while serve read its configuration: exit 129, nothing said (review)."""
    milterd = Milterd(tmp_path / "m", {})
    process = _popen(milterd, HUP_WHILE_STARTING)
    try:
        assert _wait_for(lambda: "reload done" in milterd.stderr() or process.poll() is not None, timeout=60), milterd.stderr()
        assert process.poll() is None, (process.returncode, milterd.stderr())
        assert _negotiates(milterd.port)
    finally:
        assert milterd.stop() == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change groups")
def test_user_root_with_a_group_runs_in_that_group(tmp_path: Path) -> None:
    """[milter] group was ignored with user = "root": the workers stayed in group root (found by review)."""
    milterd = Milterd(tmp_path / "m", {"milter": {"user": "root", "group": "mail"}})
    milterd.start()
    try:
        assert _wait_for(lambda: len(milterd.workers()) == 2), milterd.workers()
        mail = grp.getgrnam("mail").gr_gid
        for pid in milterd.workers():
            gids = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Gid:")).split()[1:]
            assert {int(g) for g in gids} == {mail}, (pid, gids)
    finally:
        assert milterd.stop() == 0


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory [milter] user may enter (pytest's tmp_path is root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="milterd-reload-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop privileges")
def test_a_key_only_root_can_read_is_said_at_start_and_refuses_the_reload_by_name(open_tmp: Path) -> None:
    """milterd dkim keygen (as root) writes a key of mode 0600: serve reads it as root, but each
    reload as [milter] user failed.  The start warns, the refusal names the key, the file and
    the user; once the file is readable, the reload goes through."""
    root = open_tmp / "m"
    root.mkdir(mode=0o755)
    key = root / "example.org.s.key"
    dkimsign.write_private(key, dkimsign.generate("ed25519"))
    signing = {"enabled": True, "keys": [{"domain": "example.org", "selector": "s", "key_file": str(key)}]}
    milterd = Milterd(root, {"milter": {"user": "nobody", "group": "nogroup"}, "dkim_signing": signing})
    milterd.config.chmod(0o644)
    milterd.start()
    try:
        said = f"[dkim_signing] keys[0].key_file: user nobody cannot read {key}, which a reload (SIGHUP) reads again"
        assert said in milterd.stderr()
        old = sorted(milterd.workers())
        milterd.signal(signal.SIGHUP)
        assert _wait_for(lambda: "reload refused" in milterd.stderr()), milterd.stderr()
        refusal = milterd.stderr().split("reload refused")[-1].splitlines()[0]
        assert said in refusal and f"chgrp nogroup {key}" in refusal, refusal
        assert sorted(milterd.workers()) == old and _negotiates(milterd.port)
        os.chown(key, 0, grp.getgrnam("nogroup").gr_gid)
        key.chmod(0o640)
        milterd.signal(signal.SIGHUP)
        assert _wait_for(lambda: "reload done" in milterd.stderr(), timeout=60), milterd.stderr()
        assert milterd.stderr().count("reload refused") == 1
        assert "Traceback" not in milterd.stderr()
    finally:
        assert milterd.stop() == 0
