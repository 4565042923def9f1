"""``milterd serve`` and ``milterd reload``."""

from __future__ import annotations

import argparse
import os
import signal
import stat
import sys

from ..milter.supervisor import serve
from ..text import escape
from . import config_parent


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serve`` and ``reload``."""
    serve = sub.add_parser("serve", parents=[config_parent()], help="run the milter in the foreground")
    serve.add_argument("--pid-file", metavar="FILE", help="write the supervisor's pid here (for 'milterd reload')")
    serve.set_defaults(func=run_serve)
    reload = sub.add_parser("reload", parents=[config_parent()], help="tell a running milterd to re-read milter.conf and rules/ (SIGHUP)")
    reload.add_argument("--pid-file", metavar="FILE", default="/run/milterd/milterd.pid", help="the pid file serve wrote")
    reload.set_defaults(func=run_reload)


def run_serve(args: argparse.Namespace) -> int:
    """Serve until stopped."""
    if args.pid_file:
        running = running_pid(args.pid_file)
        if running:
            print(f"milterd: {args.pid_file}: milterd is already running as pid {running}", file=sys.stderr)
            return 2
        try:
            write_pid_file(args.pid_file, os.getpid())
        except OSError as exc:
            print(f"milterd: cannot write the pid file {args.pid_file}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    try:
        return serve(args.config)
    finally:
        if args.pid_file and running_pid(args.pid_file, mine=True) == os.getpid():
            try:
                os.unlink(args.pid_file)
            except FileNotFoundError:
                pass
            except OSError as exc:
                # After the privilege drop: the pid file's directory must be writable by [milter] user.
                print(f"milterd: cannot remove the pid file {args.pid_file}: {exc.strerror} (make its directory writable by [milter] user)", file=sys.stderr)


def running_pid(path: str, mine: bool = False) -> int:
    """The pid *path* names if that process is a live milterd other than this one (with *mine*, this one too); else 0.

    A pid file left by a process that died (a crash, a SIGKILL) names a dead
    process, or after a reboot one that is not milterd: it is stale.
    """
    try:
        # Not through a symlink, and never waiting on a FIFO: the directory may be [milter] user's.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return 0
    try:
        pid = int(os.read(fd, 32).strip()) if stat.S_ISREG(os.fstat(fd).st_mode) else 0
    except (OSError, ValueError):
        return 0
    finally:
        os.close(fd)
    if pid == os.getpid():
        return pid if mine else 0
    return pid if pid > 0 and serving(pid) else 0


def serving(pid: int) -> bool:
    """Whether process *pid* is a ``milterd serve`` (``milterd serve …``, ``python -m milterd serve …``): its
    command line has a ``serve`` argument after one that is milterd (a program of that name, or the module).

    Not any process whose command line says "milterd" somewhere: a stale pid file's pid reused by
    ``tail -f /var/log/milterd.log`` refused the start, and ``milterd reload`` signalled it.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            args = handle.read().split(b"\0")
    except OSError:  # no such process (or no /proc)
        return False
    program = next((i for i, arg in enumerate(args) if os.path.basename(arg) == b"milterd"), None)
    return program is not None and b"serve" in args[program + 1:]


def write_pid_file(path: str, pid: int) -> None:
    """Write *pid* to *path*, replacing a stale file; never through a symlink or into another file.

    Its directory may be writable by ``[milter] user`` (so that the file is removed at
    shutdown): what that account put there must not make root truncate and write
    another file (a symlink to /etc/passwd, a hard link).  OSError when it cannot.
    """
    try:
        os.unlink(path)  # a stale file, or whatever was planted there: the link goes, not its target
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as handle:
        handle.write(f"{pid}\n")


#: Bytes of a pid file read at most: a pid is a few digits and a newline.
PID_FILE_BYTES = 64
#: The largest pid (a pid_t; Linux's pid_max is at most 2**22).
MAX_PID = 2**31 - 1


def read_pid_file(path: str) -> int:
    """The pid *path* holds: OSError when it cannot be read, ValueError (one line) when it is not a
    regular file or holds no pid.  At most PID_FILE_BYTES are read, never waiting on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = os.read(fd, PID_FILE_BYTES + 1)
    finally:
        os.close(fd)
    text = data.strip()
    # 0 and negative numbers are refused too: kill() would signal a process group, or every process.
    if len(data) > PID_FILE_BYTES or not text.isdigit() or not 0 < int(text) <= MAX_PID:
        raise ValueError("it holds no pid")
    return int(text)


def run_reload(args: argparse.Namespace) -> int:
    """Send SIGHUP to the supervisor named by the pid file."""
    try:
        pid = read_pid_file(args.pid_file)
        if not serving(pid):
            # A stale file (a crash, a reboot) whose pid another process has now: SIGHUP would end it.
            raise ValueError(f"pid {pid} is not a running milterd serve (a stale pid file?)")
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        print(f"milterd: cannot signal the daemon from {escape(args.pid_file)}: {reason}", file=sys.stderr)
        return 1
    print(f"milterd: reload requested (pid {pid}); the daemon's log says whether the new configuration was accepted")
    return 0
