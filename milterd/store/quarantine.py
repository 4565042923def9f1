"""The quarantine's SQL: rows, their messages in chunks, releases.

A quarantined message is stored as numbered pieces in ``quarantine_chunks``
(as amavisd-new's ``quarantine(mail_id, chunk_ind, mail_text)``), written
from the milter's spool one piece at a time inside the transaction of its log
row, and read back the same way: neither the milter nor a release holds a
large message whole.  Rows from before schema 0002 keep the message in
``quarantine.raw`` and read back as one piece.

Every database error leaves this module as :class:`~milterd.store.StoreError`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

from sqlalchemy import Engine, delete, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ..clock import as_utc
from . import schema
from .errors import StoreError

#: Bytes per stored piece (amavisd uses 16 KiB; Postfix passes bodies in 64 KiB pieces).
CHUNK_SIZE = 64 * 1024
#: Pieces fetched per query when a message is read back (1 MiB at most in memory).
READ_BATCH = 16
#: Messages deleted per transaction by a purge: a large backlog is deleted in
#: many short transactions, never holding SQLite's write lock (which every
#: worker's log row waits for) or PostgreSQL's row locks for long.
PURGE_BATCH = 100

T = TypeVar("T")

#: A quarantine row as a dictionary of its columns (``raw`` left out).
QuarantineRow = dict[str, Any]


@dataclass
class QuarantineWrite:
    """A message to quarantine: its row's columns and where to read the message from.

    ``row`` holds every column of ``quarantine`` but ``id``, ``message_log_id``
    and ``raw``; ``chunks`` is called once, inside the transaction, and
    yields the message (headers, blank line, body) piece by piece.
    """

    row: dict[str, Any]
    chunks: Callable[[], Iterable[bytes]]


def pieces(chunks: Iterable[bytes], size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """*chunks* cut into pieces of at most *size* bytes (empty chunks dropped)."""
    for chunk in chunks:
        for start in range(0, len(chunk), size):
            yield chunk[start:start + size]


def insert_message(connection: Connection, message_log_id: int | None, item: QuarantineWrite) -> int:
    """Insert the row and its pieces on *connection* (the caller's transaction); return the row's id.

    ``size`` is set to the bytes actually stored.  SQLAlchemy errors are left
    to the caller, whose transaction they abort.
    """
    values = {**item.row, "message_log_id": message_log_id, "raw": None}
    key = connection.execute(insert(schema.quarantine).values(**values)).inserted_primary_key
    assert key is not None
    row_id = int(key[0])
    stored = 0
    statement = insert(schema.quarantine_chunks)
    for index, piece in enumerate(pieces(item.chunks())):
        connection.execute(statement, {"quarantine_id": row_id, "chunk_ind": index, "data": piece})
        stored += len(piece)
    if stored != values.get("size"):
        connection.execute(update(schema.quarantine).where(schema.quarantine.c.id == row_id).values(size=stored))
    return row_id


class QuarantineStore:
    """The quarantine tables of one store (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.table = schema.quarantine
        self.chunks_table = schema.quarantine_chunks

    # --- reading --------------------------------------------------------------
    def rows(
        self, since: dt.datetime | None = None, older_than: dt.datetime | None = None, sender: str | None = None, limit: int | None = None,
    ) -> list[QuarantineRow]:
        """Rows (without the message), newest first, filtered by time and exact sender; the newest *limit* of them (in the SQL) unless None."""
        table = self.table
        query = select(*[c for c in table.c if c.name != "raw"]).order_by(table.c.id.desc())
        if since is not None:
            query = query.where(table.c.time >= _utc(since))
        if older_than is not None:
            query = query.where(table.c.time < _utc(older_than))
        if sender is not None:
            query = query.where(table.c.sender == sender)
        if limit is not None:
            query = query.limit(limit)
        return [_fix(row) for row in self._fetch(query)]

    def get(self, row_id: int) -> QuarantineRow | None:
        """One row (without the message), or None."""
        table = self.table
        rows = self._fetch(select(*[c for c in table.c if c.name != "raw"]).where(table.c.id == row_id))
        return _fix(rows[0]) if rows else None

    def message_chunks(self, row_id: int, expected_size: int | None = None) -> Iterator[bytes]:
        """The stored message, piece by piece, at most ``READ_BATCH`` pieces in memory.

        Raises StoreError (possibly after some pieces) when the database fails
        or the pieces do not add up to *expected_size*: a caller that streams
        them somewhere must then abandon what it sent.
        """
        legacy = self._fetch(select(self.table.c.raw).where(self.table.c.id == row_id))
        if legacy and legacy[0]["raw"] is not None:
            raw = bytes(legacy[0]["raw"])
            yield from pieces([raw])
            return
        chunks = self.chunks_table
        total, next_index = 0, 0
        while True:
            query = (
                select(chunks.c.chunk_ind, chunks.c.data)
                .where(chunks.c.quarantine_id == row_id, chunks.c.chunk_ind >= next_index)
                .order_by(chunks.c.chunk_ind)
                .limit(READ_BATCH)
            )
            batch = self._fetch(query)
            for row in batch:
                if row["chunk_ind"] != next_index:
                    raise StoreError(f"cannot read the quarantine: message {row_id} lacks piece {next_index}")
                data = bytes(row["data"])
                total += len(data)
                next_index += 1
                yield data
            if len(batch) < READ_BATCH:
                break
        if expected_size is not None and total != expected_size:
            raise StoreError(f"cannot read the quarantine: message {row_id} has {total} bytes stored, {expected_size} expected")

    def chunk_count(self, row_id: int) -> int:
        """How many pieces the message of *row_id* is stored in (0 for a row from before schema 0002)."""
        rows = self._fetch(select(func.count()).select_from(self.chunks_table).where(self.chunks_table.c.quarantine_id == row_id))
        return int(next(iter(rows[0].values())))

    # --- writing -------------------------------------------------------------
    def delete(self, ids: Iterable[int]) -> int:
        """Delete these rows and their pieces; return how many rows there were."""
        ids = list(ids)
        if not ids:
            return 0
        return self._write(
            delete(self.chunks_table).where(self.chunks_table.c.quarantine_id.in_(ids)),
            delete(self.table).where(self.table.c.id.in_(ids)),
        )

    def purge(self, older_than: dt.datetime) -> int:
        """Delete every row stored before *older_than* and its pieces; return how many rows.

        ``PURGE_BATCH`` messages per transaction, in the order of their ids.  On PostgreSQL a
        row another transaction holds (a release recording itself) is left to
        the next purge.
        """
        cutoff = _utc(older_than)
        table = self.table

        def batch(connection: Connection) -> tuple[int, int]:
            query = select(table.c.id).where(table.c.time < cutoff).order_by(table.c.id).limit(PURGE_BATCH)
            if connection.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = [row[0] for row in connection.execute(query)]
            if not ids:
                return 0, 0
            connection.execute(delete(self.chunks_table).where(self.chunks_table.c.quarantine_id.in_(ids)))
            return len(ids), int(connection.execute(delete(table).where(table.c.id.in_(ids))).rowcount or 0)

        total = 0
        while True:
            found, deleted = self._transaction(batch)
            total += deleted
            if found < PURGE_BATCH:
                return total

    def claim(self, row_id: int, who: str, when: dt.datetime, force: bool) -> bool:
        """Mark the row released by *who* unless it already is (any host may try at once); True when claimed."""
        statement = update(self.table).where(self.table.c.id == row_id).values(released_at=when, released_by=who)
        if not force:
            statement = statement.where(self.table.c.released_at.is_(None))
        return self._write(statement) > 0

    def record_release(
        self, row_id: int, attempt: dict[str, Any], delivered: bool, claim: tuple[dt.datetime, str], previous: tuple[Any, Any], learned_ham: bool,
        keep_claim: bool | None = None,
    ) -> None:
        """Append *attempt* to the release history and count a delivery; when nothing went out, give
        the claim back: restore *previous* (``released_at``, ``released_by``) where the row still holds
        this release's *claim*, not where another release (a forced one, from any host) claimed it since.
        *keep_claim* (default: *delivered*) keeps it without counting a delivery: the outcome is unknown."""
        table = self.table
        row = table.c.id == row_id

        def work(connection: Connection) -> None:
            # This first write takes the row (the database, on SQLite) before the history is
            # read: two releases recording at once each keep the other's attempt.
            counted: dict[str, Any] = {"release_count": table.c.release_count + (1 if delivered else 0)}
            if learned_ham:
                counted["learned_ham"] = True
            connection.execute(update(table).where(row).values(**counted))
            history = connection.execute(select(table.c.release_result).where(row)).scalar()
            history = [*history, attempt] if isinstance(history, list) else [attempt]
            connection.execute(update(table).where(row).values(release_result=history))
            if not (delivered if keep_claim is None else keep_claim):
                ours = row & (table.c.released_at == claim[0]) & (table.c.released_by == claim[1])
                connection.execute(update(table).where(ours).values(released_at=previous[0], released_by=previous[1]))

        self._transaction(work)

    def mark_ham(self, message_log_id: int) -> None:
        """Mark the message's log row as a false positive (``released_as_ham``)."""
        messages = schema.messages
        self._write(update(messages).where(messages.c.id == message_log_id).values(released_as_ham=True))

    # --- plumbing ---------------------------------------------------------------
    def _fetch(self, query: Any) -> list[dict[str, Any]]:
        try:
            with self.engine.connect() as connection:
                return [dict(row._mapping) for row in connection.execute(query)]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the quarantine: {_db_error(exc)}") from None

    def _transaction(self, work: Callable[[Connection], T]) -> T:
        """*work* on a connection in one transaction (committed when it returns)."""
        try:
            with self.engine.begin() as connection:
                return work(connection)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot write the quarantine: {_db_error(exc)}") from None

    def _write(self, *statements: Any) -> int:
        """Run *statements* in one transaction; return the last one's row count."""
        try:
            with self.engine.begin() as connection:
                count = 0
                for statement in statements:
                    count = int(connection.execute(statement).rowcount or 0)
                return count
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot write the quarantine: {_db_error(exc)}") from None


def _db_error(exc: SQLAlchemyError) -> str:
    return f"{exc.__class__.__name__}: {getattr(exc, 'orig', None) or exc}"


def _utc(value: dt.datetime) -> dt.datetime:
    """*value* in UTC (a naive one taken as UTC): SQLite compares stored times as UTC text, whatever
    offset a parameter carries, so ``--since 2024-05-01T14:00+02:00`` must reach it as 12:00."""
    utc = as_utc(value)
    assert utc is not None
    return utc.astimezone(dt.timezone.utc)


def _fix(row: dict[str, Any]) -> QuarantineRow:
    for key in ("time", "released_at"):
        row[key] = as_utc(row.get(key))
    return row
