"""milterd's SQL store: the message log, the quarantine and the greylist.

:class:`Store` owns one SQLAlchemy engine per process.  On SQLite it uses WAL
and a busy timeout so that several workers write without blocking readers; a
write that still cannot get the lock within ``[database] busy_timeout`` raises
:class:`StoreError`, which the milter turns into a 451 (never a lost message).
"""

from __future__ import annotations

import atexit
import datetime as dt
import functools
import os
import re
import sqlite3
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, cast

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError as AlembicCommandError
from sqlalchemy import JSON, Engine, case, delete, func, insert, inspect, make_url, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import PoolProxiedConnection

from ..clock import as_utc as as_utc  # re-exported
from ..clock import utcnow as utcnow
from ..config import DatabaseSection
from ..text import redact, redact_url, storable
from . import schema
from .engine import POOL_SIZE, file_moved, make_engine, relative_sqlite, server_connection_limits, sqlite_file  # noqa: F401 - re-exported
from .errors import StoreError as StoreError
from .greylist import GreylistStore
from .ownership import owned_by_another, restore_side_files
from .quarantine import QuarantineStore, insert_message
from .upsert import advisory_lock

if TYPE_CHECKING:
    from .quarantine import QuarantineWrite

MIGRATIONS = Path(__file__).parent / "migrations"
#: Built once: a new insert() per message cost its construction and cache-key walk each time.
_INSERT_MESSAGE = insert(schema.messages)


#: Connections the SQLite log row keeps checked out of the pool between rows (of POOL_SIZE).
KEPT_LOG_CONNECTIONS = 4


class NoSchemaError(StoreError):
    """The database has no milterd schema yet (``milterd db upgrade`` creates it)."""


@dataclass
class MessageRecord:
    """One row of the message log."""

    action: str
    time: dt.datetime = field(default_factory=utcnow)
    mta_host: str = ""
    queue_id: str = ""
    client_addr: str = ""
    client_name: str = ""
    helo: str = ""
    auth_user: str = ""
    sender: str = ""
    recipients: list[str] = field(default_factory=list)
    subject: str = ""
    message_id: str = ""
    size: int = 0
    score: float = 0.0
    reason: str = ""
    symbols: dict[str, float] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    elapsed_ms: float = 0.0
    released_as_ham: bool = False

    def as_row(self) -> dict[str, Any]:
        """The column values, strings trimmed to what the columns hold."""
        row = dict(self.__dict__)
        for key, limit in _LIMITS:
            row[key] = storable(row[key])[:limit]
        row["subject"] = storable(row["subject"])
        row["reason"] = storable(row["reason"])
        row["recipients"] = [storable(r) for r in row["recipients"]]
        return row


#: Log rows deleted per transaction by :meth:`Store.purge_log`.
LOG_PURGE_BATCH = 5000

#: The most characters of an envelope sender the log and the quarantine keep (the column's length): a longer one
#: (RFC 5321 allows 256 octets; Postfix takes more) is cut.
SENDER_LIMIT = 512

#: The columns of bounded length, and their bounds.
_LIMITS = (("mta_host", 255), ("queue_id", 64), ("client_addr", 64), ("client_name", 255), ("helo", 255), ("auth_user", 255), ("sender", SENDER_LIMIT), ("message_id", 512))


class _LogInsert:
    """The log row's INSERT compiled once for an SQLite engine, and its parameters' bind processors in order.

    :meth:`Store.log_message` runs it on a pooled connection's DBAPI cursor: the
    same SQL and values SQLAlchemy would send (its own compiler and bind processors:
    the datetime as text, the JSON columns as ``json.dumps``), without a
    ``Connection``, a ``Transaction`` and an execution context per message.
    """

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        keys = [f.name for f in fields(MessageRecord)]
        compiled = _INSERT_MESSAGE.compile(dialect=dialect, column_keys=keys)
        names = list(compiled.positiontup or ())
        if sorted(names) != sorted(keys):
            raise ValueError(f"unexpected bind parameters {names}")
        columns = schema.messages.c
        self.sql = compiled.string
        self.binds = [(name, _empty_json(columns[name].type.dialect_impl(dialect).bind_processor(dialect), columns[name].type)) for name in names]

        # What parameters_of does per column: as_row's cleaning and bound, then the bind processor, in one call.
        limits = dict(_LIMITS)
        self.converters = [(name, _converter(name, limits.get(name), process, columns[name].type.dialect_impl(dialect))) for name, process in self.binds]

    def parameters(self, row: dict[str, Any]) -> tuple[Any, ...]:
        """The positional parameters of *row* (``MessageRecord.as_row``)."""
        return tuple(row[name] if process is None else process(row[name]) for name, process in self.binds)

    def parameters_of(self, record: MessageRecord) -> tuple[Any, ...]:
        """``parameters(record.as_row())`` without the row's dictionary (the same values, tested)."""
        values = record.__dict__
        return tuple([values[name] if convert is None else convert(values[name]) for name, convert in self.converters])


#: SQLAlchemy's default storage format of SQLite's DATETIME, which _converter's shortcut writes.
_SQLITE_DATETIME = "%(year)04d-%(month)02d-%(day)02d %(hour)02d:%(minute)02d:%(second)02d.%(microsecond)06d"


def _converter(name: str, limit: int | None, process: Callable[[Any], Any] | None, impl: Any) -> Callable[[Any], Any] | None:
    """One column's value as the INSERT's parameter: ``as_row``'s cleaning, then *process* (its bind processor)."""
    if limit is not None:
        # storable's test inline: nearly every value needs no cleaning, and a call less per column.
        return lambda value: value[:limit] if value.isascii() and "\x00" not in value else storable(value)[:limit]
    if name in ("subject", "reason"):
        return storable
    if name == "recipients":
        assert process is not None  # a JSON column

        def recipients_text(value: Any) -> Any:
            if type(value) is list and all(type(r) is str and r.isascii() and r.isprintable() and '"' not in r and "\\" not in r for r in value):
                return '["' + '", "'.join(value) + '"]' if value else "[]"  # json.dumps's text: nothing to escape or clean
            return process([storable(r) for r in value])

        return recipients_text
    if name == "symbols":
        assert process is not None  # a JSON column
        return _symbols_converter(process)
    if name == "details":
        assert process is not None  # a JSON column
        return _details_converter(process)
    if process is not None and getattr(impl, "_storage_format", None) == _SQLITE_DATETIME:
        datetime_class = dt.datetime

        def datetime_text(value: Any) -> Any:
            if type(value) is not datetime_class:
                return process(value)  # a date, None or a subclass: as SQLAlchemy writes it
            # isoformat always writes four digits of year and, with "microseconds", six of them; the offset after is cut.
            return value.isoformat(" ", "microseconds")[:26]

        return datetime_text
    return process


def _symbols_converter(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The symbols' JSON (*process*: the column's bind processor), remembered per set of symbols and scores.

    The same rules fire with the same weights message after message, and the
    floats' shortest repr was most of the row's JSON cost.  The key is the
    names, the scores, both their types and the repr of any zero score: equal
    keys then mean the same text from json.dumps (1 == 1.0 and 0.0 == -0.0, but
    they are written differently).  *process* is a pure function of the dict,
    which ``dict(zip(names, scores))`` rebuilds in its order.
    """

    @functools.lru_cache(maxsize=1024)
    def text_of(names: tuple[Any, ...], scores: tuple[Any, ...], _types: tuple[type, ...], _zeros: tuple[str, ...]) -> Any:
        return process(dict(zip(names, scores, strict=True)))

    def symbols_text(value: Any) -> Any:
        if type(value) is not dict:
            return process(value)
        names, scores = tuple(value), tuple(value.values())
        try:
            zeros = tuple(repr(v) for v in scores if v == 0) if 0 in scores else ()
            return text_of(names, scores, (*map(type, names), *map(type, scores)), zeros)
        except TypeError:  # an unhashable name or score: no memo
            return process(value)

    return symbols_text


#: Printable ASCII but the backslash: what json.dumps writes as it is, the quote aside (counted apart).
_JSON_PLAIN = re.compile(r"[ -\[\]-~]*")


def _details_converter(process: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """The details' JSON (*process*: the column's bind processor), joined directly when no string needs escaping.

    json.dumps writes ``{"K": "V", ...}``, escaping a quote, a backslash and any
    character outside printable ASCII; when the joined text has none of these but
    the quotes the join put there, no key or value had anything to escape, so
    the text is the same.
    """

    def details_text(value: Any) -> Any:
        if type(value) is dict and value:
            try:
                text = '{"' + '", "'.join(map('": "'.join, value.items())) + '"}'
            except TypeError:  # a name or detail that is not a string
                return process(value)
            if _JSON_PLAIN.fullmatch(text) and text.count('"') == 4 * len(value):
                return text
        return process(value)

    return details_text


def _empty_json(process: Callable[[Any], Any] | None, column_type: Any) -> Callable[[Any], Any] | None:
    """A JSON column's bind processor, with an empty dict or list (no symbol hit, no detail) written as
    the text ``json.dumps`` gives it, without the encoder's round trip; other types' as they are."""
    if process is None or not isinstance(column_type, JSON):
        return process

    def fast(value: Any, process: Callable[[Any], Any] = process) -> Any:
        if not value and type(value) in (dict, list):
            return "{}" if type(value) is dict else "[]"
        return process(value)

    return fast


def _sync_normally(connection: Connection) -> None:
    """Give a SQLite *connection* back its usual ``synchronous=NORMAL`` (after a quarantined message's commit);
    one that cannot take it is not reused."""
    try:
        connection.exec_driver_sql("PRAGMA synchronous=NORMAL")
        connection.commit()
    except SQLAlchemyError:
        connection.invalidate()


def _log_write_failed(exc: Exception) -> StoreError:
    """The StoreError of a log row that could not be written: the exception's class and the driver's own message."""
    return StoreError(f"cannot write the message log: {exc.__class__.__name__}: {exc.orig if hasattr(exc, 'orig') else exc}")



def _log_filters(query: Any, since: dt.datetime | None, queue_id: str | None, sender: str | None, action: str | None,
                 until: dt.datetime | None = None) -> Any:
    """*query* on the message log narrowed by ``milterd log``'s filters (an empty one is no filter, but the null sender):
    rows from *since* on and before *until*, of the sender *sender* in any case."""
    table = schema.messages
    if since is not None:
        query = query.where(table.c.time >= since)
    if until is not None:
        query = query.where(table.c.time < until)
    if queue_id:
        query = query.where(table.c.queue_id == queue_id)
    if sender is not None:
        query = query.where(func.lower(table.c.sender) == func.lower(sender))  # ix_messages_sender_lower
    if action:
        query = query.where(table.c.action == action)
    return query


def _scripts() -> ScriptDirectory:
    """This milterd's schema migrations (read from its package, without connecting)."""
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config)


#: The key of the PostgreSQL advisory lock that serialises schema upgrades (any 64-bit number no other
#: application on the database uses: "milterd" and 1 in ASCII).
UPGRADE_LOCK = 0x6D696C7465726401


def _lock_for_upgrade(connection: Connection) -> None:
    """Wait until no other process upgrades the schema, and keep others waiting until *connection*'s
    transaction ends (two MX hosts, or two processes, starting with ``auto_upgrade`` at once).

    Taken before the current version is read: the second upgrader then finds the schema the first
    made, instead of creating the same tables or columns again and failing.  The migrations run in
    this transaction (env.py's ``begin_transaction`` adds none of its own to a connection given in
    one), so the lock spans all of them.  PostgreSQL: a transaction-level advisory lock; SQLite:
    the write lock, taken at once (``BEGIN IMMEDIATE``; the sqlite3 module begins no transaction
    before DDL by itself), waiting up to the busy timeout.
    """
    advisory_lock(connection, UPGRADE_LOCK)
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def unusable_database(url: str, reason: object) -> StoreError:
    """The StoreError of a ``[database] url`` that cannot be used at all (it does not parse, its SQLite
    file's name is too long): the URL named, its password hidden.  A URL that does not parse is said so
    in our words: the parser's quote the part it could not read, which may be the rest of a password
    holding an "@" or a ":" (``invalid literal for int(): 'w0rd@127.0.0.1'``)."""
    try:
        make_url(url)
    except (ArgumentError, ValueError):  # only the parser's own errors: a missing driver or a bad option says why
        reason = "the URL does not parse (percent-encode an @, : or / in the password)"
    return StoreError(redact(f"cannot use database {redact_url(url)!r}: {reason}", url))


def driver_reason(exc: Exception, url: str) -> str:
    """``<class>: <message>`` of a database error on one line, *url*'s password hidden: the driver's
    own words, their lines joined, never the SQL nor the link SQLAlchemy adds on lines of their own."""
    cause = getattr(exc, "orig", None)
    words = str(cause) if cause is not None else str(exc).split("\n", 1)[0]
    lines = [line.strip() for line in words.splitlines() if line.strip()]
    lines = [line for line in lines if not _SQL_CONTEXT.match(line)]
    return f"{exc.__class__.__name__}: {redact(' '.join(lines), url)}"


#: The lines where PostgreSQL's message quotes the statement it refused ("LINE 2: CREATE TABLE …") and the caret
#: under the place (its DETAIL and HINT lines are kept).
_SQL_CONTEXT = re.compile(r"LINE \d+: |\^\Z")


#: What milterd's schema revisions look like (0001, 0002…): a newer milterd's is a higher one of these.
MILTERD_REVISION = re.compile(r"\d{4}")


def unversioned_tables(url: str) -> str:
    """Why a database that holds milterd's tables but no schema version is refused (not made again over them)."""
    return (f"{redact_url(url)} holds milterd's tables but no schema version (its alembic_version table is missing "
            "or empty: a partial restore, or tables copied without it), so milterd cannot tell which schema they have: "
            "restore the database whole, or move its tables away and let milterd make the schema")


def unknown_schema(current: str, head: str, tables: bool | None = None) -> str:
    """Why a database at *current*, a version this milterd (newest: *head*) does not know, is refused.

    A higher 4-digit revision is a newer milterd's (another MX host upgraded first); anything else
    (``3f2a9c1b7d4e``) is another application's alembic revision: the database is not milterd's, and
    neither upgrading this milterd nor the database helps.  *tables*: whether milterd's tables are there
    (None: not looked at).
    """
    if MILTERD_REVISION.fullmatch(current) and current > head:
        return (f"the database schema is at {current}, which this milterd does not know (its newest is {head}): "
                "a newer milterd upgraded it; install that version on this host too (a schema is never downgraded)")
    found = {True: "; milterd's tables are there too", False: "; milterd's tables are missing", None: ""}[tables]
    return (f"the database holds another application's schema: its revision {current} is not one of milterd's "
            f"(milterd's revisions are 4-digit numbers, 0001 to {head}){found}: "
            "milterd needs a database of its own (set [database] url to one)")


class Store:
    """The SQL store of one process."""

    def __init__(self, section: DatabaseSection) -> None:
        self.section = section
        try:
            self.engine = make_engine(section.url, section.busy_timeout, section.pool_size)
        except (SQLAlchemyError, ImportError, ValueError) as exc:
            raise unusable_database(section.url, exc) from exc
        # SQLite's log row goes through the DBAPI cursor (log_message); other databases through SQLAlchemy.
        self._log_insert = _LogInsert(self.engine) if self.engine.dialect.driver == "pysqlite" else None
        # Pooled connections the log row keeps checked out between rows (at most KEPT_LOG_CONNECTIONS):
        # a pool checkout and return per row cost as much as the INSERT's own Python.
        self._kept: list[PoolProxiedConnection] = []
        self._file = sqlite_file(section.url) if self._log_insert is not None else None
        file = sqlite_file(self.engine.url)
        if file is not None and os.geteuid() == 0 and owned_by_another(file):
            # A root command's store of the service account's: closed at exit too (a command that leaves
            # it to the interpreter), so that its side files are given back (restore_side_files).
            atexit.register(self.close)

    def close(self) -> None:
        """Close every pooled connection (and, as root, give back a SQLite store's side files: :func:`restore_side_files`)."""
        while self._kept:
            self._kept.pop().close()  # back to the pool, which dispose() closes
        self.engine.dispose()
        file = sqlite_file(self.engine.url)
        if file is not None and os.geteuid() == 0:
            restore_side_files(file)

    # --- schema -----------------------------------------------------------
    def _alembic_config(self, connection: Connection) -> Any:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = connection
        return cfg

    def upgrade(self) -> str:
        """Create or upgrade the schema to the newest version; return that version.

        StoreError when the database is at a version this milterd does not know: a
        newer milterd (another MX host sharing the store) upgraded it, and this host's
        milterd, not the database, needs upgrading.
        """
        try:
            with self.engine.begin() as connection:
                _lock_for_upgrade(connection)
                current = MigrationContext.configure(connection).get_current_revision()
                self._refuse_unknown(current, connection)
                if current is None and self.has_tables(connection):  # creating them again failed ("already exists")
                    raise StoreError(unversioned_tables(self.section.url))
                command.upgrade(self._alembic_config(connection), "head")
            return self.schema_version() or ""
        except (SQLAlchemyError, AlembicCommandError) as exc:  # the database or alembic refusing: their words on one line, never a traceback
            raise StoreError(f"cannot upgrade the schema of {redact_url(self.section.url)}: {driver_reason(exc, self.section.url)}") from exc
        except OSError as exc:  # the SQLite file cannot be made (its name too long): engine.make_engine creates it on connecting
            raise unusable_database(self.section.url, exc.strerror or exc) from exc

    def schema_version(self) -> str | None:
        """The schema version in the database, or None where there is no schema.

        A SQLite file that does not exist has none, and is not created by asking
        (a read-only command must not leave an empty database behind).
        """
        if self._missing_sqlite_file():
            return None
        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def has_schema(self) -> bool:
        """Whether the database holds a schema (:meth:`schema_version`); StoreError when it does not answer."""
        try:
            return self.schema_version() is not None
        except SQLAlchemyError as exc:
            raise StoreError(f"the database does not answer: {driver_reason(exc, self.section.url)}") from exc

    def head_version(self) -> str:
        """The newest schema version this milterd knows (read from its migrations, without connecting)."""
        return _scripts().get_current_head() or ""

    def known_version(self, version: str) -> bool:
        """Whether *version* is one of this milterd's schema versions (not one a newer milterd made)."""
        return version in {script.revision for script in _scripts().walk_revisions()}

    def _refuse_unknown(self, current: str | None, connection: Connection | None = None) -> None:
        """StoreError (:func:`unknown_schema`) when *current* is not one of this milterd's versions; milterd's
        tables looked for on *connection* (in its transaction), else on a connection of the engine."""
        if current is not None and not self.known_version(current):
            raise StoreError(unknown_schema(current, self.head_version(), self.has_tables(connection)))

    def _missing_sqlite_file(self) -> bool:
        file = sqlite_file(self.engine.url)
        try:
            return file is not None and not file.exists()
        except OSError as exc:  # its name too long, a directory on its way unreadable: SQLite could not open it either
            raise unusable_database(self.section.url, exc.strerror or exc) from exc

    def ensure_schema(self, auto_upgrade: bool) -> None:
        """Upgrade (when allowed) or check that the schema is current, and that this login may write it
        (:meth:`require_privileges`); StoreError otherwise."""
        if auto_upgrade:
            self.upgrade()
        else:
            try:
                current, head = self.schema_version(), self.head_version()
            except SQLAlchemyError as exc:
                raise StoreError(f"cannot reach the database {redact_url(self.section.url)}: {driver_reason(exc, self.section.url)}") from exc
            if current != head:
                self._refuse_unknown(current)
                if self.unversioned(current):
                    raise StoreError(unversioned_tables(self.section.url))
                raise StoreError(f"the database schema is at {current or 'nothing'}, this milterd needs {head}: run 'milterd db upgrade'")
        self.require_privileges()

    def require_schema(self) -> None:
        """NoSchemaError (saying to run ``milterd db upgrade``) when the database has no schema, StoreError saying
        the same when its schema is older than this milterd's (a command then failed on a missing column, in SQL's
        words).  A newer schema, which only adds, is taken: an older milterd's commands keep working on it.

        StoreError, without SQL, when the database does not answer.
        """
        url = redact_url(self.section.url)
        try:
            current = self.schema_version()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot reach the database {url}: {driver_reason(exc, self.section.url)}") from exc
        if current is None:
            if self.unversioned(current):
                raise StoreError(unversioned_tables(self.section.url))
            relative = relative_sqlite(self.section.url)
            if relative is not None and not relative.exists():
                # A command run from another directory (cron's) than serve's: "run db upgrade" made a second, empty store.
                raise NoSchemaError(f"the database {url} is relative to the working directory: no such file {relative} "
                                    "(run this command where milterd serve runs, or write an absolute path in [database] url; "
                                    "where serve has not made it yet, `milterd db upgrade` here does)")
            raise NoSchemaError(f"the database {url} has no schema yet: run `milterd db upgrade`")
        head = self.head_version()
        if current != head and self.known_version(current):
            raise StoreError(f"the database schema is at {current}, this milterd needs {head}: run `milterd db upgrade`")
        if not self.known_version(current) and not MILTERD_REVISION.fullmatch(current):
            # Not a newer milterd's schema (taken): another application's, where every command failed in SQL's words.
            raise StoreError(f"{url}: {unknown_schema(current, head, self.has_tables())}")

    def missing_privileges(self) -> list[str]:
        """What this login may not do on milterd's tables that serving needs ("INSERT, UPDATE on messages", "USAGE
        on public.messages_id_seq"…); [] on SQLite, whose file the supervisor checks (``check_writable``).

        PostgreSQL grants per table: a login that may read but not write passed every check at start and
        answered every message 451 (or, with ``on_error = "accept"``, accepted it unlogged).
        """
        if self.engine.dialect.name != "postgresql":
            return []
        missing = []
        with self.engine.connect() as connection:
            present = set(inspect(connection).get_table_names())
            for table in schema.metadata.sorted_tables:
                if table.name not in present:
                    continue
                lacking = [privilege for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE")
                           if not connection.execute(text("SELECT has_table_privilege(:t, :p)"), {"t": table.name, "p": privilege}).scalar()]
                if lacking:
                    missing.append(f"{', '.join(lacking)} on {table.name}")
                for column in table.primary_key.columns:
                    sequence = connection.execute(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": column.name}).scalar()
                    if sequence and not connection.execute(text("SELECT has_sequence_privilege(:s, 'USAGE')"), {"s": sequence}).scalar():
                        missing.append(f"USAGE on {sequence}")
        return missing

    def require_privileges(self) -> None:
        """StoreError naming what this login may not do on milterd's tables (:meth:`missing_privileges`)."""
        try:
            missing = self.missing_privileges()
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the privileges on {redact_url(self.section.url)}: {driver_reason(exc, self.section.url)}") from exc
        if missing:
            raise StoreError(f"the login of {redact_url(self.section.url)} may not write milterd's tables: it lacks "
                             f"{'; '.join(missing)} (GRANT them, or connect as the tables' owner)")

    def unversioned(self, current: str | None) -> bool:
        """Whether the database, its schema version *current* (:meth:`schema_version`), holds milterd's tables
        with no version (:func:`unversioned_tables`).  A SQLite file that does not exist is not made by asking."""
        return current is None and not self._missing_sqlite_file() and self.has_tables()

    def has_tables(self, connection: Connection | None = None) -> bool:
        """Whether the message log table exists (looked for on *connection*, else on a connection of the engine)."""
        return inspect(connection if connection is not None else self.engine).has_table("messages")

    # --- message log ------------------------------------------------------
    def log_message(self, record: MessageRecord, quarantine: "QuarantineWrite | None" = None) -> int:
        """Insert one log row (and the quarantined message, in the same transaction); return its id."""
        if quarantine is None and self._log_insert is not None:
            return self._log_row(self._log_insert, record)
        # A quarantined message is answered DISCARD (the client told 250, Postfix's copy deleted) once this
        # commits: on SQLite (WAL, synchronous=NORMAL, which syncs only at checkpoints) its commit is synced
        # first, so that a power loss cannot take it.  PostgreSQL's commits are synced (synchronous_commit).
        durable = quarantine is not None and self.engine.dialect.name == "sqlite"
        try:
            with self.engine.connect() as connection:
                try:
                    with connection.begin():
                        if durable:  # before the transaction's first write: SQLite refuses it within one
                            connection.exec_driver_sql("PRAGMA synchronous=FULL")
                        # Values as execute() parameters, not .values(**row): SQLAlchemy then reuses
                        # the compiled INSERT instead of building 19 bind parameters per message
                        # (measured: 3× cheaper, ~0.7 ms less CPU per message; bench/RESULTS.md).
                        key = connection.execute(_INSERT_MESSAGE, record.as_row()).inserted_primary_key
                        assert key is not None  # an INSERT of one row has its primary key
                        message_id = key[0]
                        if quarantine is not None:
                            insert_message(connection, int(message_id), quarantine)
                finally:
                    if durable:
                        _sync_normally(connection)
                return int(message_id)
        except SQLAlchemyError as exc:
            raise _log_write_failed(exc) from exc

    def _kept_connection(self) -> PoolProxiedConnection | None:
        """A connection the log row kept, or None: none kept, or the one kept was to a SQLite file since removed or
        replaced (dropped; a new one is checked as the pool's checkout checks it)."""
        try:
            connection = self._kept.pop()  # list.pop and append are atomic: one thread has it at a time
        except IndexError:
            return None
        if self._file is not None and file_moved(connection.info, self._file):
            connection.invalidate()
            return None
        return connection

    def _log_row(self, statement: _LogInsert, record: MessageRecord) -> int:
        """One log row on SQLite, committed: the compiled INSERT, in autocommit, on a pooled connection.

        About half the CPU of ``engine.begin()`` and ``execute()`` (bench/RESULTS.md,
        issue 15).  What SQLAlchemy's execute would do on an error is kept: a
        connection the driver reports as disconnected is invalidated (closed and
        replaced on its next checkout, on a thread Python started), any other
        error is rolled back when the connection goes back to the pool; either is
        a StoreError, as before.
        """
        parameters = statement.parameters_of(record)
        connection = self._kept_connection()
        if connection is None:
            try:
                connection = self.engine.raw_connection()
            except (SQLAlchemyError, sqlite3.Error) as exc:
                # raw_connection() leaves the driver's own error unwrapped when no new connection can
                # be opened (EMFILE, the file gone or unreadable): a StoreError all the same.
                raise _log_write_failed(exc) from exc
        cursor = None
        written = False
        try:
            dbapi = cast(sqlite3.Connection, connection.dbapi_connection)
            previous = dbapi.isolation_level
            # Autocommit for this one statement: SQLite commits at the end of the INSERT's own
            # step, which sqlite3 runs without the GIL.  With a COMMIT as a second call the
            # write lock stayed held while this thread waited for the GIL between the two, and
            # the other threads and the other worker meeting it slept in SQLite's busy handler
            # (1 ms and more a time; about 2 sleeps a message under the bench's load).
            dbapi.isolation_level = None
            try:
                cursor = dbapi.execute(statement.sql, parameters)
                message_id = cursor.lastrowid
            finally:
                dbapi.isolation_level = previous
            written = True
        except sqlite3.Error as exc:
            if self.engine.dialect.is_disconnect(cast(Any, exc), connection.dbapi_connection, cast(Any, cursor)):
                connection.invalidate(exc)
            raise _log_write_failed(exc) from exc
        finally:
            if cursor is not None:
                try:
                    cursor.close()
                except sqlite3.Error:
                    pass  # an invalidated connection's cursor
            if written and len(self._kept) < KEPT_LOG_CONNECTIONS:
                self._kept.append(connection)  # committed, no transaction open: kept for the next row
            else:
                connection.close()  # back to the pool, which rolls back what was not committed
        assert message_id is not None  # an INSERT of one row has its rowid
        return int(message_id)

    def messages(
        self,
        since: dt.datetime | None = None,
        queue_id: str | None = None,
        sender: str | None = None,
        action: str | None = None,
        limit: int | None = None,
        newest_first: bool = True,
        until: dt.datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Log rows matching the filters, as dictionaries."""
        table = schema.messages
        query = _log_filters(select(table), since, queue_id, sender, action, until)
        query = query.order_by(table.c.id.desc() if newest_first else table.c.id)
        if limit:
            query = query.limit(limit)
        return self._log_rows(query)

    def _log_rows(self, query: Any) -> list[dict[str, Any]]:
        """The message-log rows *query* selects, as dictionaries with their time in UTC."""
        with self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
        for row in rows:
            row["time"] = as_utc(row["time"])
        return rows

    def _attach_quarantine(self, rows: list[dict[str, Any]]) -> None:
        """Set each log row's ``quarantine``: its quarantine row (without the message), or None."""
        ids = [row["id"] for row in rows if row["action"] == "quarantine"]  # the only action that stores a copy
        stored = QuarantineStore(self.engine).of_log_rows(ids)
        for row in rows:
            row["quarantine"] = stored.get(row["id"])

    def each_message(
        self,
        since: dt.datetime | None = None,
        queue_id: str | None = None,
        sender: str | None = None,
        action: str | None = None,
        limit: int | None = None,
        batch: int = 1000,
        until: dt.datetime | None = None,
        quarantine: bool = False,
    ) -> Iterator[dict[str, Any]]:
        """Log rows matching the filters, newest first, read *batch* at a time: memory stays
        bounded however many there are (``milterd log --limit 0`` over months of mail).

        With *quarantine*, each row has ``quarantine``: the quarantine row stored for it (every
        column but the message; None when there is none), read with its batch in one more query."""
        table = schema.messages
        below: int | None = None
        if until is not None:
            # Start below the last row of the period (as iter_messages starts at its first).
            end = self._period_end(until)
            if end is None:
                return
            below = end + 1
        left = limit
        while left is None or left > 0:
            size = batch if left is None else min(batch, left)
            query = _log_filters(select(table), since, queue_id, sender, action, until)
            if below is not None:
                query = query.where(table.c.id < below)
            rows = self._log_rows(query.order_by(table.c.id.desc()).limit(size))
            if quarantine:
                self._attach_quarantine(rows)
            yield from rows
            if len(rows) < size:
                return
            below = rows[-1]["id"]
            if left is not None:
                left -= len(rows)

    def iter_messages(self, since: dt.datetime | None = None, batch: int = 1000, until: dt.datetime | None = None) -> Iterator[dict[str, Any]]:
        """Every log row from *since* on and before *until*, oldest first, read in batches."""
        table = schema.messages
        last = 0
        end: int | None = None
        if until is not None:
            end = self._period_end(until)
            if end is None:
                return
        if since is not None:
            # Start at the first row of the period, found through ix_messages_time: the batches walk
            # the primary key, and "time >= since" alone made the first one scan every older row.
            # min(id + 0), not min(id): SQLite and PostgreSQL answer min(id) by walking the primary
            # key from its start until a row matches, the very scan this avoids.
            with self.engine.connect() as connection:
                first = connection.execute(select(func.min(table.c.id + 0)).where(table.c.time >= since)).scalar()
            if first is None:
                return
            last = first - 1
        while True:
            query = _log_filters(select(table).where(table.c.id > last), since, None, None, None, until)
            if end is not None:
                query = query.where(table.c.id <= end)
            rows = self._log_rows(query.order_by(table.c.id).limit(batch))
            if not rows:
                return
            yield from rows
            last = rows[-1]["id"]

    def symbol_counts_by_client(self, symbol: str, since: dt.datetime, limit: int) -> list[tuple[str, int, int]]:
        """Of the newest *limit* log rows from *since* on whose client did not authenticate (``auth_user``
        empty): per client address, how many rows, and how many of them have *symbol* among their symbols.

        Cheap on a log of any size: the rows are the newest of an ix_messages_time range, at most
        *limit* of them (SQLite walks the index backwards and stops there, no sort), counted and
        grouped by the database; the answer has a row per address, never more than *limit*.  ``milterd doctor``
        asks it for DNSBL_SKIPPED_PRIVATE; the addresses let it leave trusted_networks out.
        """
        table = schema.messages
        # JSON_EXTRACT on SQLite, ->> on PostgreSQL: NULL where the row has no such symbol.
        present = case((table.c.symbols[symbol].as_string().is_not(None), 1), else_=0)
        newest = (select(table.c.client_addr.label("client_addr"), present.label("hit"))
                  .where(table.c.time >= as_utc(since), table.c.auth_user == "")
                  .order_by(table.c.time.desc())
                  .limit(limit)
                  .subquery())
        query = select(newest.c.client_addr, func.count(), func.coalesce(func.sum(newest.c.hit), 0)).group_by(newest.c.client_addr)
        try:
            with self.engine.connect() as connection:
                return [(str(addr), int(rows), int(hits)) for addr, rows, hits in connection.execute(query)]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the message log: {exc.__class__.__name__}: {getattr(exc, 'orig', None) or exc}") from exc

    def purge_log(self, older_than: dt.datetime) -> int:
        """Delete the log rows stored before *older_than*, but those a quarantined message still points at; in
        transactions of :data:`LOG_PURGE_BATCH` rows (a backlog of millions never holds SQLite's write lock, which
        every worker's log row waits for, for long); returns how many were deleted."""
        table, held = schema.messages, schema.quarantine.c.message_log_id
        kept = select(held).where(held.is_not(None))
        oldest = (select(table.c.id).where(table.c.time < as_utc(older_than), table.c.id.not_in(kept))
                  .order_by(table.c.time).limit(LOG_PURGE_BATCH).scalar_subquery())
        deleted = 0
        try:
            while True:
                with self.engine.begin() as connection:
                    count = connection.execute(delete(table).where(table.c.id.in_(oldest))).rowcount
                deleted += count
                if count < LOG_PURGE_BATCH:
                    return deleted
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot purge the message log ({deleted} rows deleted): {exc.__class__.__name__}: "
                             f"{getattr(exc, 'orig', None) or exc}") from exc

    def _period_end(self, until: dt.datetime) -> int | None:
        """The id of the last log row before *until* (None: there is none), found through ix_messages_time:
        the batches walk the primary key, and "time < until" alone made them scan every later row.
        max(id + 0), not max(id), as iter_messages' min(id + 0)."""
        table = schema.messages
        with self.engine.connect() as connection:
            end = connection.execute(select(func.max(table.c.id + 0)).where(table.c.time < until)).scalar()
        return None if end is None else int(end)

    @property
    def greylist(self) -> "GreylistStore":
        """The greylist's triplets, client networks and whitelist (store/greylist.py)."""
        return GreylistStore(self.engine)

    def connection_limits(self) -> tuple[int, int] | None:
        """The server's ``max_connections`` and ``superuser_reserved_connections``; None for SQLite.
        StoreError, one line, when the database does not answer (not the driver's lines and link)."""
        try:
            return server_connection_limits(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"the database does not answer: {driver_reason(exc, self.section.url)}") from exc

    def ping(self) -> None:
        """Run a trivial query; StoreError when the database does not answer."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except SQLAlchemyError as exc:
            raise StoreError(f"the database does not answer: {driver_reason(exc, self.section.url)}") from exc
