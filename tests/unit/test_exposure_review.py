"""What milterd exposes to other local users: files root touches in directories the service
account may write (the store's -wal/-shm, the unix socket, the pid file), and doctor's
warnings about private files open to everyone."""

from __future__ import annotations

import argparse
import logging
import os
import pwd
import socket
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from milterd.commands import serve as serve_command
from milterd.config import Config
from milterd.diagnostics import judge_file_mode, probe_private_files, probe_store_files
from milterd.logs import SafeFormatter
from milterd.milter import supervisor
from milterd.store.engine import sqlite_file

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another account needs root")


def _victim(tmp_path: Path) -> Path:
    """A root-owned file that the service account must never be given nor see changed."""
    victim = tmp_path / "victim"
    victim.write_text("root:secret\n")
    victim.chmod(0o640)
    return victim


def _nobody(monkeypatch: pytest.MonkeyPatch) -> pwd.struct_passwd:
    nobody = pwd.getpwnam("nobody")
    monkeypatch.setattr(supervisor, "service_account", lambda _config: ("nobody", nobody.pw_uid, nobody.pw_gid))
    return nobody


@root_only
def test_hand_over_store_does_not_follow_a_symlink_planted_as_wal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = _nobody(monkeypatch)
    victim = _victim(tmp_path)
    store = tmp_path / "milterd.sqlite"
    store.write_bytes(b"")
    os.symlink(victim, f"{store}-wal")
    supervisor.hand_over_store(Config().with_changes({"database.url": f"sqlite:///{store}"}))
    info = victim.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o640)
    assert victim.read_text() == "root:secret\n"
    assert store.stat().st_uid == nobody.pw_uid  # the store itself is still handed over
    assert (tmp_path / "milterd.sqlite-shm").stat().st_uid == nobody.pw_uid


@root_only
def test_hand_over_store_does_not_give_away_a_hard_link(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _nobody(monkeypatch)
    victim = _victim(tmp_path)
    store = tmp_path / "milterd.sqlite"
    store.write_bytes(b"")
    os.link(victim, f"{store}-shm")
    supervisor.hand_over_store(Config().with_changes({"database.url": f"sqlite:///{store}"}))
    assert victim.stat().st_uid == 0


@root_only
def test_socket_owner_is_not_set_through_a_symlink(tmp_path: Path) -> None:
    victim = _victim(tmp_path)
    path = tmp_path / "milterd.sock"
    os.symlink(victim, path)  # put in place of the socket between bind() and chown
    config = Config().with_changes({"milter.socket": f"unix:{path}", "milter.socket_owner": "nobody", "milter.socket_mode": "0666"})
    supervisor._set_socket_owner(config, str(path))
    info = victim.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (0, 0o640)


def bound_by_bind(path: Path, monkeypatch: pytest.MonkeyPatch) -> list[socket.socket]:
    """libmilter's socket calls made in process: opening binds a unix socket at *path* (kept in the list returned)."""
    bound: list[socket.socket] = []

    def opensocket(_remove: bool) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        bound.append(sock)

    monkeypatch.setattr(supervisor, "register", lambda _cls: None)
    for name, fake in (("setconn", lambda _conn: None), ("setbacklog", lambda _n: None), ("opensocket", opensocket)):
        monkeypatch.setattr(supervisor.milter, name, fake)
    return bound


def test_unix_socket_is_created_with_socket_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The mode comes from bind() under a umask, and the process's umask is restored."""
    path = tmp_path / "milterd.sock"
    bound = bound_by_bind(path, monkeypatch)
    before = os.umask(0o022)
    try:
        supervisor.open_socket(Config().with_changes({"milter.socket": f"unix:{path}", "milter.socket_mode": "0640"}))
        assert os.umask(0o022) == 0o022
    finally:
        os.umask(before)
        for sock in bound:
            sock.close()
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o640
    assert supervisor.socket_umask("0660") == 0o117


def test_pid_file_is_not_written_through_a_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = _victim(tmp_path)
    pid_file = tmp_path / "milterd.pid"
    os.symlink(victim, pid_file)  # planted by [milter] user, who may write the pid file's directory
    seen: list[str] = []
    monkeypatch.setattr(serve_command, "serve", lambda _config: seen.append(pid_file.read_text()) or 0)
    assert serve_command.run_serve(argparse.Namespace(config=None, pid_file=str(pid_file))) == 0
    assert victim.read_text() == "root:secret\n"
    assert seen == [f"{os.getpid()}\n"]
    assert not pid_file.exists()


def _exposed(tmp_path: Path, mode: int) -> Config:
    store, key, password, seal = tmp_path / "milterd.sqlite", tmp_path / "example.org.s1.key", tmp_path / "release.pw", tmp_path / "arc.key"
    for path in (store, key, password, seal):
        path.write_text("private")
        path.chmod(mode)
    changes: dict[str, Any] = {
        "database.url": f"sqlite:///{store}",
        "quarantine.release_password_file": str(password),
        "dkim_signing.enabled": True,
        "dkim_signing.keys": [{"domain": "example.org", "selector": "s1", "key_file": str(key)}],
    }
    arc = {**Config().checks.arc.model_dump(), "seal": True, "seal_domain": "example.org", "seal_selector": "arc", "seal_key_file": str(seal)}
    changes["checks.arc"] = arc
    return Config().with_changes(changes)


def test_doctor_warns_about_private_files_open_to_every_local_user(tmp_path: Path) -> None:
    config = _exposed(tmp_path, 0o644)
    findings = probe_private_files(config)
    warned = {f.name: f for f in findings if f.status == "warn"}
    # The ARC sealing key too (found by review: it was left out).
    assert set(warned) == {f"permissions {tmp_path / name}" for name in ("example.org.s1.key", "release.pw", "arc.key")}
    assert "0644" in warned[f"permissions {tmp_path / 'release.pw'}"].detail
    # The store is one serve refuses (thirty-fourth review): a failure, not a warning.
    [store] = probe_store_files(config)
    assert store.status == "fail" and "quarantined mail" in store.detail and "0644" in store.detail


def test_doctor_is_quiet_about_private_files_of_their_owner_or_group(tmp_path: Path) -> None:
    assert probe_private_files(_exposed(tmp_path, 0o640)) == []
    assert judge_file_mode("x", tmp_path, stat.S_IFREG | 0o602) is not None  # writable by everyone is open too


def test_a_traceback_cannot_forge_a_log_line_nor_carry_terminal_escapes() -> None:
    """An exception whose message quotes client text (a header, an address) is logged with
    its CR/LF and escape sequences made visible: the traceback keeps its own line breaks."""
    formatter = SafeFormatter("milterd[%(process)d]: %(message)s")
    forged = "bad header\nmilterd[1]: 4Fh3kT0zZ9z: action=accept\x1b[2J\r"
    try:
        try:
            raise RuntimeError("inner\nmilterd[2]: forged")
        except RuntimeError as exc:
            raise ValueError(forged) from exc
    except ValueError:
        record = logging.LogRecord("milterd", logging.ERROR, __file__, 1, "check %s failed", ("x",), sys.exc_info())
    text = formatter.format(record)
    assert "\x1b" not in text and "\r" not in text
    assert not any(line.startswith("milterd[") for line in text.splitlines()[1:]), text
    assert "ValueError: bad header\\nmilterd[1]: 4Fh3kT0zZ9z: action=accept\\x1b[2J\\r" in text
    assert "RuntimeError: inner\\nmilterd[2]: forged" in text
    assert text.splitlines()[1] == "Traceback (most recent call last):"


@root_only
def test_hand_over_store_does_not_follow_a_store_symlink_the_account_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The service account, in its own directory, replaced the store with a symlink to a root-owned file."""
    nobody = _nobody(monkeypatch)
    victim = _victim(tmp_path)
    store = tmp_path / "milterd.sqlite"
    os.symlink(victim, store)
    os.lchown(store, nobody.pw_uid, nobody.pw_gid)
    supervisor.hand_over_store(Config().with_changes({"database.url": f"sqlite:///{store}"}))
    assert victim.stat().st_uid == 0
    assert not (tmp_path / "victim-wal").exists()


@root_only
def test_hand_over_store_follows_roots_own_symlink(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    nobody = _nobody(monkeypatch)
    (tmp_path / "data").mkdir()
    real = tmp_path / "data" / "milterd.sqlite"
    real.write_bytes(b"")
    os.symlink(real, tmp_path / "milterd.sqlite")
    supervisor.hand_over_store(Config().with_changes({"database.url": f"sqlite:///{tmp_path / 'milterd.sqlite'}"}))
    assert real.stat().st_uid == nobody.pw_uid
    assert (tmp_path / "data" / "milterd.sqlite-wal").stat().st_uid == nobody.pw_uid


def test_a_url_that_does_not_parse_names_no_sqlite_file() -> None:
    # doctor's private-file check met "…:notaport/…" with a traceback; opening the store says why.
    assert sqlite_file("postgresql+psycopg://u:p@127.0.0.1:notaport/db") is None
