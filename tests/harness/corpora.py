"""Malformed-mail corpora written by others, found on this machine (no daemons).

CPython's own email test messages (``test/test_email/data/msg_*.txt``, 48
in 3.11, many malformed on purpose) are the bad-input corpus of several
tests.  Debian's ``python3`` lacks them; ``libpython3.X-testsuite`` (installed
by ``.ci/setup``) ships them (47 in Debian's 3.11: no ``msg_47.txt``).  Missing
data fails a test, never skips it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest


def _candidate_folders() -> list[Path]:
    """Where CPython's test_email messages may be: this interpreter's ``test`` package, then
    where Debian's libpython3.X-testsuite installs them (so that a venv built on another
    Python 3.X finds them too)."""
    candidates: list[Path] = []
    try:
        import test as cpython_test

        candidates += [Path(folder) / "test_email" / "data" for folder in cpython_test.__path__]
    except ImportError:
        pass
    candidates.append(Path(f"/usr/lib/python{sys.version_info[0]}.{sys.version_info[1]}/test/test_email/data"))
    return candidates


def _messages_by_folder() -> list[tuple[Path, list[Path]]]:
    """Each candidate folder holding messages, with its msg_*.txt, the fullest first (ties: the earlier candidate)."""
    found = [(folder, sorted(folder.glob("msg_*.txt"))) for folder in dict.fromkeys(_candidate_folders())]
    return sorted([(folder, files) for folder, files in found if files], key=lambda item: -len(item[1]))


def cpython_email_data() -> Path | None:
    """The folder of CPython's test_email messages holding the most of them, or None
    (:func:`cpython_email_messages` takes them from every folder found)."""
    folders = _messages_by_folder()
    return folders[0][0] if folders else None


def cpython_email_messages() -> list[Path]:
    """Every msg_*.txt of CPython's email test data, sorted by name: from every folder found, each
    name once (from the fullest folder having it); fails the calling test when there is none."""
    by_name: dict[str, Path] = {}
    for _folder, files in _messages_by_folder():
        for path in files:
            by_name.setdefault(path.name, path)
    if not by_name:
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        pytest.fail(f"CPython's test_email messages are missing: install Debian's libpython{version}-testsuite (.ci/setup does)")
    return [by_name[name] for name in sorted(by_name)]
