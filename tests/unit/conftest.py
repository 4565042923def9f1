"""Unit tests run with no daemons: no Postfix, clamd, spamd, rbldnsd, unbound,
PostgreSQL, nor any other process of their own (``milterd serve`` included).

The guard below makes that a failure, not a convention: a unit test that
starts a process or connects to PostgreSQL fails with the reason.  Such a
test belongs in tests/integration.
"""

from __future__ import annotations

import os
import subprocess
import zipfile
from typing import Any, Iterator, NoReturn

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from milterd.checks.clamav import STREAM_LIMITS

WHERE = "unit tests start no process and no daemon: move this test to tests/integration"


def _refuse(what: str) -> Any:
    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise AssertionError(f"{what}{args[:1]!r}: {WHERE}")

    return refuse


def _no_postgresql(connect: Any) -> Any:
    """psycopg's connect, refused for a server on PostgreSQL's port (a test that
    connects to a closed port on purpose, to see the store down, still may)."""

    def guarded(conninfo: str = "", **kwargs: Any) -> Any:
        # autocommit, row_factory, context… are psycopg's options, not connection parameters.
        params = {k: v for k, v in kwargs.items() if k not in PSYCOPG_OPTIONS}
        port = conninfo_to_dict(make_conninfo(conninfo, **params)).get("port") or "5432"
        if str(port) == "5432":
            raise AssertionError(f"a PostgreSQL connection ({port=}): {WHERE}")
        return connect(conninfo, **kwargs)

    return guarded


PSYCOPG_OPTIONS = {"autocommit", "prepare_threshold", "row_factory", "cursor_factory", "context"}

#: Helpers ctypes.util.find_library runs to locate a shared library (libraries such as
#: dkimpy's or libarchive's load one): a lookup, not a daemon.
LIBRARY_LOOKUP = {"ldconfig", "gcc", "cc", "ld", "objdump"}


def _popen(real: Any) -> Any:
    def popen(args: Any, *rest: Any, **kwargs: Any) -> Any:
        argv = [args] if isinstance(args, (str, bytes)) else list(args)
        if argv and os.path.basename(str(argv[0])) in LIBRARY_LOOKUP:
            return real(args, *rest, **kwargs)
        raise AssertionError(f"subprocess.Popen({argv[:4]!r}): {WHERE}")

    return popen


@pytest.fixture(scope="package", autouse=True)
def _no_processes_nor_daemons() -> Iterator[None]:
    """For the whole tests/unit package, so that module fixtures are guarded too (they are
    set up after it), and undone after its last test: an integration test run in the same
    session afterwards may start its daemons."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess, "Popen", _popen(subprocess.Popen))
        for name in ("fork", "forkpty", "posix_spawn", "posix_spawnp", "system", "execv", "execve", "execvp", "execvpe"):
            if hasattr(os, name):
                patch.setattr(os, name, _refuse(f"os.{name}"))
        connect = psycopg.Connection.connect
        patch.setattr(psycopg, "connect", _no_postgresql(connect))
        patch.setattr(psycopg.Connection, "connect", _no_postgresql(connect))
        yield


@pytest.fixture(autouse=True)
def _clamd_stream_limits_forgotten() -> Iterator[None]:
    """The clamav check keeps clamd's StreamMaxLength, once learned, for the process: one test's fake clamd must
    not cut another's messages (a later one may listen on the same port)."""
    yield
    STREAM_LIMITS.clear()


@pytest.fixture
def directory_reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """How many times zipfile parsed a central directory."""
    reads: list[int] = []
    real = zipfile.ZipFile._RealGetContents  # type: ignore[attr-defined]

    def counted(self: zipfile.ZipFile) -> None:
        reads.append(1)
        real(self)

    monkeypatch.setattr(zipfile.ZipFile, "_RealGetContents", counted)
    yield reads
