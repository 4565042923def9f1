"""Reading the small files milterd is configured with: milter.conf, rule files, keys, maps, passwords.

Each is read at start or at a reload (and the release password by the CLI), so a
mistake in its place must be refused with a reason, not hang or exhaust the
process: a FIFO would block the read for ever, /dev/zero would fill the memory.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: The largest file read: a bigger one is a mistake (a log, a mailbox), not a configuration, key or map.
MAX_FILE_SIZE = 16 * 1024 * 1024


def read_regular(path: Path) -> bytes:
    """The bytes of *path*, a regular file of at most MAX_FILE_SIZE bytes; OSError otherwise (ValueError: a NUL in the name).

    Opened without blocking and checked before reading.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        mode = os.fstat(fd).st_mode
    except OSError:
        os.close(fd)
        raise
    if not stat.S_ISREG(mode):
        # Checked before fdopen(), which refuses a directory without closing the descriptor it was given:
        # each refused reload left one open, inherited by every worker forked after it.
        os.close(fd)
        if stat.S_ISDIR(mode):
            raise OSError(errno.EISDIR, os.strerror(errno.EISDIR))
        raise OSError(errno.EINVAL, "not a regular file")
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_FILE_SIZE + 1)
    if len(data) > MAX_FILE_SIZE:
        raise OSError(errno.EFBIG, f"larger than {MAX_FILE_SIZE // (1024 * 1024)} MiB")
    return data


def resolved(path: Path) -> Path:
    """*path* made absolute, its symbolic links followed (as :meth:`Path.resolve`); OSError (ELOOP) for a loop of links.

    Python 3.11 raises RuntimeError for a loop, which the callers' handling of a bad path (OSError) missed: a
    traceback at start (3.13 raises nothing and leaves the loop to the next system call, which fails with ELOOP).
    """
    try:
        return path.resolve()
    except RuntimeError:
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None


def read_error(exc: OSError | ValueError) -> str:
    """Why :func:`read_regular` failed, in words ("Permission denied", "not a regular file", "embedded null byte")."""
    return (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
