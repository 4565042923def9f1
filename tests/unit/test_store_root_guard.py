"""Root's commands (``db upgrade``, ``log``, ``quarantine``…) open the SQLite store in a directory
the service account controls: they refuse a store reached through a symlink another account made,
or hard-linked, which could name any file root owns (SQLite would write its schema or WAL there)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from milterd.cli import main
from milterd.config import Config, DatabaseSection
from milterd.diagnostics import probe_database
from milterd.milter import supervisor
from milterd.store import Store, StoreError
from milterd.store.engine import planted_link

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="a symlink owned by another account needs root")

OTHER = 65534  # nobody: the service account


SECRET = b"root:secret\n"


def _victim(tmp_path: Path, content: bytes = SECRET) -> Path:
    """A root-owned file the store must never be written into (an empty one: SQLite would make the schema in it)."""
    victim = tmp_path / "victim"
    victim.write_bytes(content)
    victim.chmod(0o600)
    os.utime(victim, ns=(1_000_000_000_000_000_000, 1_000_000_000_000_000_000))
    return victim


def _untouched(victim: Path, content: bytes = SECRET) -> bool:
    info = victim.stat()
    return victim.read_bytes() == content and info.st_mtime_ns == 1_000_000_000_000_000_000 and info.st_uid == 0


def _planted(tmp_path: Path, target: Path) -> Path:
    """The store's name, a symlink to *target* that the service account made."""
    store = tmp_path / "milterd.sqlite"
    os.symlink(target, store)
    os.lchown(store, OTHER, OTHER)
    return store


def _section(store: Path) -> DatabaseSection:
    return Config().with_changes({"database.url": f"sqlite:///{store}"}).database


def _upgrade(store: Path) -> str:
    opened = Store(_section(store))
    try:
        return opened.upgrade()
    finally:
        opened.close()


@root_only
@pytest.mark.parametrize("content", [SECRET, b""])
def test_a_store_symlink_the_account_made_is_refused(tmp_path: Path, content: bytes) -> None:
    victim = _victim(tmp_path, content)
    store = _planted(tmp_path, victim)
    with pytest.raises(StoreError, match=f"not opening the SQLite store {store} as root: {store} is a symlink not owned by root"):
        _upgrade(store)
    assert _untouched(victim, content)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["milterd.sqlite", "victim"]


@root_only
def test_a_dangling_store_symlink_creates_nothing(tmp_path: Path) -> None:
    """A link to a file root would create (a cron job, say)."""
    store = _planted(tmp_path, tmp_path / "cron.d" / "job")
    (tmp_path / "cron.d").mkdir()
    with pytest.raises(StoreError, match="is a symlink not owned by root"):
        _upgrade(store)
    assert list((tmp_path / "cron.d").iterdir()) == []


@root_only
def test_a_parent_directory_symlink_the_account_made_is_refused(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    (tmp_path / "etc").mkdir()
    os.symlink(victim, tmp_path / "etc" / "milterd.sqlite")  # root's own link, in the directory the account's link names
    lib = tmp_path / "lib"
    lib.mkdir()
    os.symlink(tmp_path / "etc", lib / "milterd")
    os.lchown(lib / "milterd", OTHER, OTHER)
    with pytest.raises(StoreError, match=f"{lib / 'milterd'} is a symlink not owned by root"):
        _upgrade(lib / "milterd" / "milterd.sqlite")
    assert _untouched(victim)


@root_only
def test_an_account_link_behind_roots_own_link_is_refused(tmp_path: Path) -> None:
    """/var/lib/milterd → /srv/milterd (root's), where the account's directory holds its own link."""
    victim = _victim(tmp_path)
    srv = tmp_path / "srv"
    srv.mkdir()
    os.chown(srv, OTHER, OTHER)
    os.symlink(victim, srv / "milterd.sqlite")
    os.lchown(srv / "milterd.sqlite", OTHER, OTHER)
    (tmp_path / "var").mkdir()
    os.symlink("../srv", tmp_path / "var" / "lib")  # relative, root's
    (tmp_path / "x").mkdir()
    with pytest.raises(StoreError, match=f"{srv / 'milterd.sqlite'} is a symlink not owned by root"):
        _upgrade(tmp_path / "x" / ".." / "var" / "lib" / "milterd.sqlite")
    assert _untouched(victim)


@root_only
def test_roots_own_symlinks_are_followed(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    disk.mkdir()
    os.symlink(disk, tmp_path / "lib")  # the administrator moved the store's directory to another disk
    os.symlink(disk / "real.sqlite", disk / "milterd.sqlite")
    assert _upgrade(tmp_path / "lib" / "milterd.sqlite")
    assert (disk / "real.sqlite").stat().st_size > 0
    assert planted_link(tmp_path / "lib" / "milterd.sqlite") is None


@root_only
@pytest.mark.parametrize("content", [SECRET, b""])
def test_a_hard_linked_store_file_is_refused(tmp_path: Path, content: bytes) -> None:
    victim = _victim(tmp_path, content)
    store = tmp_path / "milterd.sqlite"
    os.link(victim, store)
    with pytest.raises(StoreError, match=f"not opening the SQLite store {store} as root: {store} has 2 hard links"):
        _upgrade(store)
    assert _untouched(victim, content)


@root_only
@pytest.mark.parametrize("suffix", ["-wal", "-shm", "-journal"])
def test_a_hard_linked_companion_file_is_refused(tmp_path: Path, suffix: str) -> None:
    """SQLite opens these without following a symlink, but a hard link takes its writes to the root file."""
    victim = _victim(tmp_path)
    store = tmp_path / "milterd.sqlite"
    _upgrade(store)
    os.link(victim, f"{store}{suffix}")
    with pytest.raises(StoreError, match=f"{store}{suffix} has 2 hard links"):
        _upgrade(store)
    assert _untouched(victim)


@root_only
def test_a_store_that_is_not_a_regular_file_is_refused(tmp_path: Path) -> None:
    store = tmp_path / "milterd.sqlite"
    os.mkfifo(store)
    with pytest.raises(StoreError, match=f"{store} is not a regular file"):
        _upgrade(store)


@root_only
def test_the_service_account_itself_may_use_its_links(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not root (serve's workers, after the drop): the account may only reach its own files; nothing is refused."""
    own = tmp_path / "own.sqlite"
    own.write_bytes(b"")
    store = _planted(tmp_path, own)
    opened = Store(_section(store))  # made as root: no check, no connection yet
    try:
        monkeypatch.setattr(os, "geteuid", lambda: 1000)
        assert opened.upgrade()
    finally:
        opened.close()
    assert own.stat().st_size > 0


@root_only
def test_the_engine_made_as_root_checks_when_it_connects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve builds its store as root and first connects after the drop: the check is the connection's."""
    victim = _victim(tmp_path)
    store = _planted(tmp_path, victim)
    opened = Store(_section(store))
    try:
        with pytest.raises(StoreError, match="is a symlink not owned by root"):
            opened.upgrade()
    finally:
        opened.close()
    assert _untouched(victim)


def _conf(tmp_path: Path, store: Path) -> Path:
    path = tmp_path / "milter.conf"
    path.write_text(f'[milter]\nhostname = "mx.test"\n[database]\nurl = "sqlite:///{store}"\n')
    return path


@root_only
def test_db_upgrade_as_root_refuses_a_planted_store_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Root's `db upgrade` used to write milterd's schema into the empty root file the account's link named."""
    victim = _victim(tmp_path, b"")
    store = _planted(tmp_path, victim)
    status = main(["db", "upgrade", "-c", str(_conf(tmp_path, store))])
    out, err = capsys.readouterr()
    assert status != 0
    assert out == ""
    assert err == f"milterd: not opening the SQLite store {store} as root: {store} is a symlink not owned by root\n"
    assert _untouched(victim, b"")


@root_only
@pytest.mark.parametrize("argv", [["log"], ["quarantine", "list"], ["greylist", "list"], ["rules", "stats"], ["db", "version"]])
def test_every_store_command_refuses_a_planted_store(tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    victim = _victim(tmp_path)
    store = _planted(tmp_path, victim)
    status = main([*argv, "-c", str(_conf(tmp_path, store))])
    err = capsys.readouterr().err
    assert status != 0
    assert f"{store} is a symlink not owned by root" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert _untouched(victim)


@root_only
def test_doctor_reports_a_planted_store(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    store = _planted(tmp_path, victim)
    [finding] = probe_database(Config().with_changes({"database.url": f"sqlite:///{store}"}))
    assert finding.status == "fail" and "is a symlink not owned by root" in finding.detail
    assert _untouched(victim)


def test_planted_link_stops_at_the_first_missing_component(tmp_path: Path) -> None:
    assert planted_link(tmp_path / "no" / "such" / "store.sqlite") is None
    assert planted_link(Path("relative.sqlite")) is None


@root_only
def test_hand_over_store_uses_the_same_rule(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """serve's hand-over (as root, before the drop) meets the account's link behind root's own:
    /var/lib/milterd → /srv/data (root's), /srv/data → /etc (the account's)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    victim = etc / "milterd.sqlite"
    victim.write_bytes(SECRET)
    srv = tmp_path / "srv"
    srv.mkdir()
    os.chown(srv, OTHER, OTHER)
    os.symlink(etc, srv / "data")
    os.lchown(srv / "data", OTHER, OTHER)
    os.symlink(srv / "data", tmp_path / "lib")
    monkeypatch.setattr(supervisor, "service_account", lambda _config: ("nobody", OTHER, OTHER))
    supervisor.hand_over_store(Config().with_changes({"database.url": f"sqlite:///{tmp_path / 'lib' / 'milterd.sqlite'}"}))
    assert victim.stat().st_uid == 0
    assert sorted(p.name for p in etc.iterdir()) == ["milterd.sqlite"]
