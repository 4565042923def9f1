"""SQLAlchemy engines that are safe on libmilter's threads.

On libmilter's threads CPython's "GIL state" record may name another
connection's thread state, or a freed one (see :mod:`milterd.pythonthread`):
C code that calls back into Python through ``PyGILState_Ensure`` there hangs
the worker or crashes it ("Fatal Python error: take_gil").  In a worker's
database code there are three such C callbacks; each is removed here:

* sqlite3's function destructors, run when a connection that has Python
  functions is closed or garbage-collected (SQLAlchemy registers ``regexp``
  and ``floor`` on every connection): SQLite connections are made with
  :class:`CallbackFreeConnection`, which registers no Python function at all
  (milterd's SQL uses neither), so closing one calls no Python;
* the calls into those functions while a statement runs: same fix;
* psycopg's notice receiver, which libpq calls for every NOTICE or WARNING
  the server sends, and for an error (such as ``pg_terminate_backend``'s
  FATAL) that arrives while the connection is idle: :func:`silence_notices`
  replaces it with a C function that does nothing.

As a second line of defence the pool never grows or shrinks while a worker
serves mail (a fixed ``pool_size``, no overflow connections); a connection it
must close (after a disconnect, on invalidation) is closed, and a PostgreSQL
connection is opened (the server may send NOTICEs while it starts), on a
thread Python started (:func:`run_on_python_thread`), where the GIL state
record is right.
"""

from __future__ import annotations

import ctypes
import functools
import math
import os
import sqlite3
import stat
import time
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import URL, Engine, create_engine, event, make_url
from sqlalchemy.engine.interfaces import DBAPIConnection, Dialect
from sqlalchemy.exc import ArgumentError, DisconnectionError
from sqlalchemy.pool import ConnectionPoolEntry, QueuePool

from ..files import resolved
from ..pythonthread import run_on_python_thread
from ..units import connect_timeout_seconds
from .errors import StoreError

#: Connections a worker keeps open on SQLite (one writer at a time; readers and
#: waiting writers hold the others).
POOL_SIZE = 32

#: ``[database] pool_size``'s default: connections a worker keeps open to a database server.
DEFAULT_POOL_SIZE = 16


class CallbackFreeConnection(sqlite3.Connection):
    """An SQLite connection that registers no Python function.

    sqlite3 frees a registered function's Python object from a C destructor
    through ``PyGILState_Ensure`` when the connection closes, and calls the
    function the same way while a statement runs; on a libmilter thread
    either crashes the worker.  SQLAlchemy registers ``regexp`` and
    ``floor``, which milterd's SQL does not use: registrations are ignored.
    """

    def create_function(self, name: str, narg: int, func: Callable[..., Any] | None, *, deterministic: bool = False) -> None:
        """Ignored: see the class's docstring."""


class OwnedQueuePool(QueuePool):
    """A QueuePool that closes connections on a thread Python started (see :func:`run_on_python_thread`)."""

    # Log as SQLAlchemy's own pool (quiet below WARNING), not as a "milterd.*" logger
    # that would print "Pool disposed" in milterd's log at every worker start.
    _sqla_logger_namespace = "sqlalchemy.pool.impl.QueuePool"

    def _close_connection(self, connection: DBAPIConnection, *, terminate: bool = False) -> None:
        run_on_python_thread(lambda: QueuePool._close_connection(self, connection, terminate=terminate))


@functools.cache
def _libpq() -> tuple[Any, int]:
    """The libpq psycopg uses, with ``PQsetNoticeReceiver`` typed, and the address of its ``PQfreemem``."""
    paths = sorted({line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "/libpq" in line and ".so" in line})
    if not paths:
        raise RuntimeError("psycopg's libpq is not loaded")
    # psycopg's own copy (psycopg_binary.libs) wins over a system libpq another module may have loaded.
    path = next((p for p in paths if "psycopg" in p), paths[0])
    lib = ctypes.CDLL(path)
    lib.PQsetNoticeReceiver.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.PQsetNoticeReceiver.restype = ctypes.c_void_p
    free = ctypes.cast(lib.PQfreemem, ctypes.c_void_p).value
    assert free is not None
    return lib, free


def silence_notices(connection: Any) -> None:
    """Stop libpq from calling psycopg's notice receiver (Python) on *connection*, a psycopg connection.

    The receiver becomes libpq's ``PQfreemem`` with a NULL argument: libpq
    calls ``receiver(arg, result)``, which is then ``free(NULL)``, nothing.
    (The C calling convention lets a function ignore an extra argument.)
    Nothing is lost: psycopg passes notices only to handlers added with
    ``add_notice_handler``, and milterd adds none.
    """
    pgconn = getattr(connection, "pgconn", None)
    if pgconn is None:  # not psycopg 3
        return
    lib, noop = _libpq()
    lib.PQsetNoticeReceiver(pgconn.pgconn_ptr, noop, None)


def sqlite_file(url: str | URL) -> Path | None:
    """The file a SQLite URL opens, ``~`` expanded; None for another database, an in-memory one,
    a ``uri=true`` one, or a URL that does not parse (opening the store says why, without a traceback)."""
    try:
        parsed = make_url(url)
    except (ValueError, ArgumentError):  # "…:notaport/…": int() of the port
        return None
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or parsed.query.get("uri") or not database or database == ":memory:":
        return None
    return Path(database).expanduser()


def relative_sqlite(url: str | URL) -> Path | None:
    """The file a SQLite URL with a relative path opens, made absolute against the working directory (where
    every command, ``serve`` included, opens it); None for an absolute path or another database."""
    file = sqlite_file(url)
    if file is None or file.is_absolute():
        return None
    try:
        return Path.cwd() / file
    except OSError:  # the working directory was removed: nothing opens the store there either
        return None


#: Links followed by :func:`planted_link` before it gives up (the kernel's own limit; the open then fails).
_MAX_LINKS = 40


def planted_link(path: Path) -> Path | None:
    """The first symlink not owned by root met on the way to *path* (root's own links are followed), or None.

    Every component is looked at, in *path* and in the targets of root's links
    (an administrator may link /var/lib/milterd to another disk, whose
    directories may be the account's), up to the first that does not exist.
    A link another account made, such as the service account in the store's
    directory, could point at any file root owns: root must not follow it.
    """
    pending = list(reversed(path.absolute().parts[1:]))  # popped from the end: the next component last
    current, followed = Path("/"), 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            current = current.parent  # current has no symlink in it: its parent is the real one
            continue
        candidate = current / name
        try:
            info = os.lstat(candidate)
        except OSError:  # missing (or not a directory): nothing further to follow
            return None
        if not stat.S_ISLNK(info.st_mode):
            current = candidate
            continue
        if info.st_uid != 0:
            return candidate
        followed += 1
        if followed > _MAX_LINKS:
            return None
        target = Path(os.readlink(candidate))
        if target.is_absolute():
            current, target = Path("/"), target.relative_to("/")
        pending.extend(reversed(target.parts))
    return None


def refuse_unsafe_store(file: Path) -> None:
    """As root (effective uid 0): StoreError, naming *file*, when opening the SQLite store would follow
    a symlink not owned by root (:func:`planted_link`), or when the store file or its ``-wal``,
    ``-shm`` or ``-journal`` is not a regular file with a single link.  Nothing otherwise.

    The store's directory belongs to the service account: a link it planted there
    (``milterd.sqlite`` → /etc/shadow, or a hard link to a root file) would make
    root's command write milterd's schema, WAL frames or a checkpoint into that file.
    SQLite follows a symlink in the store's place; it opens the other three files
    without following one, but a hard link needs no following.
    """
    if os.geteuid() != 0:
        return
    planted = planted_link(file)
    if planted is not None:
        raise StoreError(f"not opening the SQLite store {file} as root: {planted} is a symlink not owned by root")
    try:
        path = resolved(file)  # where SQLite opens it, and names the other three after
    except OSError as exc:
        raise StoreError(f"not opening the SQLite store {file}: {exc.strerror or exc}") from None
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        try:
            info = os.lstat(candidate)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StoreError(f"not opening the SQLite store {file} as root: cannot examine {candidate}: {exc.strerror or exc}") from None
        if not stat.S_ISREG(info.st_mode):
            raise StoreError(f"not opening the SQLite store {file} as root: {candidate} is not a regular file")
        if info.st_nlink > 1:
            raise StoreError(f"not opening the SQLite store {file} as root: {candidate} has {info.st_nlink} hard links")


def _create_private(path: Path) -> None:
    # A new SQLite file is the log and the quarantine: readable by its owner
    # only.  SQLite gives its -wal and -shm files the database file's mode.
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass


def make_engine(url: str, busy_timeout: float = 10.0, pool_size: int = DEFAULT_POOL_SIZE) -> Engine:
    """An engine for *url* whose connections are safe on libmilter threads (see the module's docstring).

    SQLite gets WAL, a busy timeout, its parent directory created and a pool
    of :data:`POOL_SIZE`; a database server a pool of *pool_size*
    connections, checked before use.  Neither pool has overflow connections:
    a session that finds every connection busy waits *busy_timeout* seconds
    for one, then the message is tempfailed.  A database server's connection
    gives up opening after *busy_timeout* too.
    """
    if url.startswith("sqlite"):
        parsed = make_url(url)
        options: dict[str, Any] = {"connect_args": {"timeout": busy_timeout, "check_same_thread": False, "factory": CallbackFreeConnection}}
        if parsed.database and parsed.database != ":memory:":
            options.update(poolclass=OwnedQueuePool, pool_size=POOL_SIZE, max_overflow=0, pool_timeout=busy_timeout)
        file = sqlite_file(parsed)
        if file is not None:
            parsed = parsed.set(database=str(file))  # SQLite itself does not expand ~: open the file created below
        engine = create_engine(parsed, **options)
        if file is not None:

            @event.listens_for(engine, "do_connect")
            def _create_first(_dialect: Dialect, _record: ConnectionPoolEntry, _cargs: tuple[Any, ...], _cparams: dict[str, Any]) -> None:
                # Checked at every connection, not with the engine: serve builds its store as root
                # and first connects as the service account.  A window remains between the check
                # and SQLite's open, in which the account could swap in a link again; it must race
                # the administrator's command to the moment, and is accepted.
                refuse_unsafe_store(file)
                # Made when a connection is first opened, not with the engine: a command that only
                # asks whether the database exists must not leave an empty one behind.
                try:
                    file.parent.mkdir(parents=True, exist_ok=True)
                    _create_private(file)
                except OSError as exc:  # a store removed from a directory the service account cannot write, say
                    raise StoreError(f"cannot create the SQLite store {file}: {exc.strerror or exc}") from exc

            @event.listens_for(engine, "connect")
            def _note_file(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
                record.info[FILE_ID] = file_id(file)

            @event.listens_for(engine, "checkout")
            def _same_file(_dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
                if file_moved(record.info, file):
                    # Removed or replaced under a running milterd (rm milterd.sqlite*): a connection to the old file
                    # would write rows, quarantined messages too, where nothing will ever read them.
                    raise DisconnectionError(f"the SQLite file {file} was removed or replaced since this connection opened it")

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
                # A new, empty database: switching it to WAL writes its first page, which in the
                # default journal mode needs a -journal file made beside it.  The service account
                # creates the schema, in a directory it may not write (root made the store's three
                # files there and gave them to it): that one write's journal is kept in memory.
                cursor.execute("PRAGMA journal_mode=MEMORY")
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    engine = create_engine(url, poolclass=OwnedQueuePool, pool_pre_ping=True, pool_size=pool_size, max_overflow=0, pool_timeout=busy_timeout)
    unanswered = [0.0]  # until when (time.monotonic()) no connection is tried: the server let the last one time out

    @event.listens_for(engine, "do_connect")
    def _connect(dialect: Dialect, _record: ConnectionPoolEntry, cargs: tuple[Any, ...], cparams: dict[str, Any]) -> Any:
        # libpq waits for ever by default: a server that accepts and never answers (stopped, its host
        # gone behind a load balancer) held a session until Postfix's milter_command_timeout applied its
        # default action to all of it, whatever on_error said.  The URL's own values are kept.
        cparams.setdefault("connect_timeout", max(2, math.ceil(busy_timeout)))  # whole seconds; 0 is for ever
        if busy_timeout >= 1:
            cparams.setdefault("tcp_user_timeout", int(busy_timeout * 1000))  # sent data unacknowledged: host gone
        # A server that let a connection time out is not asked again by this process for as long: the store's
        # next reads and writes (the greylist's whitelist, client and triplets, the log) each waited out their own
        # connect_timeout in turn, past milter_command_timeout, where they now fail at once (their on_error).
        if time.monotonic() < unanswered[0]:
            raise dialect.loaded_dbapi.OperationalError(
                f"the database server let a connection time out less than {busy_timeout:g}s ago: not asked again yet")

        # On a thread Python started: the server's NOTICEs during start-up still reach psycopg's receiver.
        def connect() -> Any:
            connection = dialect.loaded_dbapi.connect(*cargs, **cparams)
            silence_notices(connection)
            return connection

        started = time.monotonic()
        try:
            return run_on_python_thread(connect)
        except Exception:
            if time.monotonic() - started >= _timed_out_after(cparams, busy_timeout) * 0.9:
                unanswered[0] = time.monotonic() + busy_timeout  # it timed out: not a refusal, which is at once
            raise

    return engine


def _timed_out_after(cparams: dict[str, Any], busy_timeout: float) -> float:
    """How long a failed connection attempt took at least when it timed out rather than was refused: the URL's
    ``connect_timeout`` (the configuration checks it), bounded by *busy_timeout*; that bound alone when it is
    0 (for ever) or unreadable: this runs while the connection's own error is raised."""
    seconds = connect_timeout_seconds(cparams.get("connect_timeout"))
    bound = max(1.0, busy_timeout)
    return min(float(seconds), bound) if seconds else bound


#: The key of a SQLite connection's ``info`` under which the identity of the file it opened is kept (:func:`file_id`).
FILE_ID = "milterd_sqlite_file"


def file_id(file: Path) -> tuple[int, int] | None:
    """The identity (device, inode) of the SQLite *file*; None when it is not there."""
    try:
        found = os.stat(file)
    except OSError:
        return None
    return found.st_dev, found.st_ino


def file_moved(info: dict[Any, Any], file: Path) -> bool:
    """Whether the SQLite *file* is no longer the one the connection whose ``info`` is *info* opened (removed or
    replaced since: :data:`FILE_ID`)."""
    return bool(info.get(FILE_ID) != file_id(file))


def server_connection_limits(engine: Engine) -> tuple[int, int] | None:
    """The server's ``max_connections`` and ``superuser_reserved_connections``; None for SQLite."""
    if engine.dialect.name != "postgresql":
        return None
    with engine.connect() as connection:
        limit = int(connection.exec_driver_sql("SHOW max_connections").scalar_one())
        reserved = int(connection.exec_driver_sql("SHOW superuser_reserved_connections").scalar_one())
    return limit, reserved
