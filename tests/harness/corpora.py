"""Malformed-mail corpora written by others, found on this machine (no daemons).

CPython's own email test messages (``test/test_email/data/msg_*.txt``, 65
messages, many malformed on purpose) are the bad-input corpus of several
tests.  Debian's ``python3`` lacks them; ``libpython3.X-testsuite`` (installed
by ``.ci/setup``) ships them.  Missing data fails a test, never skips it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def cpython_email_data() -> Path | None:
    """The folder of CPython's test_email messages, or None.

    Looked for in this interpreter's ``test`` package, then where Debian's
    libpython3.X-testsuite installs it (so that a venv built on another
    Python 3.X finds it too).
    """
    candidates: list[Path] = []
    try:
        import test as cpython_test

        candidates += [Path(folder) / "test_email" / "data" for folder in cpython_test.__path__]
    except ImportError:
        pass
    candidates.append(Path(f"/usr/lib/python{sys.version_info[0]}.{sys.version_info[1]}/test/test_email/data"))
    return next((folder for folder in candidates if any(folder.glob("msg_*.txt"))), None)


def cpython_email_messages() -> list[Path]:
    """Every msg_*.txt of CPython's email test data; fails the calling test when it is missing."""
    folder = cpython_email_data()
    if folder is None:
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        pytest.fail(f"CPython's test_email messages are missing: install Debian's libpython{version}-testsuite (.ci/setup does)")
    return sorted(folder.glob("msg_*.txt"))
