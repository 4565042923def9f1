"""Thirty-fourth review: a SQLite store file another local user made (mode 0666, or only its ``-wal``, in a
directory everyone may write) was used as it was, and that user read the log and the quarantined mail; a
``connect_timeout`` that is no number in ``[database] url`` ended serve, doctor and quarantine in a traceback."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy.exc

from milterd.config import Config, ConfigError, DatabaseSection, load_config
from milterd.diagnostics import probe_store_files
from milterd.milter import supervisor
from milterd.services import build
from milterd.store.engine import make_engine
from milterd.store.ownership import judge_store_directory, judge_store_file, store_file_problems
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import write_config

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="files of another account need root (chown, seteuid)")

NOBODY = pwd.getpwnam("nobody")
OTHER = 12345  # a local user who is neither root nor the service account (no passwd entry: shown as the number)
OWNERS = {NOBODY.pw_uid: "nobody"}


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A root directory, mode 0755, that nobody may traverse (pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="milterd-review34-"))
    path.chmod(0o755)
    yield path
    if os.getuid() == 0:
        os.seteuid(0)
    shutil.rmtree(path, ignore_errors=True)


def _file(path: Path, mode: int, uid: int = NOBODY.pw_uid) -> os.stat_result:
    path.write_bytes(b"")
    os.chown(path, uid, -1)
    path.chmod(mode)
    return os.lstat(path)


def _config(directory: Path, store: Path, user: str = "nobody") -> Config:
    (directory / "rules").mkdir(exist_ok=True)
    sections = with_sections(NO_CHECKS, {"milter": {"user": user}, "database": {"url": f"sqlite:///{store}"}, "rules": {"dir": str(directory / "rules")}})
    return load_config(write_config(directory / "milter.conf", sections))


# --- the judges (pure) ------------------------------------------------------------------
@root_only
def test_a_store_file_of_another_user_or_open_to_others_is_refused(tmp_path: Path) -> None:
    planted = tmp_path / "milterd.sqlite"
    assert "is owned by 12345, not nobody" in judge_store_file(planted, _file(planted, 0o666, OTHER), OWNERS)
    assert "is owned by 12345" in judge_store_file(planted, _file(planted, 0o600, OTHER), OWNERS)
    problem = judge_store_file(planted, _file(planted, 0o644), OWNERS)
    assert f"{planted} is mode 0644" in problem and f"chmod 600 {planted}" in problem
    assert "mode 0660" in judge_store_file(planted, _file(planted, 0o660), OWNERS)  # the group may not write
    assert judge_store_file(planted, _file(planted, 0o640), OWNERS) == ""  # reading, a group may be given
    assert judge_store_file(planted, _file(planted, 0o600), OWNERS) == ""


def test_a_symlink_or_another_kind_of_file_is_refused(tmp_path: Path) -> None:
    wal = tmp_path / "milterd.sqlite-wal"
    wal.symlink_to(tmp_path / "elsewhere")
    assert "is a symlink" in judge_store_file(wal, os.lstat(wal), {os.geteuid(): "me"})
    fifo = tmp_path / "milterd.sqlite-shm"
    os.mkfifo(fifo, 0o600)
    assert "is not a regular file" in judge_store_file(fifo, os.lstat(fifo), {os.geteuid(): "me"})


@root_only
def test_a_directory_others_may_write_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)  # as /tmp: sticky, yet anyone may make the store's files there first
    assert "is mode 1777: other users may write it" in judge_store_directory(shared, os.stat(shared))
    shared.chmod(0o775)
    assert "mode 0775" in judge_store_directory(shared, os.stat(shared))
    assert judge_store_directory(shared, os.stat(shared), group_shared=False) == ""  # a user private group (umask 002)
    os.chown(shared, NOBODY.pw_uid, -1)
    shared.chmod(0o777)
    assert "mode 0777" in judge_store_directory(shared, os.stat(shared))  # the account's own, yet open to all
    shared.chmod(0o755)
    assert judge_store_directory(shared, os.stat(shared)) == ""  # the account's own (/var/lib/milterd)
    os.chown(shared, 0, -1)
    assert judge_store_directory(shared, os.stat(shared)) == ""  # root's: README's working directory


@root_only
def test_only_a_planted_wal_file_is_found(tmp_path: Path) -> None:
    _file(tmp_path / "milterd.sqlite-wal", 0o666, OTHER)
    [problem] = store_file_problems(tmp_path / "milterd.sqlite", {0: "root", **OWNERS})
    assert f"{tmp_path / 'milterd.sqlite-wal'} is owned by 12345" in problem


def test_files_milterd_made_in_a_private_directory_are_taken(tmp_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        _file(tmp_path / f"milterd.sqlite{suffix}", 0o600, os.geteuid())
    assert store_file_problems(tmp_path / "milterd.sqlite", {os.geteuid(): "me"}) == []
    assert store_file_problems(tmp_path / "no" / "such" / "milterd.sqlite", {os.geteuid(): "me"}) == []  # made later, 0700


# --- serve, rules lint, doctor ----------------------------------------------------------------
@root_only
def test_serve_refuses_a_store_file_another_user_made_before_sqlite_uses_it(open_dir: Path) -> None:
    """The review's case: only the -wal planted, mode 0666, in the store's directory; serve (as root, user nobody)
    used to hand over the rest and let SQLite write the quarantine into that file."""
    wal = open_dir / "milterd.sqlite-wal"
    _file(wal, 0o666, OTHER)
    config = _config(open_dir, open_dir / "milterd.sqlite")
    with pytest.raises(ConfigError, match=r"\[database\] url: not using the SQLite store .*milterd.sqlite-wal is owned by 12345, not root or nobody"):
        supervisor.check_store(config, build(config))
    assert os.geteuid() == 0
    info = os.lstat(wal)
    assert (info.st_size, info.st_uid, stat.S_IMODE(info.st_mode)) == (0, OTHER, 0o666)  # nothing written into it


@root_only
def test_serve_refuses_a_store_in_a_directory_everyone_may_write(open_dir: Path) -> None:
    shared = open_dir / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    config = _config(open_dir, shared / "milterd.sqlite")
    with pytest.raises(ConfigError, match=r"shared is mode 1777: other users may write it"):
        supervisor.check_store(config, build(config))
    assert list(shared.iterdir()) == []  # root made nothing there


@root_only
def test_after_the_hand_over_only_the_account_may_own_the_files(open_dir: Path) -> None:
    store = open_dir / "milterd.sqlite"
    _file(store, 0o600, 0)
    config = _config(open_dir, store)
    supervisor.check_store_files(config, handed_over=False)  # root's: root gives it to nobody
    with pytest.raises(ConfigError, match="is owned by root, not nobody"):
        supervisor.check_store_files(config, handed_over=True)
    supervisor.hand_over_store(config)
    supervisor.check_store_files(config, handed_over=True)


@root_only
def test_rules_lint_and_doctor_judge_the_store_as_serve_does(open_dir: Path) -> None:
    store = open_dir / "milterd.sqlite"
    _file(store, 0o644)
    config = _config(open_dir, store)
    with pytest.raises(ConfigError, match=r"milterd.sqlite is mode 0644: .*chmod 600"):
        supervisor.check_start(config)
    [finding] = probe_store_files(config)
    assert finding.status == "fail" and "mode 0644" in finding.detail and finding.detail.endswith("(serve refuses to start)")
    store.chmod(0o600)
    supervisor.check_start(config)
    assert probe_store_files(config) == []


@root_only
def test_the_documented_start_in_a_root_directory_still_works(open_dir: Path) -> None:
    """README's first command: a fresh store in root's working directory (0755), given to nobody."""
    work = open_dir / "work"
    work.mkdir(mode=0o755)
    config = _config(open_dir, work / "milterd.sqlite")
    supervisor.check_store(config, build(config))
    assert os.geteuid() == 0
    for path in work.iterdir():
        info = os.lstat(path)
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (NOBODY.pw_uid, 0o600), path


# --- B: connect_timeout --------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["abc", "-1", "2.5", "inf", "5&connect_timeout=6", "99999999999"])
def test_a_connect_timeout_that_is_no_whole_number_is_a_config_error(tmp_path: Path, value: str) -> None:
    path = write_config(tmp_path / "milter.conf", {"database": {"url": f"postgresql+psycopg://milterd:S3cretPw@127.0.0.1:25009/x?connect_timeout={value}"}})
    with pytest.raises(ConfigError, match=r"\[database\] url: connect_timeout must be a whole number of seconds") as caught:
        load_config(path)
    assert "S3cretPw" not in str(caught.value)


@pytest.mark.parametrize("value", ["0", "5", " 10 "])
def test_a_whole_connect_timeout_is_taken(value: str) -> None:
    url = f"postgresql+psycopg://u@h/x?connect_timeout={value}"
    assert DatabaseSection(url=url).url == url


def test_a_bad_connect_timeout_the_check_missed_is_the_driver_s_error_not_a_traceback() -> None:
    engine = make_engine("postgresql+psycopg://u@127.0.0.1:9/x?connect_timeout=abc", busy_timeout=1)  # the check bypassed
    try:
        with pytest.raises(sqlalchemy.exc.DBAPIError, match="connect_timeout"):
            engine.connect()
    finally:
        engine.dispose()


# --- second look ------------------------------------------------------------------------------------
@root_only
def test_a_group_writable_directory_of_its_owner_s_own_group_is_taken(open_dir: Path) -> None:
    # A user private group (umask 002): the group holds only the directory's owner, who may write it anyway.
    daemon = pwd.getpwnam("daemon")
    checkout = open_dir / "co"
    checkout.mkdir()
    os.chown(checkout, daemon.pw_uid, daemon.pw_gid)
    checkout.chmod(0o775)
    assert store_file_problems(checkout / "milterd.sqlite", OWNERS) == []


@root_only
def test_not_root_the_files_of_the_configured_account_are_its_own(open_dir: Path) -> None:
    # rules lint or doctor run by another administrator account: the files root gave to nobody were "another account's".
    store = open_dir / "milterd.sqlite"
    _file(store, 0o600)
    config = _config(open_dir, store)
    daemon = pwd.getpwnam("daemon")
    os.seteuid(daemon.pw_uid)
    try:
        owners = supervisor.store_owners(config, handed_over=True)
    finally:
        os.seteuid(0)
    assert owners == {daemon.pw_uid: "daemon", NOBODY.pw_uid: "nobody"}
    assert store_file_problems(store, owners) == []


def test_a_store_of_another_account_is_said_to_be_chowned_if_it_is_milterd_s() -> None:
    planted = Path("/var/lib/milterd/milterd.sqlite")
    info = os.stat_result((stat.S_IFREG | 0o600, 0, 0, 1, NOBODY.pw_uid, 0, 0, 0, 0, 0))
    problem = judge_store_file(planted, info, {1: "daemon"})
    assert "chown it to daemon" in problem and "owned by nobody" in problem
