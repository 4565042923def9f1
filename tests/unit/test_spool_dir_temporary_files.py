"""[milter] spool_dir is where every temporary file of a worker goes, and the directory used is checked at start."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from milterd.config import Config, ConfigError
from milterd.content import mimeparts
from milterd.milter.supervisor import check_writable, temporary_directory, use_spool_dir


def _config(tmp_path: Path, spool_dir: str) -> Config:
    return Config.model_validate({"milter": {"spool_dir": spool_dir}, "database": {"url": f"sqlite:///{tmp_path / 'log.sqlite'}"}})


@pytest.fixture
def system_tmp(monkeypatch: pytest.MonkeyPatch) -> None:
    """tempfile's process-wide directory, restored after the test."""
    monkeypatch.setattr(tempfile, "tempdir", tempfile.tempdir)


def test_the_system_temporary_directory_is_checked_when_spool_dir_is_empty(tmp_path: Path, system_tmp: None) -> None:
    tempfile.tempdir = str(tmp_path / "gone")
    with pytest.raises(ConfigError) as raised:
        check_writable(_config(tmp_path, ""))
    assert "[milter] spool_dir" in str(raised.value) and "system's temporary directory" in str(raised.value)
    tempfile.tempdir = str(tmp_path)
    check_writable(_config(tmp_path, ""))  # a usable one passes


def test_spool_dir_is_checked_when_set(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot write"):
        check_writable(_config(tmp_path, str(tmp_path / "missing")))
    check_writable(_config(tmp_path, str(tmp_path)))


def test_a_workers_decoded_attachments_go_to_spool_dir(tmp_path: Path, system_tmp: None) -> None:
    spool = tmp_path / "spool"
    spool.mkdir()
    config = _config(tmp_path, str(spool))
    use_spool_dir(config)
    assert temporary_directory(config) == str(spool) == tempfile.gettempdir()
    holder = tempfile.SpooledTemporaryFile(max_size=16)  # as mimeparts and archives make theirs
    holder.write(b"x" * 1024)  # over max_size: now a real file
    target = os.readlink(f"/proc/self/fd/{holder.fileno()}")
    holder.close()
    assert target.startswith(str(spool) + "/"), target
    assert mimeparts.tempfile is tempfile  # the content modules use the process's directory, not their own


def test_an_empty_spool_dir_leaves_the_system_directory(tmp_path: Path, system_tmp: None) -> None:
    before = tempfile.gettempdir()
    use_spool_dir(_config(tmp_path, ""))
    assert tempfile.gettempdir() == before
