"""Thirty-fifth review: a unix socket in a directory other accounts may write (mode 0777, or owned by another
user) was taken silently; another account removed milterd's socket, listened in its place, and Postfix handed it
every message (and took its "accept" for mail milterd would refuse).  ``serve`` refuses such a place, and
``rules lint`` and ``doctor`` say so, as for the SQLite store's directory."""

from __future__ import annotations

import os
import pwd
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from milterd.config import Config, ConfigError, load_config
from milterd.diagnostics import probe_socket_directory
from milterd.milter import supervisor
from milterd.store.ownership import judge_socket_directory, socket_directory_problems
from tests.conftest import NO_CHECKS, with_sections
from tests.harness.milterd import write_config

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="directories of another account need root (chown)")

NOBODY = pwd.getpwnam("nobody")
OTHER = 12345  # a local user who is neither root nor the service account (no passwd entry: shown as the number)
OWNERS = {0: "root", NOBODY.pw_uid: "nobody"}


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A root directory, mode 0755."""
    path = Path(tempfile.mkdtemp(prefix="milterd-review35-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _dir(path: Path, mode: int, uid: int = 0) -> os.stat_result:
    path.mkdir(exist_ok=True)
    os.chown(path, uid, -1)
    path.chmod(mode)
    return os.stat(path)


def _config(directory: Path, socket: Path) -> Config:
    (directory / "rules").mkdir(exist_ok=True)
    sections = with_sections(NO_CHECKS, {"milter": {"user": "nobody", "socket": f"unix:{socket}"}, "rules": {"dir": str(directory / "rules")}})
    return load_config(write_config(directory / "milter.conf", sections))


# --- the judge (pure) ---------------------------------------------------------------------
@root_only
def test_a_directory_others_may_write_or_another_account_owns_is_refused(open_dir: Path) -> None:
    assert "mode 0777: other users may replace milterd's socket" in judge_socket_directory(open_dir / "a", _dir(open_dir / "a", 0o777), OWNERS)
    assert "mode 0775" in judge_socket_directory(open_dir / "b", _dir(open_dir / "b", 0o775), OWNERS)  # a group others are in
    assert "owned by 12345: that account may replace" in judge_socket_directory(open_dir / "c", _dir(open_dir / "c", 0o755, OTHER), OWNERS)
    assert "/run/milterd" in judge_socket_directory(open_dir / "a", os.stat(open_dir / "a"), OWNERS)


@root_only
def test_a_sticky_directory_and_those_of_root_or_the_service_account_are_taken(open_dir: Path) -> None:
    assert judge_socket_directory(open_dir / "tmp", _dir(open_dir / "tmp", 0o1777), OWNERS, own=False) == ""  # above it: nobody renames root's
    assert judge_socket_directory(open_dir / "run", _dir(open_dir / "run", 0o755), OWNERS) == ""
    assert judge_socket_directory(open_dir / "own", _dir(open_dir / "own", 0o755, NOBODY.pw_uid), OWNERS) == ""
    assert judge_socket_directory(open_dir / "private", _dir(open_dir / "private", 0o775), OWNERS, shared=False) == ""  # a user private group


@root_only
def test_a_directory_above_the_socket_s_is_judged_too(open_dir: Path) -> None:
    """Whoever may rename the socket's directory may put one of their own, with their socket, in its place."""
    _dir(open_dir / "pub", 0o777)
    _dir(open_dir / "pub" / "milterd", 0o755)
    [problem] = socket_directory_problems(open_dir / "pub" / "milterd" / "milterd.sock", OWNERS)
    assert problem.startswith(f"{open_dir / 'pub'} is mode 0777")
    assert socket_directory_problems(open_dir / "new" / "milterd.sock", OWNERS) == []  # not made yet: serve makes it 0755


@root_only
def test_postfix_s_own_account_may_share_the_socket_s_directory(open_dir: Path) -> None:
    """Debian's layout for a chrooted smtpd: /var/spool/postfix/milterd, chown milterd:postfix, mode 0770 (or
    Postfix's own directory): Postfix is the one that connects, not another account."""
    postfix = pwd.getpwnam("postfix")
    shared = open_dir / "spool"
    _dir(shared, 0o770, NOBODY.pw_uid)
    os.chown(shared, NOBODY.pw_uid, postfix.pw_gid)
    _dir(open_dir / "own", 0o755, postfix.pw_uid)
    assert socket_directory_problems(shared / "milterd.sock", OWNERS) == []
    assert socket_directory_problems(open_dir / "own" / "milterd.sock", OWNERS) == []


def _grant_write(path: Path, uid: int) -> None:
    """``setfacl -m u:UID:rwx PATH`` (the package is not installed): the xattr in the kernel's format."""
    def entry(tag: int, perm: int, qualifier: int = 0xFFFFFFFF) -> bytes:
        return struct.pack("<HHI", tag, perm, qualifier)
    acl = struct.pack("<I", 2) + entry(0x01, 7) + entry(0x02, 7, uid) + entry(0x04, 5) + entry(0x10, 7) + entry(0x20, 5)
    os.setxattr(path, "system.posix_acl_access", acl)


@root_only
def test_a_directory_an_acl_lets_another_account_write_is_refused(open_dir: Path) -> None:
    """Second look: root's directory, mode 0755 but an ACL giving uid 4242 rwx (ls: drwxrwxr-x+): the group bits
    are the ACL's mask, and group root counted as not shared; 4242 replaced the socket."""
    acl = open_dir / "acl"
    _dir(acl, 0o755)
    try:
        _grant_write(acl, 4242)
    except OSError:
        pytest.skip("no POSIX ACLs on this file system")
    [problem] = socket_directory_problems(acl / "milterd.sock", OWNERS)
    assert problem.startswith(f"{acl} is mode 0775: other users may replace")
    # Third look: an ACL that lets only Postfix's own account write (trusted as the owners are) was refused too.
    _grant_write(acl, pwd.getpwnam("postfix").pw_uid)
    assert socket_directory_problems(acl / "milterd.sock", OWNERS) == []


@root_only
def test_a_sticky_directory_is_no_place_for_the_socket_itself(open_dir: Path) -> None:
    """Second look: in /tmp another account may take the socket's name while milterd is down; serve then refuses
    the socket in use, and Postfix connects to theirs.  Sticky is enough for a directory above it."""
    tmp = open_dir / "tmp"
    _dir(tmp, 0o1777)
    [problem] = socket_directory_problems(tmp / "milterd.sock", OWNERS)
    assert problem.startswith(f"{tmp} is mode 1777: other users may replace")
    _dir(tmp / "milterd", 0o755)
    assert socket_directory_problems(tmp / "milterd" / "milterd.sock", OWNERS) == []


# --- serve, rules lint and doctor -------------------------------------------------------------
@root_only
def test_serve_rules_lint_and_doctor_refuse_the_review_s_socket_directory(open_dir: Path) -> None:
    pub = open_dir / "ww" / "pub"
    pub.mkdir(parents=True)
    pub.chmod(0o777)  # no sticky bit: the review's case
    config = _config(open_dir, pub / "milterd.sock")
    with pytest.raises(ConfigError, match=r"\[milter\] socket: not listening on .*pub/milterd.sock: .*pub is mode 0777: other users may replace"):
        supervisor.check_socket_directory(config)
    with pytest.raises(ConfigError, match="pub is mode 0777"):
        supervisor.check_start(config)
    [finding] = probe_socket_directory(config)
    assert finding.status == "fail" and finding.name == "[milter] socket" and finding.detail.endswith("(serve refuses to start)")
    pub.chmod(0o755)
    supervisor.check_socket_directory(config)
    assert probe_socket_directory(config) == []


def test_an_inet_socket_has_no_directory_to_judge(open_dir: Path) -> None:
    (open_dir / "rules").mkdir()
    config = load_config(write_config(open_dir / "milter.conf", with_sections(NO_CHECKS, {"milter": {"socket": "inet:127.0.0.1:29999"}, "rules": {"dir": str(open_dir / "rules")}})))
    supervisor.check_socket_directory(config)
    assert probe_socket_directory(config) == []
