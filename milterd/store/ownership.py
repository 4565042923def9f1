"""Whom the SQLite store's files and directory may belong to, judged before ``serve`` lets SQLite open them;
and who may replace milterd's unix socket (:func:`socket_directory_problems`).

The store holds the message log and the quarantined mail.  A file another local
user made in the store's place (``milterd.sqlite`` or only its ``-wal``, mode
0666, in a directory everyone may write) would be used as it is, and SQLite
gives new ``-wal`` and ``-shm`` files the database file's mode: that user would
read everything milterd stores.  As Postfix does with its queue directories,
``serve`` refuses such files and directories instead (``serve``, ``rules lint``
and ``doctor`` share these judges).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import struct
from collections.abc import Mapping
from pathlib import Path

from ..files import resolved
from .engine import planted_link

#: The files SQLite makes beside the store, named after it.
SIDE_SUFFIXES = ("-wal", "-shm", "-journal")

#: Any permission for other users, or writing by the group: the store's files are their owner's (reading them may
#: be given to a group on purpose, an administrators' one; nothing milterd makes has it).
NOT_OWNER_BITS = 0o027

#: Writing by the group or by other users: a directory in which they could plant or replace the store's files.
OTHERS_WRITE_BITS = 0o022

#: What the problems below tell the administrator to do about a directory.
_MOVE_STORE = "put the store in a directory other users may not write, such as /var/lib/milterd ([database] url)"
_MOVE_SOCKET = "put the socket in a directory only root and milterd may write, such as /run/milterd ([milter] socket)"


def owned_by_another(file: Path) -> bool:
    """Whether the SQLite store *file* is a regular file an account other than root owns (the service account's),
    root's own symlinks followed (:func:`_others_store`)."""
    return _others_store(file) is not None


def _others_store(file: Path) -> tuple[Path, os.stat_result] | None:
    """The store file *file* names, root's symlinks followed as ``serve`` follows them (an administrator's link to
    another disk), and its status, when it is a regular file an account other than root owns; None otherwise, and
    where a link another account made is on the way (root follows none of those)."""
    try:
        if planted_link(file) is not None:
            return None
        path = resolved(file)
        owner = os.lstat(path)
    except OSError:
        return None
    return (path, owner) if stat.S_ISREG(owner.st_mode) and owner.st_uid != 0 else None


def restore_side_files(file: Path) -> None:
    """As root, after closing the SQLite store *file*: make its ``-wal`` and ``-shm`` files again (empty, 0600,
    given to the store's owner) where SQLite removed them.

    The last connection to close checkpoints the store and deletes them.  When that was a root command's
    (``milterd log``, ``doctor``) while no worker had the store open, and the store's directory is one only
    root may write (``serve`` hands the files over to its account, :func:`~milterd.milter.supervisor.hand_over_store`),
    the account could not create them again: every message was answered 451 until a restart.  Made beside the
    file root's links lead to (where SQLite makes them), without following a symlink in their place, and only
    where missing (an empty one is valid); nothing for a store root owns."""
    found = _others_store(file)
    if found is None:
        return
    path, owner = found
    for suffix in ("-wal", "-shm"):
        try:
            fd = os.open(f"{path}{suffix}", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except OSError:
            continue  # there (in use, or made by the account), or not ours to make
        try:
            os.fchown(fd, owner.st_uid, owner.st_gid)
        finally:
            os.close(fd)


def user_name(uid: int) -> str:
    """The name of user *uid*, else the number (an id without an entry)."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def store_files(file: Path) -> list[Path]:
    """The SQLite store *file* and the files SQLite names after it."""
    return [file, *(Path(f"{file}{suffix}") for suffix in SIDE_SUFFIXES)]


def judge_store_file(path: Path, info: os.stat_result, owners: Mapping[int, str]) -> str:
    """Why *path*, one of the store's files, must not be used (its ``lstat`` *info*; *owners*: the uids it may
    belong to, with their names), else "" (pure)."""
    mode = info.st_mode
    if stat.S_ISLNK(mode):
        return f"{path} is a symlink (owned by {user_name(info.st_uid)}): SQLite would follow it; remove it"
    if not stat.S_ISREG(mode):
        return f"{path} is not a regular file: remove it"
    if info.st_uid not in owners:
        return (f"{path} is owned by {user_name(info.st_uid)}, not {' or '.join(owners.values())}: that account may read what "
                f"milterd stores there; if it is milterd's own store (an account changed in [milter] user), chown it to "
                f"{list(owners.values())[-1]}, else remove it (after a look at what it holds)")
    if mode & NOT_OWNER_BITS:
        return (f"{path} is mode {stat.S_IMODE(mode):04o}: other users may read or write the log and quarantined mail "
                f"in it; chmod 600 {path}")
    return ""


def judge_store_directory(path: Path, info: os.stat_result, group_shared: bool = True) -> str:
    """Why the store's directory *path* (its ``stat`` *info*) must not hold it, else "" (pure): one that other
    users may write (sticky ``/tmp`` too: they may add the files SQLite has not made yet).  Its group may write
    it only when that group is not *group_shared* (no account but root and the store's in it: a user private
    group, umask 002).  Its owner is not judged: an administrator's directory, as a checkout, is taken."""
    writers = OTHERS_WRITE_BITS if group_shared else stat.S_IWOTH
    if info.st_mode & writers:
        return (f"{path} is mode {stat.S_IMODE(info.st_mode):04o}: other users may write it and plant the store's "
                f"files there: {_MOVE_STORE}")
    return ""


def group_shared(gid: int, owners: Mapping[int, str], owner: str = "") -> bool:
    """Whether an account other than root, *owners* and the directory's *owner* (who may write it anyway) is in
    group *gid* (listed in it, or its primary group)."""
    try:
        members = set(grp.getgrgid(gid).gr_mem)
    except KeyError:
        members = set()
    members |= {account.pw_name for account in pwd.getpwall() if account.pw_gid == gid}
    return bool(members - {"root", owner, *owners.values()})


def store_file_problems(file: Path, owners: Mapping[int, str]) -> list[str]:
    """What is wrong with the SQLite store *file* as it is on disk (:func:`judge_store_directory` for the directory
    named and the one its links lead to, :func:`judge_store_file` for the files there), each said; nothing for what
    does not exist yet or cannot be looked at (the start's other checks say why)."""
    named = Path(os.path.abspath(file))
    try:
        real = resolved(named)
    except OSError:
        return []
    problems = []
    for directory in dict.fromkeys((named.parent, real.parent)):
        try:
            info = os.stat(directory)
        except OSError:
            continue
        # Looked up only when it matters; the directory's owner may write it anyway (judge_store_directory).
        shared = not info.st_mode & stat.S_IWGRP or acl_writers(directory, owners) or group_shared(info.st_gid, owners, user_name(info.st_uid))
        problems.append(judge_store_directory(directory, info, shared))
    for path in store_files(real):
        try:
            info = os.lstat(path)
        except OSError:
            continue
        problems.append(judge_store_file(path, info, owners))
    return [problem for problem in problems if problem]


def judge_socket_directory(path: Path, info: os.stat_result, owners: Mapping[int, str], shared: bool = True, own: bool = True) -> str:
    """Why *path* (its ``stat`` *info*), the directory of milterd's unix socket (*own*) or one above it, lets another
    account put its own socket in milterd's place, else "" (pure): Postfix would hand that account every message,
    and take its answers.  It must belong to root or *owners*, and other users (its group, when the group is
    *shared*) may not write it.  Sticky (``/tmp``), they may not remove or rename what is not theirs: enough for a
    directory above the socket's, not for the socket's own, where they may take its name while milterd is down
    (serve then refuses the socket in use, and Postfix connects to theirs)."""
    if info.st_uid != 0 and info.st_uid not in owners:
        return (f"{path} is owned by {user_name(info.st_uid)}: that account may replace milterd's socket with its own and "
                f"receive Postfix's mail; {_MOVE_SOCKET}")
    writers = OTHERS_WRITE_BITS if shared else stat.S_IWOTH
    if info.st_mode & writers and (own or not info.st_mode & stat.S_ISVTX):
        return (f"{path} is mode {stat.S_IMODE(info.st_mode):04o}: other users may replace milterd's socket in it with "
                f"their own and receive Postfix's mail; {_MOVE_SOCKET}")
    return ""


def socket_directory_problems(socket_path: Path, owners: Mapping[int, str]) -> list[str]:
    """What lets another account take the place of the unix socket *socket_path* (:func:`judge_socket_directory`,
    for its directory and each one above it, as named and as its links lead); nothing for what does not exist.

    Postfix's own account (``postfix``, mail_owner) is trusted as *owners* are: it is the one that connects, and
    directories in its spool for a chrooted smtpd (``chown milterd:postfix``, mode 0770) are a usual layout."""
    owners = {**owners, **_postfix_account()}
    named = Path(os.path.abspath(socket_path)).parent
    try:
        real = resolved(named)
    except OSError:
        real = named
    problems = []
    for directory in dict.fromkeys((*(named, *named.parents), *(real, *real.parents))):
        try:
            info = os.stat(directory)
        except OSError:
            continue
        # With an access ACL the group bits are its mask: a named user or group may write (setfacl -m u:x:rwx).
        shared = not info.st_mode & stat.S_IWGRP or acl_writers(directory, owners) or group_shared(info.st_gid, owners, user_name(info.st_uid))
        problems.append(judge_socket_directory(directory, info, owners, shared, own=directory in (named, real)))
    return [problem for problem in problems if problem]


#: POSIX ACL entry tags (linux/posix_acl.h): a named user, a named group, the mask.
_ACL_USER, _ACL_GROUP, _ACL_MASK = 0x02, 0x08, 0x10
_ACL_WRITE = 0x02


def acl_writers(path: Path, owners: Mapping[int, str]) -> bool:
    """Whether *path*'s POSIX access ACL lets a named user other than *owners*, or a named group with such a
    member (:func:`group_shared`), write it (its mask permitting); False without an ACL, or where extended
    attributes cannot be read.  With an access ACL the group permission bits are the mask, not the group's."""
    try:
        data = os.getxattr(path, "system.posix_acl_access")
    except (OSError, AttributeError):
        return False
    entries = [struct.unpack_from("<HHI", data, at) for at in range(4, len(data) - 7, 8)]
    mask = next((perm for tag, perm, _ in entries if tag == _ACL_MASK), 0o7)
    for tag, perm, qualifier in entries:
        if not perm & mask & _ACL_WRITE:
            continue
        if tag == _ACL_USER and qualifier != 0 and qualifier not in owners:
            return True
        if tag == _ACL_GROUP and group_shared(qualifier, owners):
            return True
    return False


def _postfix_account() -> dict[int, str]:
    """Postfix's mail_owner (``postfix``) as uid: name, when this host has that account."""
    try:
        return {pwd.getpwnam("postfix").pw_uid: "postfix"}
    except KeyError:
        return {}
