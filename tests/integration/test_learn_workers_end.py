"""``milterd learn --jobs 2`` on PostgreSQL, ended from outside: its tokenizing processes end with it and its
session is gone, whatever signal ends it.  Before, a SIGTERM (timeout, systemd, a closed terminal) or SIGKILL left
the workers running for ever under init, each holding a copy of the learner's connection (they were forked after
the store was opened): PostgreSQL never saw it close, and a session killed in a transaction kept its locks, on which
the next learn, a release --ham and the milter's auto-learn waited."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
from sqlalchemy import create_engine, text

from tests.harness import pgdb
from tests.harness.milterd import write_config

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with pgdb.required_database("the learner's sessions on PostgreSQL") as url:
        yield url


def children(pid: int) -> set[int]:
    """The processes whose parent is *pid*."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.add(int(entry))
    return found


def alive(pids: set[int]) -> set[int]:
    """Those of *pids* still running (not zombies)."""
    left = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            left.add(pid)
    return left


def sessions(url: str) -> int:
    """The other sessions on the test's database."""
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                               "AND pid <> pg_backend_pid()")).scalar() or 0)
    finally:
        engine.dispose()


def wait_for(condition: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return bool(condition())  # type: ignore[operator]


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL])
def test_the_workers_and_the_session_end_with_the_learner(tmp_path: Path, database: str, signum: int) -> None:
    conf = write_config(tmp_path / "milter.conf", {"database": {"url": database}, "rules": {"dir": ""}})
    assert subprocess.run([sys.executable, "-m", "milterd", "db", "upgrade", "-c", str(conf)], capture_output=True, timeout=120).returncode == 0
    folder = tmp_path / "spam"
    folder.mkdir()
    words = " ".join(f"word{n}" for n in range(300))
    for n in range(4000):
        (folder / f"{n:05}.eml").write_text(f"Message-ID: <{n}@spam.example>\nSubject: offer {n}\n\n{words} {n}\n")
    learner = subprocess.Popen([sys.executable, "-m", "milterd", "learn", "-c", str(conf), "--jobs", "2", "--spam", str(folder)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Its resource tracker and two workers, and its own session.
        assert wait_for(lambda: len(children(learner.pid)) >= 3 and sessions(database) >= 1, 60), "the learner never got going"
        workers = children(learner.pid)
        time.sleep(1.0)  # learning
        learner.send_signal(signum)
        _, err = learner.communicate(timeout=60)
    finally:
        if learner.poll() is None:
            learner.kill()
    if signum == signal.SIGTERM:
        assert learner.returncode == 128 + signal.SIGTERM
        assert "milterd learn: stopped by SIGTERM after" in err and "Traceback" not in err
    assert wait_for(lambda: not alive(workers), 10), f"workers left running: {alive(workers)}"
    assert wait_for(lambda: sessions(database) == 0, 10), "the learner's session is still open"
