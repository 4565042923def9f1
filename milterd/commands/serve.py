"""``milterd serve`` and ``milterd reload``."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from ..milter.supervisor import serve
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
        try:
            write_pid_file(args.pid_file, os.getpid())
        except OSError as exc:
            print(f"milterd: cannot write the pid file {args.pid_file}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    try:
        return serve(args.config)
    finally:
        if args.pid_file:
            try:
                os.unlink(args.pid_file)
            except FileNotFoundError:
                pass
            except OSError as exc:
                # After the privilege drop: the pid file's directory must be writable by [milter] user.
                print(f"milterd: cannot remove the pid file {args.pid_file}: {exc.strerror} (make its directory writable by [milter] user)", file=sys.stderr)


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


def run_reload(args: argparse.Namespace) -> int:
    """Send SIGHUP to the supervisor named by the pid file."""
    try:
        with open(args.pid_file) as handle:
            pid = int(handle.read().strip())
        os.kill(pid, signal.SIGHUP)
    except (OSError, ValueError) as exc:
        print(f"milterd: cannot signal the daemon from {args.pid_file}: {exc}", file=sys.stderr)
        return 1
    print(f"milterd: reload requested (pid {pid}); the daemon's log says whether the new configuration was accepted")
    return 0
