"""A root command gives back the SQLite store's side files it made SQLite remove (review, thirty-sixth session).

The last connection to close checkpoints the store and deletes its ``-wal`` and ``-shm``; when that was a root
command's while no worker had the store open, and the store's directory is one only root may write, the service
account could not make them again: every message was answered 451 until a restart.
"""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from milterd.config import DatabaseSection
from milterd.store import Store
from milterd.store.ownership import restore_side_files

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give files away")
NOBODY = pwd.getpwnam("nobody")


def test_closing_a_store_another_account_owns_gives_its_side_files_back(tmp_path: Path) -> None:
    file = tmp_path / "store.sqlite"
    store = Store(DatabaseSection(url=f"sqlite:///{file}"))
    store.upgrade()
    store.close()
    os.chown(file, NOBODY.pw_uid, NOBODY.pw_gid)
    store = Store(DatabaseSection(url=f"sqlite:///{file}"))
    store.require_schema()
    store.close()
    for suffix in ("-wal", "-shm"):
        side = os.lstat(f"{file}{suffix}")
        assert (side.st_uid, side.st_gid, side.st_mode & 0o777) == (NOBODY.pw_uid, NOBODY.pw_gid, 0o600), suffix


def test_a_symlink_in_a_side_file_s_place_is_not_followed(tmp_path: Path) -> None:
    file, target = tmp_path / "store.sqlite", tmp_path / "elsewhere"
    file.write_bytes(b"")
    os.chown(file, NOBODY.pw_uid, NOBODY.pw_gid)
    (tmp_path / "store.sqlite-wal").symlink_to(target)
    restore_side_files(file)
    assert not target.exists() and (tmp_path / "store.sqlite-wal").is_symlink()
    assert os.lstat(tmp_path / "store.sqlite-shm").st_uid == NOBODY.pw_uid


def test_nothing_is_made_for_a_store_root_owns(tmp_path: Path) -> None:
    file = tmp_path / "store.sqlite"
    file.write_bytes(b"")
    restore_side_files(file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.sqlite"]


def test_a_store_reached_through_root_s_symlink_gets_its_side_files_beside_the_real_file(tmp_path: Path) -> None:
    # A third look: /var/lib/milterd/milterd.sqlite -> /srv/disk/milterd.sqlite (serve follows root's links): the
    # link was taken for no store file, and SQLite's side files, beside the real one, stayed removed.
    disk = tmp_path / "disk"
    disk.mkdir()
    real, link = disk / "store.sqlite", tmp_path / "store.sqlite"
    real.write_bytes(b"")
    os.chown(real, NOBODY.pw_uid, NOBODY.pw_gid)
    link.symlink_to(real)
    restore_side_files(link)
    assert os.lstat(disk / "store.sqlite-wal").st_uid == NOBODY.pw_uid and os.lstat(disk / "store.sqlite-shm").st_uid == NOBODY.pw_uid
    assert not (tmp_path / "store.sqlite-wal").exists()


def test_a_link_another_account_made_is_not_followed(tmp_path: Path) -> None:
    real, link = tmp_path / "real.sqlite", tmp_path / "store.sqlite"
    real.write_bytes(b"")
    os.chown(real, NOBODY.pw_uid, NOBODY.pw_gid)
    link.symlink_to(real)
    os.lchown(link, NOBODY.pw_uid, NOBODY.pw_gid)
    restore_side_files(link)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["real.sqlite", "store.sqlite"]
