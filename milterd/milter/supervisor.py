"""The supervisor: opens the milter socket, pre-forks workers, keeps them running.

* The socket is opened once, here, with libmilter (``milter.opensocket``);
  forked workers inherit it and each runs ``milter.main()`` on it.
* A worker that dies is replaced.  SIGTERM/SIGINT: workers stop accepting and
  drain their connections within ``shutdown_timeout``.  SIGHUP: milter.conf and
  rules/ are read again; a configuration that fails validation is refused with
  its reason and the old one keeps running; a good one replaces the workers one
  by one, so that there is always a worker accepting.
"""

from __future__ import annotations

import ctypes
import errno
import grp
import logging
import os
import pwd
import select
import signal
import socket
import stat
import sys
import sysconfig
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import Milter
import milter

from .. import EARLY_HUPS, maintenance, metrics, record_early_hup
from ..config import Config, ConfigError, load_config
from ..endpoints import SocketSpec, parse_socket, unix_path_too_long
from ..files import resolved
from ..logs import hide_database_url, set_level, setup_logging
from ..message.pipeline import Pipeline
from ..services import Services, build
from ..store import StoreError
from ..store.engine import planted_link, sqlite_file
from ..store.ownership import socket_directory_problems, store_file_problems
from ..text import redact
from . import adapter
from .adapter import MilterdMilter

if TYPE_CHECKING:
    from ..maintenance import Job

log = logging.getLogger("milterd")


def _socket_fds() -> set[int]:
    fds = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            if stat.S_ISSOCK(os.fstat(int(name)).st_mode):
                fds.add(int(name))
        except OSError:
            continue
    return fds


def open_socket(config: Config) -> tuple[SocketSpec, int]:
    """Open the listening socket with libmilter; return it and its file descriptor."""
    spec = parse_socket(config.milter.socket)

    register(MilterdMilter)  # libmilter refuses to open a socket before registration
    before = _socket_fds()
    milter.setconn(spec.libmilter)
    milter.setbacklog(128)
    umask = None
    if spec.family == "unix":
        if _listening(spec.path):
            # libmilter would remove it and listen in its place: the running milterd would serve nobody.
            raise ConfigError(config.path or "milter.conf", "[milter] socket", f"{spec.path} is in use: another process (a running milterd?) listens on it")
        directory = Path(spec.path).parent
        # Given away only when milterd makes it, for an account of its own (never the shared default nobody, whose
        # other processes could put their socket in its place), and named plainly (new/.. is an existing directory).
        made = not os.path.lexists(directory) and ".." not in directory.parts and config.milter.user not in ("", DEFAULT_USER)
        missing = [d for d in (directory, *directory.parents) if not os.path.lexists(d)]
        try:
            directory.mkdir(parents=True, exist_ok=True)
            for created in missing:
                # Searchable by Postfix whatever the start's umask (a systemd UMask=0077 made it 0700, and Postfix
                # could not reach a socket of mode socket_mode in it); the socket's own mode says who may connect.
                os.chmod(created, 0o755, follow_symlinks=False)
            account = service_account(config) if made else None
            if account is not None:
                # Its own, so that the supervisor, no longer root, removes the socket at SIGTERM.
                os.chown(directory, account[1], account[2], follow_symlinks=False)
        except FileExistsError:
            raise ConfigError(config.path or "milter.conf", "[milter] socket", f"cannot create {spec.path}: a part of its directory is not a directory") from None
        except OSError as exc:
            raise ConfigError(config.path or "milter.conf", "[milter] socket", f"cannot create the directory of {spec.path}: {exc.strerror or exc}") from None
        check_socket_directory(config)
        # bind() creates the socket with socket_mode: no chmod afterwards, which would follow a
        # symlink put in its place meanwhile (root changing the mode of whatever it points to).
        umask = os.umask(socket_umask(config.milter.socket_mode))
    try:
        milter.opensocket(True)
    except milter.error as exc:
        raise ConfigError(config.path or "milter.conf", "[milter] socket", f"cannot listen on {config.milter.socket}: {_why_not(spec) or exc}") from None
    finally:
        if umask is not None:
            os.umask(umask)
    new = sorted(_socket_fds() - before)
    if not new:
        raise ConfigError(config.path or "milter.conf", "[milter] socket", "libmilter opened no socket")
    fd = new[-1]
    if spec.family != "unix":
        # Accepted sockets inherit TCP_NODELAY: our two writes at end of message
        # (a header edit, then the verdict) must not wait for Postfix's delayed ACK.
        sock = socket.socket(fileno=fd)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        finally:
            sock.detach()
    else:
        try:
            _set_socket_owner(config, spec.path)
        except ConfigError:
            os.close(fd)
            os.unlink(spec.path)
            raise
    return spec, fd


def _file_id(spec: SocketSpec) -> tuple[int, int] | None:
    """The (device, inode) of unix socket *spec*'s file, None for a TCP socket or a file that is not there."""
    if spec.family != "unix":
        return None
    try:
        info = os.lstat(spec.path)
    except FileNotFoundError:
        return None
    return info.st_dev, info.st_ino


def _why_not(spec: SocketSpec) -> str:
    """Why libmilter could not listen on *spec* (it says only "cannot opensocket"): the error of a bind tried here, or ''."""
    if spec.family == "unix":
        directory = os.path.dirname(spec.path)
        too_long = unix_path_too_long(spec.path)
        if too_long:
            return too_long
        if os.path.lexists(spec.path) and not stat.S_ISSOCK(os.lstat(spec.path).st_mode):
            return f"{spec.path} exists and is not a socket"
        if not _access(directory, os.W_OK | os.X_OK):
            return f"user {pwd.getpwuid(os.geteuid()).pw_name} cannot write {directory}"
        return ""
    try:
        with socket.socket(socket.AF_INET6 if spec.family == "inet6" else socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((spec.host, spec.port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return ""


def _listening(path: str) -> bool:
    """Whether a process accepts connections on the unix socket *path* (a stale one left by a crash refuses them)."""
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return False
    except OSError:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        try:
            probe.connect(path)
        except (TimeoutError, BlockingIOError):
            return True  # a listener whose backlog is full (EAGAIN at once for a unix socket, not a timeout)
        except OSError:
            return False
    return True


def socket_umask(socket_mode: str) -> int:
    """The umask under which ``bind()`` creates a unix socket with *socket_mode* (octal text)."""
    return 0o777 & ~int(socket_mode, 8)


#: The keys of ``[milter]`` that name a user or a group, and which of the two each names.
ACCOUNT_KEYS = (("user", "user"), ("group", "group"), ("socket_owner", "user"), ("socket_group", "group"))


def check_account_names(config: Config) -> None:
    """Refuse a user or group name of ``[milter]`` holding a NUL, naming the file and the key (ConfigError).

    pwd and grp raise ValueError on such a name ("embedded null byte"): a traceback at
    start instead of an error an administrator can act on.  Checked whoever starts
    milterd, as a NUL in a path of milter.conf is (config.py).
    """
    where = config.path or "milter.conf"
    for key, kind in ACCOUNT_KEYS:
        if "\0" in getattr(config.milter, key):
            raise ConfigError(where, f"[milter] {key}", f"contains a NUL character (\\0), which no {kind} name can hold")


#: The keys of the unix socket's owner and group, with the kind of name and its id.
_SOCKET_ACCOUNTS: dict[str, tuple[str, Callable[[str], int]]] = {
    "socket_owner": ("user", lambda name: pwd.getpwnam(name).pw_uid),
    "socket_group": ("group", lambda name: grp.getgrnam(name).gr_gid),
}


def socket_id(config: Config, key: str) -> int:
    """The id of ``[milter] socket_owner`` or ``socket_group`` (*key*; -1 when unset); ConfigError naming the key
    for a name that does not exist."""
    name: str = getattr(config.milter, key)
    kind, lookup = _SOCKET_ACCOUNTS[key]
    try:
        return lookup(name) if name else -1
    except (KeyError, ValueError):
        raise ConfigError(config.path or "milter.conf", f"[milter] {key}", f"no such {kind} {name!r}") from None


def _set_socket_owner(config: Config, path: str) -> None:
    where = config.path or "milter.conf"
    check_account_names(config)
    uid, gid = socket_id(config, "socket_owner"), socket_id(config, "socket_group")
    if uid != -1 or gid != -1:
        # Not following a symlink: the socket's directory may be writable by others than root.
        try:
            os.chown(path, uid, gid, follow_symlinks=False)
        except OSError as exc:
            key = "[milter] socket_owner" if uid != -1 else "[milter] socket_group"
            raise ConfigError(where, key, f"cannot give {path} to {config.milter.socket_owner or '-'}:{config.milter.socket_group or '-'}: {exc.strerror or exc}") from None


#: The account ``serve`` drops to when started as root without ``[milter] user``
#: (as spamd does): never keep root by accident.  ``user = "root"`` keeps it knowingly.
DEFAULT_USER = "nobody"


def service_account(config: Config) -> tuple[str, int, int] | None:
    """The account (name, uid, gid) a root-started ``serve`` runs as; None when it stays as started.

    None when not root, or with ``[milter] user = "root"``.  An unknown user or
    group is a ConfigError naming the key, as is a NUL in any user or group name of
    ``[milter]``, whoever starts milterd (:func:`check_account_names`).
    """
    check_account_names(config)
    group = _group_id(config)  # a misspelt group is refused whoever starts milterd, as the user is
    if os.geteuid() != 0 or config.milter.user == "root":
        return None
    name = config.milter.user or DEFAULT_USER
    user = _user(config, name)
    return name, user.pw_uid, user.pw_gid if group is None else group


def _user(config: Config, name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(config.path or "milter.conf", "[milter] user", f"no such user {name!r}") from None


def _group_id(config: Config) -> int | None:
    """The gid of ``[milter] group``, None when unset; ConfigError for one that does not exist."""
    if not config.milter.group:
        return None
    try:
        return grp.getgrnam(config.milter.group).gr_gid
    except KeyError:
        raise ConfigError(config.path or "milter.conf", "[milter] group", f"no such group {config.milter.group!r}") from None


def check_start(config: Config) -> None:
    """What ``serve`` refuses at start without opening a socket or the database, for ``rules lint``: the
    service account's user and group, whoever runs it, the SQLite store's files and directory as they are
    (:func:`check_store_files`), the unix socket's directories (:func:`check_socket_directory`), and the spool directory (as root, one the account must write).  Not the
    store's missing files, which a start as root first makes and gives to the account."""
    service_account(config)
    check_store_files(config, handed_over=False)
    check_socket_directory(config)
    if config.milter.user not in ("", "root"):
        _user(config, config.milter.user)
    if os.geteuid() == 0:
        with _as_service_account(config):
            check_spool_writable(config)
    elif config.milter.spool_dir and not os.path.isdir(config.milter.spool_dir):
        raise ConfigError(config.path or "milter.conf", "[milter] spool_dir", f"{config.milter.spool_dir}: no such directory")


def drop_privileges(config: Config) -> None:
    """Started as root: become ``[milter] user``/``group`` (``nobody`` when unset, with a warning).

    Then set the umask to 077: whatever milterd creates from now on (spool
    files, a new SQLite file) is readable by its own user only.
    """
    account = service_account(config)
    if os.geteuid() == 0 and account is None:
        log.warning("running as root: [milter] user = \"root\"; set an account of its own")
        if config.milter.group:  # user = "root" with a group: that group, as asked (it was ignored)
            gid = grp.getgrnam(config.milter.group).gr_gid
            os.setgroups([gid])
            os.setgid(gid)
    elif account is None and config.milter.group:
        log.warning("[milter] group = %r is not taken: milterd was not started as root", config.milter.group)
    elif account is not None:
        name, uid, gid = account
        if not config.milter.user:
            log.warning("started as root without [milter] user: running as %s; set [milter] user to an account of its own", name)
        os.setgroups([gid])
        os.setgid(gid)
        os.setuid(uid)
    os.umask(0o077)


def _sqlite_path(config: Config) -> Path | None:
    """The SQLite store's file, its links followed; None for another database. ConfigError for a loop of links."""
    file = sqlite_file(config.database.url)
    if file is None:
        return None
    try:
        return resolved(file)
    except OSError as exc:
        raise ConfigError(config.path or "milter.conf", "[database] url", f"{file}: {exc.strerror or exc}") from None


def store_owners(config: Config, handed_over: bool) -> dict[int, str]:
    """The accounts (uid: name) the SQLite store's files may belong to at a start by this process: the service
    account, and root too before root has *handed_over* its files (:func:`hand_over_store`); the effective user
    when milterd stays as started.  ConfigError for an unknown user or group (:func:`service_account`)."""
    account = service_account(config)
    if account is None:
        uid = os.geteuid()
        owners = {uid: _name_of(uid, pwd.getpwuid)}
        if uid != 0 and config.milter.user not in ("", "root"):
            # Not root (rules lint, doctor as an administrator, serve under systemd's User=): the files a root start
            # gave to [milter] user are that account's, not foreign.
            owners[_user(config, config.milter.user).pw_uid] = config.milter.user
        return owners
    name, uid, _gid = account
    return {uid: name} if handed_over else {0: "root", uid: name}


def check_socket_directory(config: Config) -> None:
    """Refuse the start (ConfigError naming the directory and what to do) when another account may replace
    ``[milter] socket``, a unix socket, with its own (:func:`~milterd.store.ownership.socket_directory_problems`):
    Postfix would send it every message and take its answers, milterd none the wiser."""
    spec = parse_socket(config.milter.socket)
    if spec.family != "unix":
        return
    problems = socket_directory_problems(Path(spec.path), store_owners(config, handed_over=False))
    if problems:
        raise ConfigError(config.path or "milter.conf", "[milter] socket", f"not listening on {spec.path}: {problems[0]}")


def check_store_files(config: Config, handed_over: bool) -> None:
    """Refuse the start (ConfigError naming the file or directory and what to do) when the SQLite store's files
    that exist are not private to *store_owners*, or its directory is one others may write
    (:func:`~milterd.store.ownership.store_file_problems`): SQLite would use a file another user made as it is."""
    file = sqlite_file(config.database.url)
    if file is None:
        return
    problems = store_file_problems(file, store_owners(config, handed_over))
    if problems:
        raise ConfigError(config.path or "milter.conf", "[database] url", f"not using the SQLite store {file}: {problems[0]}")


def hand_over_store(config: Config) -> None:
    """Started as root, before the drop: make the SQLite store's files for the service account, never opening them.

    Root creates what the account may not be able to: the store's missing
    directories (given to the account, mode 0700) and the store file with its
    ``-wal`` and ``-shm`` files (empty, 0600, given to the account), so that
    the store works even in a directory only root may write (SQLite creates
    the last two only if they do not exist, and an empty one is valid).  The
    schema is made or upgraded later, as the account (:func:`become_service`):
    root never opens the database, whose files and directory the account
    controls (SQLite would follow a symlink the account put in the store's
    place, and write milterd's schema into whatever root file it points to).
    Staying as started (``user = "root"``, or not started as root), only the missing directories are made
    (the store's own mode 0700), as that user: the store's place does not depend on the account.
    """
    file = sqlite_file(config.database.url)
    account = service_account(config)
    if file is None:
        return
    if account is None:  # milterd stays as started (user = "root", or not root): its own missing directories
        if os.geteuid() == 0 and planted_link(file) is not None:
            return  # another account's symlink: root makes nothing where it points (check_writable says what is wrong)
        try:
            resolved(file).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            pass  # check_writable says what this user cannot do
        return
    _name, uid, gid = account
    planted = planted_link(file)
    if planted is not None:
        # Root's own symlinks are followed; one another account made (the service account, in
        # its directory) could point at any root-owned file, which would be given away.
        log.warning("not handing over %s: %s is a symlink not owned by root", file, planted)
        return
    try:
        path = resolved(file)
    except OSError:
        return  # a loop of links: check_writable says so
    _make_directories(config, path.parent, uid, gid)
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        _hand_over(candidate, uid, gid)


def _make_directories(config: Config, directory: Path, uid: int, gid: int) -> None:
    """Create *directory* and its missing parents, mode 0700, each given to *uid*:*gid*."""
    missing = []
    while not os.path.lexists(directory):
        missing.append(directory)
        directory = directory.parent
    for new in reversed(missing):
        try:
            os.mkdir(new, 0o700)
        except FileExistsError:  # made meanwhile, by someone else: not root's to give
            continue
        except OSError as exc:
            raise ConfigError(config.path or "milter.conf", "[database] url", f"cannot create {new}: {exc.strerror or exc}") from None
        # Opened without following a symlink, changed through that descriptor: the parent may be
        # the account's, which may have put something else in the new directory's place meanwhile.
        try:
            fd = os.open(new, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError as exc:
            log.warning("not handing over %s: %s", new, exc.strerror or exc)
            continue
        try:
            if os.fstat(fd).st_uid == 0:
                os.fchown(fd, uid, gid)
        finally:
            os.close(fd)


def _hand_over(candidate: Path, uid: int, gid: int) -> None:
    """Give *candidate* (created 0600 when missing) to *uid*:*gid* if root owns it.

    Root works here in a directory the service account may write: a symlink
    or a hard link the account planted there (e.g. ``milterd.sqlite-wal`` →
    /etc/shadow) must not make root give the target away.  The file is opened
    without following a symlink, and changed through that descriptor.
    """
    try:
        fd = os.open(candidate, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        try:
            fd = os.open(candidate, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:  # ELOOP: a symlink
            log.warning("not handing over %s: %s", candidate, exc.strerror or exc)
            return
    except OSError as exc:  # a read-only file system…: check_writable says what the account cannot do
        log.warning("cannot create %s: %s", candidate, exc.strerror or exc)
        return
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            log.warning("not handing over %s: not a regular file with one link", candidate)
        elif info.st_uid == 0:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, stat.S_IMODE(info.st_mode) & 0o600)
    finally:
        os.close(fd)


def check_writable(config: Config, makeable: bool = False) -> None:
    """As the service account: the SQLite store and the spool directory must be writable (ConfigError).

    The effective ids decide (:func:`check_store` runs it before the real drop).  With *makeable* (a reload: no
    root to make it first), a store directory not made yet is taken when the account can make it.
    """
    where = config.path or "milter.conf"
    who = f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    path = _sqlite_path(config)
    if path is not None and not (makeable and _can_make(path.parent)):
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm")]
        closed = _first_closed(path.parent)
        if closed is not None:
            why = ("no such directory" if not os.path.lexists(closed) else "not a directory" if not closed.is_dir()
                   else "a directory the account may not search")
            raise ConfigError(where, "[database] url", f"{who} cannot write {path}: cannot enter {closed} ({why})")
        if not all(map(os.path.lexists, files)) and not _access(path.parent, os.W_OK):
            raise ConfigError(where, "[database] url", f"{who} cannot write {path.parent} (SQLite needs the file and its directory)")
        for target in files:
            if os.path.lexists(target) and not _access(target, os.R_OK | os.W_OK):
                raise ConfigError(where, "[database] url", f"{who} cannot write {target}")
    check_spool_writable(config)


def _can_make(directory: Path) -> bool:
    """Whether *directory* does not exist yet and the effective ids can make it (its nearest existing parent is one
    they may write and search): the store makes it at its first connection (a start makes it first, as root)."""
    directory = Path(os.path.abspath(directory))
    if os.path.lexists(directory):
        return False
    parent = directory.parent
    while not os.path.lexists(parent) and parent != parent.parent:
        parent = parent.parent
    return parent.is_dir() and _first_closed(parent) is None and _access(parent, os.W_OK | os.X_OK)


def check_spool_writable(config: Config) -> None:
    """As the service account: the spool directory must be writable (ConfigError)."""
    where = config.path or "milter.conf"
    who = f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    try:
        spool = temporary_directory(config)
    except OSError as exc:  # tempfile found no directory it could write in
        raise ConfigError(where, "[milter] spool_dir", f"{who}: {exc.strerror or exc}") from None
    if not _access(spool, os.W_OK | os.X_OK):
        why = "" if config.milter.spool_dir else " (the system's temporary directory, used while spool_dir is empty)"
        raise ConfigError(where, "[milter] spool_dir", f"{who} cannot write {spool}{why}")


#: The directories of the code a worker imports from: each must be readable by the service account.
CODE_DIRECTORIES = (
    ("Python's standard library", Path(os.__file__).parent),
    ("milterd's package", Path(__file__).parents[1]),
    *dict.fromkeys(("the installed packages", Path(sysconfig.get_paths()[key])) for key in ("purelib", "platlib")),
)


def unreadable_code(directories: Iterable[tuple[str, Path]] = CODE_DIRECTORIES) -> list[str]:
    """As the service account: the directories of the code milterd runs that it cannot read, each said.

    Python imports some modules only when first used (the metrics page's, a scanner's or an archive
    lister's), after the drop: an interpreter or package under a directory the account may not enter
    (``/root``, mode 0700) makes that import fail then, a check error or a dead thread, not a refusal at start.
    """
    who = f"user {pwd.getpwuid(os.geteuid()).pw_name}"
    found = []
    for what, directory in directories:
        closed = _first_closed(directory)
        if closed is not None or not _access(directory, os.R_OK | os.X_OK):
            found.append(f"{who} cannot read {directory} ({what}{f': cannot enter {closed}' if closed else ''}): a module first "
                         "imported after the start would fail; install milterd where that user can read it")
    return found


def _first_closed(directory: Path) -> Path | None:
    """The first directory from / down to *directory* that the effective ids may not search, else None."""
    directory = Path(os.path.abspath(directory))
    for step in (*reversed(directory.parents), directory):
        if not _access(step, os.X_OK):
            return step
    return None


def temporary_directory(config: Config) -> str:
    """Where a worker's temporary files go: ``[milter] spool_dir``, else the system's temporary directory."""
    return config.milter.spool_dir or tempfile.gettempdir()


def use_spool_dir(config: Config) -> None:
    """Make ``[milter] spool_dir`` this process's temporary directory, when it is set.

    Spooled bodies are given the directory explicitly; the decoded attachments and archive
    copies of the content checks (``tempfile.SpooledTemporaryFile``) take the process's own,
    so that they too land where the administrator put the space (and the check at start,
    :func:`check_writable`, looked).
    """
    if config.milter.spool_dir:
        tempfile.tempdir = config.milter.spool_dir


def check_store(config: Config, services: Services) -> None:
    """Before the socket is opened: prepare the store as :func:`become_service` will, as the service account.

    A store that cannot be written, reached or made current refuses the start
    before Postfix can connect (it would apply milter_default_action to the
    sessions of a milterd about to exit), as does one whose files another user
    made or may read (:func:`check_store_files`, before and after root's
    hand-over).  Started as root, only the effective
    ids change meanwhile (root must still bind the socket), under umask 077;
    ConfigError or StoreError, with root's ids back.
    """
    check_store_files(config, handed_over=False)  # root gives nothing away in a place others control
    hand_over_store(config)
    check_store_files(config, handed_over=True)
    with _as_service_account(config):
        try:
            check_writable(config)
            for warning in unreadable_code():
                log.warning("%s", warning)
            services.store.ensure_schema(config.database.auto_upgrade)
        finally:
            services.close()
            services.after_fork()  # nothing opened as the account stays open for root


@contextmanager
def _as_service_account(config: Config) -> Iterator[None]:
    """The block runs with ``[milter] user``'s effective ids and umask 077; root's ids and the umask come back after it."""
    account = service_account(config)
    umask = os.umask(0o077)
    groups, egid = os.getgroups(), os.getegid()
    try:
        if account is not None:
            _name, uid, gid = account
            os.setgroups([gid])
            os.setegid(gid)
            os.seteuid(uid)
        yield
    finally:
        if account is not None:
            os.seteuid(0)
            os.setegid(egid)
            os.setgroups(groups)
        os.umask(umask)


def _access(path: str | Path, mode: int) -> bool:
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def become_service(config: Config, services: Services) -> None:
    """After the socket is open: prepare the store's files, drop privileges, then make the schema as the service account.

    Only :func:`hand_over_store` (files, no database) and :func:`check_store_files` run as root here; the
    checks and the schema's creation or upgrade (``auto_upgrade``) run as
    ``[milter] user``, as the workers will.  ConfigError (the store or the
    spool cannot be written), StoreError (the schema cannot be made or is not
    current).
    """
    check_store_files(config, handed_over=False)
    hand_over_store(config)
    check_store_files(config, handed_over=True)
    drop_privileges(config)
    check_writable(config)
    services.store.ensure_schema(config.database.auto_upgrade)
    services.close()
    services.after_fork()
    for problem in reload_blockers(config):
        log.warning("%s", problem)


def reload_files(config: Config) -> list[tuple[str, Path]]:
    """The files a SIGHUP reload reads again, each with its key in milter.conf ('' for milter.conf itself).

    Those ``serve`` reads as root at start: milter.conf, rules/ and its rule
    files, and the key files, login map and Public Suffix List of the checks that use them
    (``[quarantine] release_password_file`` is read by ``milterd quarantine``, not here).
    """
    files: list[tuple[str, Path]] = []
    if config.path is not None:
        files.append(("", config.path))
    base = config.directory
    try:
        rules = config.rules_dir
    except ConfigError:  # start refused it already; a reload says so itself
        rules = None
    if rules is not None and rules.is_dir():
        files.append(("[rules] dir", rules))
        try:
            files += [("[rules] dir", rule) for rule in sorted(rules.glob("*.toml"))]
        except OSError:
            pass
    if config.dkim_signing.enabled:
        files += [(f"[dkim_signing] keys[{index}].key_file", base / key.key_file) for index, key in enumerate(config.dkim_signing.keys)]
    arc = config.checks.arc
    if arc.enabled and arc.seal and arc.seal_key_file:
        files.append(("[checks.arc] seal_key_file", base / arc.seal_key_file))
    local = config.checks.local_domains
    if local.enabled and local.sender_login_maps:
        files.append(("[checks.local_domains] sender_login_maps", base / local.sender_login_maps))
    dmarc = config.checks.dmarc
    if dmarc.enabled and dmarc.public_suffix_list:
        files.append(("[checks.dmarc] public_suffix_list", base / dmarc.public_suffix_list))
    return files


def reload_blockers(config: Config) -> list[ConfigError]:
    """One error per file of :func:`reload_files` that ``[milter] user`` cannot read, naming the key, the file and what to do.

    Started as root, ``serve`` reads them as root, but a reload reads them
    again as the service account: a key of mode 0600 owned by root (as
    ``milterd dkim keygen`` run as root writes it) starts, and then refuses
    every reload.  A file missing or unreadable as root is left to the start's own errors.
    """
    where = config.path or "milter.conf"
    # What each path is, asked as root: as the account, a directory it cannot traverse raises on stat.
    files = [(key, path, os.path.isdir(path)) for key, path in reload_files(config) if not _missing(path)]
    problems = []
    with _as_service_account(config):
        for key, path, is_dir in files:
            if not _access(path, os.R_OK | (os.X_OK if is_dir else 0)):
                user, group = _name_of(os.geteuid(), pwd.getpwuid), _name_of(os.getegid(), grp.getgrgid)
                mode = "g+rx" if is_dir else "g+r"
                problems.append(ConfigError(where, key, f"user {user} cannot read {path}, which a reload (SIGHUP) reads again as that user: "
                                                        f"make it readable by it (chgrp {group} {path}; chmod {mode} {path}), or restart milterd instead of reloading"))
    return problems


#: The keys only a start applies (the socket, who milterd runs as, where its log goes, the
#: metrics port): a reload that changes one goes on with the running value, and says so.
#: ``log_level`` is not one: a reload applies it (``Supervisor._do_reload``).  ``log_target`` is:
#: the log's destination is opened at start, as root, before the privileges are dropped; a reload
#: runs as ``[milter] user``, which may not be allowed to open /dev/log, and a switch failing half-way
#: would leave the supervisor logging nowhere while the workers being drained still log to the old one.
RESTART_ONLY = (
    ("milter", "socket"), ("milter", "socket_mode"), ("milter", "socket_owner"), ("milter", "socket_group"),
    ("milter", "user"), ("milter", "group"), ("milter", "log_target"),
    ("metrics", "listen"),
)


def warn_restart_only(running: Config, new: Config) -> list[str]:
    """The keys of :data:`RESTART_ONLY` (as ``[section] key``) whose value differs between *running*
    and *new*, each logged as a warning: a reload would otherwise ignore the change silently."""
    changed = []
    for section, key in RESTART_ONLY:
        before, after = getattr(getattr(running, section), key), getattr(getattr(new, section), key)
        if after != before:
            log.warning("reload: [%s] %s changed; that takes a restart, keeping %s", section, key, before if before != "" else '""')
            changed.append(f"[{section}] {key}")
    return changed


def _name_of(number: int, lookup: Callable[[int], Any]) -> str:
    """The name of user or group *number* (*lookup*: pwd.getpwuid or grp.getgrgid), else the number (an id without an entry)."""
    try:
        return str(lookup(number)[0])
    except KeyError:
        return str(number)


def _missing(path: Path) -> bool:
    """Whether *path* does not exist, or cannot be a file name (a NUL in it); not when only its directory keeps it from us."""
    try:
        os.stat(path)
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return True
    except OSError:
        return False
    return False


@dataclass
class Heartbeat:
    """A worker's heartbeat pipe (the supervisor's read end) and when it last gave a sign of life (monotonic)."""

    fd: int
    last: float


class Supervisor:
    """Pre-forks and watches the workers."""

    def __init__(self, config_path: str | None, config: Config, services: Services) -> None:
        self.config_path = config_path
        self.config = config
        self.services = services
        self.workers: dict[int, int] = {}  # pid → write end of its stop pipe
        #: pid → its heartbeat pipe's read end and when it last gave a sign of life (:meth:`_watch`)
        self.beats: dict[int, Heartbeat] = {}
        self.listen_fd = -1
        self.spec: SocketSpec | None = None
        self._socket_file: tuple[int, int] | None = None  # (st_dev, st_ino) of the unix socket bound at start
        self._stopping = False
        self._reload = False
        self.restarts = 0
        self.maintainer = 0
        self.maintainer_started = 0.0  # time.monotonic() at its fork
        self.started: dict[int, float] = {}  # pid → when it was forked (monotonic)
        #: pid → the shutdown_timeout of the configuration it was forked with (it drains by that one, a reload's new
        #: one notwithstanding: a reload that lowered it had old workers killed in the middle of their drain).
        self.drain_limits: dict[int, float] = {}
        self._quick_deaths = 0  # serving workers in a row that died soon after their start
        self._died = 0  # serving workers that died and are not replaced yet (a reload's new count is no death)
        self._not_before = 0.0  # no replacement before then (monotonic): the backoff

    @property
    def worker_count(self) -> int:
        """How many workers to keep running."""
        return self.config.milter.workers or os.cpu_count() or 1

    def run(self) -> int:
        """Serve until SIGTERM; return the exit status."""
        # First: a SIGTERM while the store is prepared is a clean stop.
        signal.signal(signal.SIGTERM, self._on_stop)
        signal.signal(signal.SIGINT, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_hup)
        self._reload = self._reload or bool(EARLY_HUPS)
        try:
            check_store(self.config, self.services)  # before the socket: a bad store refuses the start
            if self._stopping:
                return 0
            self.spec, self.listen_fd = open_socket(self.config)
            self._socket_file = _file_id(self.spec)
            become_service(self.config, self.services)
        except StoreError as exc:  # before any worker: the supervisor refuses to start
            print(f"milterd: {redact(str(exc), self.config.database.url)}", file=sys.stderr)
            self._remove_socket()
            return 1
        except ConfigError:
            self._remove_socket()
            raise
        try:
            metrics.start(self.config.metrics.listen)  # before the workers fork: they inherit it
        except (OSError, ValueError, ImportError) as exc:  # ImportError: after the privilege drop, an interpreter the account cannot read
            self._remove_socket()
            raise ConfigError(self.config.path or "milter.conf", "[metrics] listen", f"cannot serve metrics on {self.config.metrics.listen}: {exc}") from None
        if self._stopping:  # stopped while the store was being prepared: no worker to start
            self._shutdown()
            return 0
        log.info("listening on %s with %d workers", self.config.milter.socket, self.worker_count)
        for _ in range(self.worker_count):
            if not self._try_spawn():
                break

        last_run: dict[str, float]
        jobs, last_run, next_check = list(maintenance.JOBS), {}, time.monotonic() + 5
        while not self._stopping:
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + 60
                self._maintain(jobs, last_run)
            if self._reload:
                self._reload = False
                self._do_reload()
            self._watch()
            self._reap_and_replace()
            time.sleep(0.2)
        self._shutdown()
        return 0

    def _watch(self) -> None:
        """Take each worker's heartbeats; kill a serving worker silent for ``[milter] worker_timeout`` (replaced as
        any worker that died).  libmilter's accept thread is C: a worker stuck in a call that never returns goes on
        taking connections, each of which Postfix then waits milter_connect_timeout for and tempfails."""
        timeout = self.config.milter.worker_timeout
        now = time.monotonic()
        for pid, beat in list(self.beats.items()):
            try:
                while os.read(beat.fd, 4096):
                    beat.last = now
            except BlockingIOError:
                pass
            except OSError:
                continue
            if timeout and self.workers.get(pid, -1) >= 0 and now - beat.last > timeout:
                log.error("worker %d gave no sign of life for %gs ([milter] worker_timeout): killed, a new one starts", pid, timeout)
                beat.last = now  # killed once, not again while it is reaped
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def _maintain(self, jobs: list[Job], last_run: dict[str, float]) -> None:
        if self.maintainer:
            if self._alive(self.maintainer):
                if time.monotonic() - self.maintainer_started > MAINTENANCE_TIMEOUT:
                    # Hung (a database connection gone dead mid-statement): every later run waited behind it, silently.
                    log.error("maintenance process %d still running after %ds: killed; its jobs run again when next due",
                              self.maintainer, MAINTENANCE_TIMEOUT)
                    os.kill(self.maintainer, signal.SIGKILL)
                return
            self.maintainer = 0  # reaped: its pid may go to a worker next
        now = time.monotonic()  # not the wall clock: one set back by NTP stopped every job until it caught up
        ready = maintenance.due(jobs, self.services, last_run, now)
        if not ready:
            return
        try:
            pid = os.fork()
        except OSError as exc:  # no process left (EAGAIN): the jobs run at a later check
            log.error("cannot start the maintenance jobs (%s): %s; tried again later", ", ".join(job.name for job in ready), exc.strerror or exc)
            return
        for job in ready:
            last_run[job.name] = now
        if pid == 0:
            code = 0
            try:
                _worker_signals()  # SIGTERM ends it (the supervisor's handler only set a flag the child never read)
                name_process(MAINTENANCE_NAME)
                self._close_stop_pipes()
                if self.listen_fd >= 0:
                    os.close(self.listen_fd)  # else a shutdown during its jobs would leave the socket listening
                self.services.after_fork()
                metrics.after_fork_in_worker()  # not the metrics port: the supervisor's
                maintenance.run_jobs(ready, self.services)
                self.services.close()
            except BaseException:  # noqa: BLE001
                code = 1
            os._exit(code)
        self.maintainer, self.maintainer_started = pid, time.monotonic()

    @staticmethod
    def _alive(pid: int) -> bool:
        """Whether the maintenance process *pid* still runs (reaped, with its failure logged, when it ended)."""
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return False
        if done:
            metrics.process_dead(pid)
            _maintenance_ended(pid, status)
        return done == 0

    def _spawn(self, ready_fd: int = -1) -> int:
        """Fork a worker; its pid.  OSError when no descriptor or process is left (EMFILE, EAGAIN), nothing left open."""
        stop_read, stop_write = os.pipe()
        try:
            beat_read, beat_write = os.pipe()
        except OSError:
            os.close(stop_read)
            os.close(stop_write)
            raise
        try:
            pid = os.fork()
        except OSError:
            for fd in (stop_read, stop_write, beat_read, beat_write):
                os.close(fd)
            raise
        if pid == 0:
            try:
                os.close(stop_write)
                os.close(beat_read)
                self._close_stop_pipes()
                code = run_worker(self.services, self.listen_fd, stop_read, ready_fd, beat_write)
            except BaseException:  # noqa: BLE001 - never return into the supervisor's loop
                log.exception("worker failed")
                code = 1
            os._exit(code)
        os.close(stop_read)
        os.close(beat_write)
        os.set_blocking(beat_read, False)
        self.beats[pid] = Heartbeat(beat_read, time.monotonic())
        self.workers[pid] = stop_write
        self.started[pid] = time.monotonic()
        self.drain_limits[pid] = self.services.config.milter.shutdown_timeout
        return pid

    def _close_stop_pipes(self) -> None:
        # In a child: a worker sees EOF on its stop pipe only when no other
        # process holds the write end.
        for stop_write in self.workers.values():
            if stop_write >= 0:
                os.close(stop_write)
        for beat in self.beats.values():
            os.close(beat.fd)

    def _forget(self, pid: int) -> None:
        # Every reaped child ends here (a worker, or the maintainer when _reap got it): its
        # metric files are folded into the archive, or every restart would leave 128 KiB behind.
        metrics.process_dead(pid)
        if pid == self.maintainer:
            self.maintainer = 0  # reaped: a worker may get its pid next, and must not pass for it
        self.started.pop(pid, None)
        self.drain_limits.pop(pid, None)
        beat = self.beats.pop(pid, None)
        if beat is not None:
            try:
                os.close(beat.fd)
            except OSError:
                pass
        stop_write = self.workers.pop(pid, None)
        if stop_write is not None:
            try:
                os.close(stop_write)
            except OSError:
                pass

    def _signal_stop(self, pid: int) -> None:
        # Closing the pipe tells the worker to stop accepting and drain.
        stop_write = self.workers.get(pid)
        if stop_write is not None and stop_write >= 0:
            os.close(stop_write)
            self.workers[pid] = -1

    def _reap_and_replace(self) -> None:
        """Reap every child that exited and start a worker for each serving one that died.

        Workers told to stop (a reload replacing them) do not count: while a
        reload waits for an old worker to drain, a new one that dies is
        still replaced at once.  Workers that keep dying soon after their
        start are replaced after a growing delay (:meth:`_backoff`).
        """
        self._reap(block=False)
        now = time.monotonic()
        serving = [pid for pid, fd in self.workers.items() if fd >= 0]
        if self._quick_deaths and serving and all(now - self.started.get(pid, now) >= QUICK_DEATH for pid in serving):
            self._quick_deaths = 0  # the workers run again
        if now < self._not_before:
            return
        if len(serving) >= self.worker_count:
            self._died = 0  # none to replace (a reload lowered the count meanwhile)
        while sum(1 for fd in self.workers.values() if fd >= 0) < self.worker_count and not self._stopping:
            if self._died:
                self._died -= 1
                self.restarts += 1
                metrics.worker_restarted()
                log.warning("worker died; starting a new one")
            else:
                log.info("starting a worker ([milter] workers = %d)", self.worker_count)
            if not self._try_spawn():
                break

    def _try_spawn(self) -> bool:
        """Start a worker; False when the system refuses it (no descriptor or process left), the replacement then
        tried again after SPAWN_RETRY seconds (the OSError ended the supervisor, every worker with it)."""
        try:
            self._spawn()
        except OSError as exc:
            self._not_before = time.monotonic() + SPAWN_RETRY
            log.error("cannot start a worker: %s; trying again in %gs (the running workers keep serving)", exc.strerror or exc, SPAWN_RETRY)
            return False
        return True

    def _reap(self, block: bool) -> list[int]:
        gone = []
        while self.workers:
            try:
                pid, status = os.waitpid(-1, 0 if block else os.WNOHANG)
            except ChildProcessError:
                for pid in list(self.workers):
                    self._forget(pid)
                break
            except InterruptedError:
                continue
            if pid == 0:
                break
            if pid in self.workers and not self._stopping and self.workers[pid] >= 0:
                log.warning("worker %d %s", pid, _describe_exit(status))
                self._died += 1
                self._backoff(pid)
            elif pid == self.maintainer:
                _maintenance_ended(pid, status)
            self._forget(pid)
            gone.append(pid)
            if block:
                break
        return gone

    def _backoff(self, pid: int) -> None:
        """Count serving worker *pid*'s death; from the second in a row soon after a start, delay the replacements.

        A worker that cannot start (a check that fails to initialise, a
        resource gone) would otherwise be forked again every loop, each time
        with its traceback: 0.5 s, then twice as long each time, at most
        :data:`MAX_BACKOFF`.  A worker that served a while is replaced at once.
        """
        now = time.monotonic()
        if now - self.started.get(pid, now) >= QUICK_DEATH:
            self._quick_deaths = 0
            return
        self._quick_deaths += 1
        if self._quick_deaths < 2:
            return
        delay = min(0.5 * 2 ** (self._quick_deaths - 2), MAX_BACKOFF)
        if now + delay > self._not_before:
            self._not_before = now + delay
            log.error("%d workers in a row died within %gs of their start: restarting in %gs", self._quick_deaths, QUICK_DEATH, delay)

    def _on_stop(self, signum: int, _frame: object) -> None:
        self._stopping = True

    def _on_hup(self, signum: int, _frame: object) -> None:
        self._reload = True

    def _do_reload(self) -> None:
        services: Services | None = None
        try:
            # The file the running configuration came from: without -c, not whatever the search finds now
            # (a milter.conf moved away would have switched the daemon to the embedded defaults, silently).
            config = load_config(self.config_path or self.config.path)
            hide_database_url(config.database.url)  # before anything can log or raise with the new URL in it
            warn_restart_only(self.config, config)
            if config.milter.socket != self.config.milter.socket:
                # The new workers serve the socket that is open, whatever the new file says.
                config = config.model_copy(update={"milter": config.milter.model_copy(update={"socket": self.config.milter.socket})})
            blockers = reload_blockers(config)
            if blockers:
                raise blockers[0]
            # As a start checks them (this process runs as the service account now): a spool_dir the workers cannot
            # write was accepted, and every message past spool_memory then answered 451; so was a SQLite store they
            # can read only.  A store directory not made yet that they can make is accepted.
            check_writable(config, makeable=True)
            check_store_files(config, handed_over=True)
            services = build(config)
            services.store.ensure_schema(config.database.auto_upgrade)
            services.close()
            services.after_fork()
        except (ConfigError, StoreError) as exc:
            log.error("reload refused, the running configuration stays: %s", exc)
            self._discard(services)
            return
        except Exception as exc:  # noqa: BLE001 - whatever the new configuration raises (a check's setup), the old one keeps serving
            log.error("reload refused, the running configuration stays: %s: %s", type(exc).__name__, exc)
            log.debug("reload refused", exc_info=True)
            self._discard(services)
            return
        log.info("reload: new configuration accepted; replacing workers one by one")
        old_config, old_services = self.config, self.services
        self.config, self.services = config, services
        old_level = logging.getLogger().level
        if config.milter.log_level != old_config.milter.log_level:
            # Here, and in every worker forked from now on (they inherit it); the old workers
            # keep theirs while they drain.
            # Said at warning level: a quieter level would drop its own announcement.
            log.warning("reload: [milter] log_level is now %s (was %s)", config.milter.log_level, old_config.milter.log_level)
            set_level(config.milter.log_level)
        started: list[int] = []
        for pid in list(self.workers):
            if self._stopping:
                return
            if pid not in self.workers or self.workers[pid] < 0:  # died meanwhile, or stopping (a reload refused half-way)
                continue
            if len(started) >= self.worker_count:  # [milter] workers lowered: the rest stop, not replaced
                self._stop_worker(pid)
                continue
            new = self._spawn_ready()
            if new is None:
                if self._stopping:
                    return
                # Every old worker not replaced yet keeps serving; those of the new configuration
                # already started are stopped, and replaced by workers of the old one.
                self.config, self.services = old_config, old_services
                logging.getLogger().setLevel(old_level)  # before the workers of the old configuration are forked
                for pid_new in started:
                    self._signal_stop(pid_new)
                for _ in started:
                    if not self._try_spawn():
                        break  # the main loop starts the rest once forks are possible again
                self._discard(services)
                log.error("reload refused, the running configuration stays: a worker of the new configuration did not start (its error is logged)")
                return
            started.append(new)
            self._stop_worker(pid)
        if not self._stopping:  # a SIGTERM meanwhile ended the reload half-way
            log.info("reload done")

    def _discard(self, services: Services | None) -> None:
        """Close what a refused configuration's services opened (their store's connections)."""
        if services is None:
            return
        try:
            services.close()
        except Exception:  # noqa: BLE001 - closing a refused configuration's store must not end the supervisor
            log.debug("closing the refused configuration's store", exc_info=True)

    def _spawn_ready(self) -> int | None:
        """Start a worker and wait until it says it is ready to serve; its pid, or None when it died or did not say so in time.

        A reload stops an old worker only once its replacement is ready: new
        workers that die at once must not leave nothing serving.  Children are
        reaped meanwhile, but none is replaced: a replacement now would start
        with the configuration being tried.
        """
        try:
            ready_read, ready_write = os.pipe()
        except OSError as exc:
            log.error("cannot start a worker: %s", exc.strerror or exc)
            return None
        try:
            pid = self._spawn(ready_write)
        except OSError as exc:
            os.close(ready_read)
            log.error("cannot start a worker: %s", exc.strerror or exc)
            return None
        finally:
            os.close(ready_write)  # only the worker holds it now: its death is EOF
        poller = select.poll()
        poller.register(ready_read, select.POLLIN)
        try:
            deadline = time.monotonic() + READY_TIMEOUT
            while not self._stopping and time.monotonic() < deadline:
                if poller.poll(200):
                    if os.read(ready_read, 1):
                        return pid
                    return None  # EOF: it died before it was ready (reaped, and its end logged, as any worker's)
                self._reap(block=False)
        finally:
            os.close(ready_read)
        if pid in self.workers and not self._stopping:
            log.error("worker %d was not ready to serve within %gs", pid, READY_TIMEOUT)
            self._signal_stop(pid)  # not a serving worker any more: it is reaped, not replaced
            os.kill(pid, signal.SIGKILL)
        return None

    def _stop_worker(self, pid: int) -> None:
        # While this worker drains, every other child is still reaped and a
        # serving worker that dies is replaced (no zombie, no missing worker).
        self._signal_stop(pid)
        deadline = time.monotonic() + self._drain_limit(pid) + 5
        while pid in self.workers and time.monotonic() < deadline and not self._stopping:
            self._reap_and_replace()
            if pid in self.workers:
                time.sleep(0.05)
        if pid in self.workers and not self._stopping:
            self._reap_and_replace()  # one that ended in the last sleep is not named as killed
        if pid in self.workers and not self._stopping:
            self._kill_stuck(pid)
            try:
                os.waitpid(pid, 0)
            except ChildProcessError:
                pass
            self._forget(pid)

    def _drain_limit(self, pid: int) -> float:
        """The shutdown_timeout worker *pid* drains by (its configuration's)."""
        return self.drain_limits.get(pid, self.config.milter.shutdown_timeout)

    def _kill_stuck(self, pid: int) -> None:
        """Kill worker *pid*, which did not stop in time, and say so (its sessions are cut)."""
        log.warning("worker %d did not stop within shutdown_timeout %gs (+5s): killed; its clients' sessions are cut, "
                    "and Postfix applies milter_default_action to them", pid, self._drain_limit(pid))
        os.kill(pid, signal.SIGKILL)

    def _shutdown(self) -> None:
        log.info("stopping: workers finish their messages (at most %gs)", self.config.milter.shutdown_timeout)
        for pid in list(self.workers):
            self._signal_stop(pid)
        # The workers drain on their own copies; a new connection must be refused now (Postfix then
        # applies milter_default_action at once), not wait in the backlog for a worker that never accepts.
        self._stop_listening()
        deadline = time.monotonic() + max([self._drain_limit(pid) for pid in self.workers], default=0.0) + 5
        while self.workers and time.monotonic() < deadline:
            self._reap(block=False)
            time.sleep(0.05)
        self._reap(block=False)  # one that ended in the last sleep is not named as killed
        for pid in list(self.workers):
            self._kill_stuck(pid)
        while self.workers:
            self._reap(block=True)
        self._stop_maintainer()
        metrics.stop()
        log.info("stopped")

    def _stop_maintainer(self) -> None:
        """End the maintenance child, if one runs: its jobs work in short transactions, which the next start's redo
        (an orphan went on after the stop, beside a restarted milterd's own)."""
        if not self.maintainer:
            return
        try:
            os.kill(self.maintainer, signal.SIGTERM)
            os.waitpid(self.maintainer, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        metrics.process_dead(self.maintainer)
        self.maintainer = 0

    def _stop_listening(self) -> None:
        """Close the supervisor's listening socket and remove its unix socket file (while it is still ours)."""
        if self.listen_fd >= 0:
            os.close(self.listen_fd)
            self.listen_fd = -1
        self._remove_socket()

    def _remove_socket(self) -> None:
        if self.spec and self.spec.family == "unix":
            try:
                if self._socket_file is not None and _file_id(self.spec) != self._socket_file:
                    return  # another milterd's socket now, at the same path: not ours to remove
                os.unlink(self.spec.path)
            except OSError as exc:
                # After dropping privileges a directory milterd did not make may not be ours:
                # the next start (as root) replaces the stale socket.
                if exc.errno != errno.ENOENT:
                    log.info("cannot remove %s (%s): the next start replaces it", self.spec.path, exc.strerror)


READY_TIMEOUT = 30.0
"""Seconds: a worker a reload starts must be ready to serve by then, or the old workers stay."""
QUICK_DEATH = 10.0
"""Seconds: a worker that dies sooner after its start counts towards the restart backoff."""
MAX_BACKOFF = 10.0
"""Seconds: the longest a worker that keeps dying at start waits to be replaced."""
MAINTENANCE_TIMEOUT = 3600
"""Seconds: a maintenance process still running this long after its fork is killed (its committed batches stay)."""
SPAWN_RETRY = 5.0
"""Seconds: how long after the system refused a fork (no descriptor or process left) it is tried again."""

MAINTENANCE_NAME = "milterd-maint"
"""The process name (``ps``'s COMM) of the supervisor's short-lived maintenance child, so that
it is told apart from the workers, which keep the interpreter's name."""


#: prctl(2)'s option that names the calling thread (the process, called from its main thread).
PR_SET_NAME = 15


def name_process(name: str) -> None:
    """Set this process's name as ``ps`` and ``pgrep`` show it (Linux's comm, 15 bytes).

    By prctl(2), which needs no permission: /proc/self/comm is root's in a process that dropped root
    (not dumpable after setuid), and the maintenance process stayed "python" under ``[milter] user``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15].encode("ascii")), 0, 0, 0) == 0:
            return
    except (OSError, AttributeError):  # no libc prctl (not Linux): try /proc
        pass
    try:
        with open("/proc/self/comm", "w", encoding="ascii") as comm:
            comm.write(name[:15])
    except OSError:  # not Linux, or /proc not mounted: the name is cosmetic
        pass


def _maintenance_ended(pid: int, status: int) -> None:
    """Log the maintenance process's end unless it succeeded (a job's own failure is logged by the job)."""
    if status:
        log.error("maintenance process %d %s", pid, _describe_exit(status))


def _describe_exit(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"was killed by signal {os.WTERMSIG(status)} ({signal.Signals(os.WTERMSIG(status)).name})"
    return f"exited with status {os.WEXITSTATUS(status)}"


def _worker_signals(stopped_by_signal: bool = True) -> None:
    """A forked child's signals: SIGTERM and SIGINT end it (*stopped_by_signal*, the maintenance child) or do
    nothing (a worker: the supervisor stops it by closing its pipe, or with SIGKILL; sent to the whole group, by
    Ctrl-C on a foreground serve or pkill milterd, they ended the messages in flight unanswered, while the
    supervisor, taking the same signal, lets them finish); SIGHUP does nothing."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL if stopped_by_signal else signal.SIG_IGN)
    # The supervisor reloads; a SIGHUP to the whole group (pkill -HUP milterd, a logrotate idiom) killed the workers
    # and the messages in flight with them.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def run_worker(services: Services, listen_fd: int, stop_fd: int, ready_fd: int = -1, beat_fd: int = -1) -> int:
    """The body of a worker process: serve milter connections until told to stop.

    When it is ready to serve, it writes a byte to *ready_fd* (when not -1) and closes it; it writes a
    heartbeat to *beat_fd* (when not -1) while it can serve (:meth:`Supervisor._watch`).
    """
    _worker_signals(stopped_by_signal=False)
    services.after_fork()
    use_spool_dir(services.config)
    metrics.after_fork_in_worker()  # the supervisor's metrics port must not outlive it in the workers
    pipeline = Pipeline(services)
    adapter.MilterdMilter.pipeline = pipeline
    adapter.MilterdMilter.unix_socket = _is_unix(listen_fd)
    install_exception_hook()
    if services.config.milter.timeout:
        milter.settimeout(int(services.config.milter.timeout))
    threading.Thread(target=_wait_for_stop, args=(stop_fd, listen_fd, services.config.milter.shutdown_timeout), daemon=True).start()
    if beat_fd >= 0:
        threading.Thread(target=_heartbeat, args=(beat_fd, pipeline, services.config.milter.worker_timeout), daemon=True).start()
    if ready_fd >= 0:
        try:
            os.write(ready_fd, b"1")
        except OSError:  # the supervisor stopped waiting: it stops this worker too
            pass
        os.close(ready_fd)
    try:
        milter.main()
    except milter.error as exc:
        log.debug("worker's accept loop ended: %s", exc)
    _drain(services.config.milter.shutdown_timeout)
    pipeline.shutdown()
    services.close()
    return 0


def _heartbeat(beat_fd: int, pipeline: Pipeline, timeout: float) -> None:
    """Write a byte to *beat_fd* a few times per *timeout* while this worker can serve: it needs the GIL (a C call
    that holds it forever stops it), and none is written while every end-of-message thread is stuck
    (:meth:`Pipeline.wedged`)."""
    os.set_blocking(beat_fd, False)
    interval = min(5.0, timeout / 4) if timeout else 5.0
    while True:
        time.sleep(interval)
        if pipeline.wedged():
            continue
        try:
            os.write(beat_fd, b".")
        except BlockingIOError:
            pass  # the supervisor has not read the last ones yet
        except OSError:
            return  # the supervisor is gone: _wait_for_stop ends this worker


def _is_unix(fd: int) -> bool:
    """Whether the listening socket *fd* is a unix socket (the one the worker really serves, whatever a reload changed)."""
    sock = socket.socket(fileno=fd)
    try:
        return sock.family == socket.AF_UNIX
    finally:
        sock.detach()


def _wait_for_stop(stop_fd: int, listen_fd: int, timeout: float) -> None:
    """Stop this worker when the supervisor closes its pipe (or dies).

    The worker replaces its copy of the listening socket with /dev/null: it
    stops accepting at once (libmilter's poll, woken by the next connection,
    finds it readable and lets the socket go, so that connection is refused),
    and libmilter, which unlinks a unix socket it created when its loop ends as
    non-root, finds no socket to unlink (the socket belongs to the supervisor
    and the other workers).  Then it waits for its connections in flight, at
    most *timeout* seconds, and exits; past :data:`QUIET_AFTER` seconds of that
    with a socket that never becomes readable in place (:func:`stop_accepting`).
    """
    while True:
        try:
            if not os.read(stop_fd, 1):
                break
        except InterruptedError:
            continue
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, listen_fd)
    os.close(devnull)
    # milter.stop() is not called: it waits for libmilter's accept loop to
    # reach its poll timeout (seconds).  With /dev/null in place the loop can
    # accept nothing more; the connections in flight are all that matter.
    _drain(timeout, lambda: stop_accepting(listen_fd))
    logging.shutdown()
    os._exit(0)


#: Seconds a stopping worker's libmilter polls /dev/null before a socket that is never readable takes its place.
#: /dev/null is always readable: every accept fails (ENOTSOCK, an error to syslog), libmilter waits 1, 2… s between
#: tries, and at the sixteenth, about 140 s in, it aborted the sessions still in flight, whatever shutdown_timeout
#: allowed.  Put in at once, the quiet socket would keep libmilter's poll of the old socket asleep (it re-reads the
#: descriptor when woken) for up to its check interval, so new connections queued there instead of being refused.
QUIET_AFTER = 20.0


def stop_accepting(listen_fd: int) -> tuple[socket.socket, socket.socket]:
    """Put one end of a socket pair nothing writes to in place of *listen_fd*, libmilter's listening descriptor;
    the pair, which must stay open while libmilter's accept loop runs.  It is never readable: the loop just waits."""
    pair = socket.socketpair()
    os.dup2(pair[0].fileno(), listen_fd)
    return pair


#: How long a stopping worker waits for connections that libmilter accepted just before it stopped accepting to be
#: counted (at their first callback: Postfix sends it as soon as it connects).
ACCEPTED_GRACE = 0.5


def _drain(timeout: float, quiet: Callable[[], object] | None = None) -> None:
    """Wait for the connections in flight, at most *timeout* seconds; call *quiet* once :data:`QUIET_AFTER` seconds in."""
    started = time.monotonic()
    deadline = started + timeout
    kept: list[object] = []  # what quiet() returned, open until the worker exits
    while (adapter.active > 0 or time.monotonic() < started + ACCEPTED_GRACE) and time.monotonic() < deadline:
        if quiet is not None and not kept and time.monotonic() >= started + QUIET_AFTER:
            kept.append(quiet())
        time.sleep(0.05)
    if adapter.active > 0:
        log.warning("%d connection(s) still open after %gs; stopping anyway", adapter.active, timeout)


def undecodable_argument(exc: BaseException, tb: TracebackType | None) -> bytes | None:
    """The raw bytes of a callback argument pymilter could not decode; None for any other exception.

    pymilter's C module builds a callback's arguments itself and decodes its
    text strictly as UTF-8: an 8-bit HELO name (Postfix passes one on with
    smtputf8_enable = no) fails there, before any Python code runs, so the
    UnicodeDecodeError has no traceback.  An exception of Python code always
    has one (and the adapter's guard catches milterd's own).
    """
    if tb is None and isinstance(exc, UnicodeDecodeError):
        return exc.object
    return None


_previous_excepthook = sys.excepthook


def milter_excepthook(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    """sys.excepthook in a worker: where pymilter reports an exception no callback caught (PyErr_Print).

    A callback pymilter could not call because it could not decode its
    argument continues (no 451 "untrapped exception", no traceback): the
    bytes are kept for the connection's next callback, which judges them
    (``MilterdMilter._judge_dropped``).  Anything else keeps pymilter's
    tempfail and the usual report.

    pymilter reads its exception policy, one global of the C module, right
    after this hook returns, once the GIL is released.  Each exception sets
    the policy it needs in its own hook, so another connection can change it
    only by taking the GIL and failing a whole callback in the gap between
    that release and the read of one int; and the exceptions other than the
    undecodable one are bugs outside the adapter's guard (register's lambdas,
    pymilter's own connect and negotiate callbacks), not client input.  Safe
    enough, with no way to give pymilter a policy per call.
    """
    raw = undecodable_argument(exc, tb)
    if raw is None:
        milter.set_exception_policy(milter.TEMPFAIL)
        _previous_excepthook(exc_type, exc, tb)
        return
    adapter.record_undecodable(raw)
    milter.set_exception_policy(milter.CONTINUE)


def install_exception_hook() -> None:
    """Install :func:`milter_excepthook` (once) with pymilter's default policy, tempfail."""
    global _previous_excepthook
    if sys.excepthook is not milter_excepthook:
        _previous_excepthook = sys.excepthook
        sys.excepthook = milter_excepthook
    milter.set_exception_policy(milter.TEMPFAIL)


def register(cls: type) -> None:
    """Register *cls* with pymilter's C module, as Milter.runmilter does, without serving."""
    Milter.factory = cls
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(Milter.close_callback)
    milter.register(
        "milterd",
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )


def serve(config_path: str | None) -> int:
    """``milterd serve``: validate everything, then supervise (the store is prepared as the service account, in ``run``)."""
    # First (the command line did it before its imports): SIGHUP's default ends the process, and a reload sent just
    # after a start (logrotate, systemd) stopped milterd silently while it read its configuration.
    signal.signal(signal.SIGHUP, record_early_hup)
    config = load_config(config_path)

    setup_logging(config.milter.log_target, config.milter.log_level, config.database.url)
    service_account(config)  # an unknown user or group is refused before anything is created
    services = build(config)  # as root: it reads the signing keys, which may be readable by root only
    return Supervisor(config_path, config, services).run()
