"""The start warns when the service account cannot read the code it runs (found by review: with the
interpreter under /root, the metrics page's first import after the drop failed with a traceback)."""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from milterd.milter import supervisor

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="becoming another account (and back) needs root")
NOBODY = pwd.getpwnam("nobody")


@pytest.fixture
def tree() -> Iterator[Path]:
    """/tmp/X (0755) holding closed/ (0700, root's) and open/ (0755), each with a lib/ (0755)."""
    root = Path(tempfile.mkdtemp(prefix="milterd-code-"))
    root.chmod(0o755)
    for name, mode in (("closed", 0o700), ("open", 0o755)):
        (root / name / "lib").mkdir(parents=True)
        (root / name).chmod(mode)
        (root / name / "lib").chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@root_only
def test_a_directory_of_code_the_account_cannot_enter_is_said(tree: Path) -> None:
    directories = [("Python's standard library", tree / "closed" / "lib"), ("milterd's package", tree / "open" / "lib")]
    os.setegid(NOBODY.pw_gid)
    os.seteuid(NOBODY.pw_uid)
    try:
        found = supervisor.unreadable_code(directories)
    finally:
        os.seteuid(0)
        os.setegid(0)
    assert found == [f"user nobody cannot read {tree}/closed/lib (Python's standard library: cannot enter {tree}/closed): a module "
                     "first imported after the start would fail; install milterd where that user can read it"]


def test_the_installed_packages_are_among_the_code_checked() -> None:
    # prometheus_client, libarchive and dkim live there, imported first after the drop (found by review: left out).
    import prometheus_client

    directories = [directory for _what, directory in supervisor.CODE_DIRECTORIES]
    assert any(Path(prometheus_client.__file__).is_relative_to(directory) for directory in directories)


def test_the_code_of_this_run_is_readable_by_its_own_user() -> None:
    assert supervisor.unreadable_code() == []  # as root (or whoever runs the tests): nothing to say


@root_only
def test_check_store_logs_the_warning_as_the_account(tree: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    seen: list[int] = []
    monkeypatch.setattr(supervisor, "check_writable", lambda _config: None)
    monkeypatch.setattr(supervisor, "hand_over_store", lambda _config: None)
    monkeypatch.setattr(supervisor, "check_store_files", lambda _config, handed_over: None)
    monkeypatch.setattr(supervisor, "unreadable_code", lambda: seen.append(os.geteuid()) or ["user nobody cannot read /x"])
    monkeypatch.setattr(supervisor, "service_account", lambda _config: ("nobody", NOBODY.pw_uid, NOBODY.pw_gid))

    class Services:
        class store:  # noqa: N801 - stands for the store
            @staticmethod
            def ensure_schema(_auto: bool) -> None:
                pass

        def close(self) -> None:
            pass

        def after_fork(self) -> None:
            pass

    class Config:
        class database:  # noqa: N801
            auto_upgrade = True

    with caplog.at_level(logging.WARNING, logger=supervisor.log.name):
        supervisor.check_store(Config(), Services())  # type: ignore[arg-type]
    assert seen == [NOBODY.pw_uid] and os.geteuid() == 0
    assert "user nobody cannot read /x" in caplog.text
