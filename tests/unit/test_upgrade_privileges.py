"""``serve`` started as root makes or upgrades the store's schema as ``[milter] user``, after
dropping privileges: root never opens a SQLite store whose file and directory that account
controls (a symlink it put in the store's place made root write milterd's schema into the
file it pointed to).  Root only binds the socket, reads the configuration and keys, and
creates the store's missing directory and files for the account, without opening them.

The tests marked root_only really become ``nobody`` for a while: ``os.setuid`` and
``os.setgid`` are replaced by ``os.seteuid`` and ``os.setegid``, which root can undo at the
end of the test (unit tests may not fork a process that would drop for good)."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from milterd.config import ConfigError
from milterd.endpoints import parse_socket
from milterd.milter import supervisor
from milterd.store import Store
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import write_config

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="becoming another account (and back) needs root")

NOBODY = pwd.getpwnam("nobody")
SETGROUPS = os.setgroups  # the real one: the tests replace os.setgroups while they run


class Started(Exception):
    """Raised where the supervisor would start serving: everything before it went through."""


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory the account (nobody) may traverse (pytest's temporary directories are root's, 0700)."""
    path = Path(tempfile.mkdtemp(prefix="milterd-upgrade-"))
    path.chmod(0o755)
    yield path
    if os.getuid() == 0:  # torn down before events: the test may still be nobody
        os.seteuid(0)
    shutil.rmtree(path, ignore_errors=True)


def _serve(monkeypatch: pytest.MonkeyPatch, events: list[str], root: Path, store: Path, *, auto_upgrade: bool = True, real: bool = False) -> Callable[[], int]:
    """``supervisor.serve`` on a config with *store*, up to where it would start serving.

    The socket is not opened.  *events* records the hand-over, the drop to nobody and
    every schema check or upgrade (with the effective uid it ran as); only when *real*
    are the store's files handed over and the effective ids changed.
    """
    (root / "rules").mkdir(exist_ok=True)
    sections = with_sections(NO_CHECKS, {"milter": {"user": "nobody"}, "database": {"url": f"sqlite:///{store}", "auto_upgrade": auto_upgrade}, "rules": {"dir": str(root / "rules")}})
    config_path = write_config(root / "milter.conf", sections)
    monkeypatch.setattr(supervisor, "setup_logging", lambda *_args: None)
    # As the real one: None once the drop is done (the effective uid is no longer root's).
    monkeypatch.setattr(supervisor, "service_account", lambda _config: ("nobody", NOBODY.pw_uid, NOBODY.pw_gid) if os.geteuid() == 0 else None)
    monkeypatch.setattr(supervisor, "open_socket", lambda _config: events.append("open_socket") or (parse_socket("inet:127.0.0.1:8895"), -1))
    hand_over, ensure_schema = supervisor.hand_over_store, Store.ensure_schema
    monkeypatch.setattr(supervisor, "hand_over_store", lambda config: events.append("hand_over_store") or (hand_over(config) if real else None))
    if not real:  # root's files, never given to the account: the check after the hand-over would refuse them
        monkeypatch.setattr(supervisor, "check_store_files", lambda _config, handed_over: None)

    def schema(store: Store, auto_upgrade: bool) -> None:
        events.append(f"ensure_schema as {os.geteuid()}")
        ensure_schema(store, auto_upgrade)

    monkeypatch.setattr(Store, "ensure_schema", schema)
    # setegid/seteuid: the store check before the socket opens, which root undoes afterwards.
    for name, call in (("setgroups", os.setgroups), ("setgid", os.setegid), ("setuid", os.seteuid), ("setegid", os.setegid), ("seteuid", os.seteuid)):
        monkeypatch.setattr(os, name, lambda value, name=name, call=call: events.append(name) or (call(value) if real else None))

    def stop(_listen: str) -> Any:
        raise Started

    monkeypatch.setattr(supervisor.metrics, "start", stop)
    return lambda: supervisor.serve(str(config_path))


@pytest.fixture
def events() -> Iterator[list[str]]:
    """What happened, in order; afterwards root again (ids, groups, umask) whatever the test did."""
    groups, umask = os.getgroups(), os.umask(0o022)
    os.umask(umask)
    try:
        yield []
    finally:
        if os.getuid() == 0:
            os.seteuid(0)
            os.setegid(0)
            SETGROUPS(groups)
        os.umask(umask)


def test_the_schema_is_made_after_the_drop(monkeypatch: pytest.MonkeyPatch, events: list[str], tmp_path: Path) -> None:
    with pytest.raises(Started):
        _serve(monkeypatch, events, tmp_path, tmp_path / "milterd.sqlite")()
    euid = os.geteuid()
    checked = ["hand_over_store", "setgroups", "setegid", "seteuid", f"ensure_schema as {euid}", "seteuid", "setegid", "setgroups"]
    # Not really dropped here (setuid is recorded only): the check of what a reload reads switches again.
    reload_check = ["setgroups", "setegid", "seteuid", "seteuid", "setegid", "setgroups"]
    assert events == checked + ["open_socket", "hand_over_store", "setgroups", "setgid", "setuid", f"ensure_schema as {euid}"] + reload_check


def test_a_schema_that_cannot_be_used_refuses_the_start_before_the_socket(monkeypatch: pytest.MonkeyPatch, events: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """auto_upgrade off and no schema: exit status 1 with the reason, before any worker (or the metrics) starts."""
    spawned: list[int] = []
    monkeypatch.setattr(supervisor.Supervisor, "_spawn", lambda self: spawned.append(1) or 0)
    assert _serve(monkeypatch, events, tmp_path, tmp_path / "milterd.sqlite", auto_upgrade=False)() == 1
    assert "milterd: the database schema is at nothing, this milterd needs" in capsys.readouterr().err
    # Refused by the store check, as the account, before the socket listens (root's ids back after it).
    assert events == ["hand_over_store", "setgroups", "setegid", "seteuid", f"ensure_schema as {os.geteuid()}", "seteuid", "setegid", "setgroups"]
    assert spawned == []


@root_only
def test_root_does_not_write_through_a_store_symlink_the_account_made(monkeypatch: pytest.MonkeyPatch, events: list[str], open_dir: Path) -> None:
    """On a later start the account's directory holds, in the store's place, a symlink to an
    empty root file: root used to open it as the store and write the schema into it."""
    victim = open_dir / "victim"
    victim.write_bytes(b"")
    victim.chmod(0o600)
    data = open_dir / "lib"  # as /var/lib/milterd: the account's
    data.mkdir()
    os.chown(data, NOBODY.pw_uid, NOBODY.pw_gid)
    os.symlink(victim, data / "milterd.sqlite")
    os.lchown(data / "milterd.sqlite", NOBODY.pw_uid, NOBODY.pw_gid)
    try:
        status = _serve(monkeypatch, events, open_dir, data / "milterd.sqlite", real=True)()
    except ConfigError:  # check_writable's os.access asks for the real uid, which os.seteuid keeps
        status = 2
    except Started:
        status = 0
    os.seteuid(0)
    info = victim.stat()
    assert (info.st_size, info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0, 0o600)
    assert sorted(p.name for p in open_dir.iterdir()) == ["lib", "milter.conf", "rules", "victim"]
    assert status != 0  # as nobody: SQLite cannot open the file the symlink names
    assert all(event == f"ensure_schema as {NOBODY.pw_uid}" for event in events if event.startswith("ensure_schema"))


@root_only
def test_first_start_makes_the_directory_and_the_schema_for_the_account(monkeypatch: pytest.MonkeyPatch, events: list[str], open_dir: Path) -> None:
    store = open_dir / "lib" / "milterd" / "milterd.sqlite"
    with pytest.raises(Started):
        _serve(monkeypatch, events, open_dir, store, real=True)()
    os.seteuid(0)
    assert f"ensure_schema as {NOBODY.pw_uid}" in events
    for directory in (store.parent, store.parent.parent):
        info = directory.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (NOBODY.pw_uid, 0o700), directory
    files = list(store.parent.iterdir())  # SQLite, as the account, removed its -wal and -shm when done
    assert store in files
    for file in files:
        info = file.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (NOBODY.pw_uid, 0o600), file
    os.seteuid(NOBODY.pw_uid)  # read as the account: root opens none of its files
    checked = Store(with_config(store))
    try:
        assert checked.schema_version() == checked.head_version()
    finally:
        checked.close()


@root_only
def test_first_start_in_a_directory_only_root_may_write(monkeypatch: pytest.MonkeyPatch, events: list[str], open_dir: Path) -> None:
    """README's first command: the store in root's working directory.  Root makes the three
    files; the account, which cannot create a -journal file there, still makes the schema."""
    data = open_dir / "work"
    data.mkdir(mode=0o755)
    store = data / "milterd.sqlite"
    with pytest.raises(Started):
        _serve(monkeypatch, events, open_dir, store, real=True)()
    assert f"ensure_schema as {NOBODY.pw_uid}" in events
    checked = Store(with_config(store))  # still as nobody
    try:
        assert checked.schema_version() == checked.head_version()
    finally:
        checked.close()
    assert not (data / "milterd.sqlite-journal").exists()


def with_config(store: Path) -> Any:
    """The [database] section of a config on *store*."""
    return supervisor.Config().with_changes({"database.url": f"sqlite:///{store}"}).database
