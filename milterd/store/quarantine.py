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

from sqlalchemy import Engine, delete, func, insert, null, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import SQLAlchemyError

from ..clock import as_utc, utcnow
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
#: Bytes of messages deleted per purge transaction, at most (one message larger than
#: this loses its pieces ``PURGE_CHUNKS`` at a time first): freeing 400 MB of pieces
#: held SQLite's write lock for 2 s, and 100 messages of 50 MB would outlast every
#: worker's busy timeout.
PURGE_BYTES = 16 * 1024 * 1024
PURGE_CHUNKS = PURGE_BYTES // CHUNK_SIZE
#: A message claimed by a release less than this long ago is left to a later purge:
#: the release may still be reading it from the store (a claim holds no lock).
RELEASE_GRACE = dt.timedelta(days=1)

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
    if connection.dialect.name == "sqlite":
        # SQLite's own choice, max(id) + 1, gives again the ids of the newest rows once they are gone.
        values["id"] = next_sqlite_id(connection)
    key = connection.execute(insert(schema.quarantine).values(**values)).inserted_primary_key
    assert key is not None
    row_id = int(key[0])
    stored = 0
    statement = insert(schema.quarantine_chunks)
    for index, piece in enumerate(pieces(item.chunks())):
        connection.execute(statement, {"quarantine_id": row_id, "chunk_ind": index, "data": piece})
        stored += len(piece)
    expected = values.get("size")
    if isinstance(expected, int) and stored < expected:
        # The spool gave back less than was received: committing would discard (or hold) the
        # message on a copy that lacks its end. The caller's transaction is rolled back, the
        # client told to retry (451).
        raise StoreError(f"cannot write the quarantine: {stored} bytes of the message read back, {expected} received")
    if stored != expected:
        connection.execute(update(schema.quarantine).where(schema.quarantine.c.id == row_id).values(size=stored))
    return row_id


def next_sqlite_id(connection: Connection) -> int:
    """A quarantine id never issued before, on a SQLite *connection*, in its transaction (the caller's,
    whose INSERT of the row must follow): one above both the highest id ever issued and max(id), recorded
    as the new highest (``quarantine_high_water``, schema 0007).

    The UPDATE comes first: it takes SQLite's write lock (if the transaction does not hold it yet), so
    no other writer allocates between it and the read; a rollback undoes the record with the row, whose
    id nobody saw.  max(id) counts as well: rows an older milterd wrote on this schema without recording
    them.  A missing record (deleted by hand) is made again, from max(id).

    Not used on PostgreSQL: its sequence never gives an id twice, and one row updated by every
    quarantined message would serialise the MX hosts' quarantine writes until each commits.
    """
    high, table = schema.quarantine_high_water, schema.quarantine
    highest = select(func.coalesce(func.max(table.c.id), 0)).scalar_subquery()
    # SQLite's max() of two arguments is the larger of them (the aggregate takes one).
    moved = connection.execute(update(high).where(high.c.singleton == 1).values(last_id=func.max(high.c.last_id, highest) + 1))
    if not moved.rowcount:
        connection.execute(insert(high).values(singleton=1, last_id=highest + 1))
    return int(connection.execute(select(high.c.last_id).where(high.c.singleton == 1)).scalar_one())


class QuarantineStore:
    """The quarantine tables of one store (see the module docstring)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.table = schema.quarantine
        self.chunks_table = schema.quarantine_chunks

    # --- reading --------------------------------------------------------------
    def _select(self) -> Any:
        """SELECT of every column of a row but the message itself (``raw``)."""
        return select(*[c for c in self.table.c if c.name != "raw"])

    def rows(
        self, since: dt.datetime | None = None, older_than: dt.datetime | None = None, sender: str | None = None, limit: int | None = None,
        below_id: int | None = None,
    ) -> list[QuarantineRow]:
        """Rows (without the message), newest first, filtered by time and whole sender (case-insensitive,
        as ``list --recipient``); the newest *limit* of them (in the SQL) unless None.

        *below_id* keeps the rows whose id is smaller: the next page of a caller that reads
        a period *limit* rows at a time (the last id of the page before)."""
        table = self.table
        query = self._select().order_by(table.c.id.desc())
        if below_id is not None:
            query = query.where(table.c.id < below_id)
        if since is not None:
            query = query.where(table.c.time >= _utc(since))
        if older_than is not None:
            query = query.where(table.c.time < _utc(older_than))
        if sender is not None:
            # Both sides by SQL's lower(): SQLite's folds only ASCII letters, and must fold both the same way.
            query = query.where(func.lower(table.c.sender) == func.lower(sender))
        if limit is not None:
            query = query.limit(limit)
        return [_fix(row) for row in self._fetch(query)]

    def reason_counts(
        self, since: dt.datetime | None = None, older_than: dt.datetime | None = None, limit: int | None = None,
    ) -> tuple[int, list[tuple[str, int]], int | None]:
        """How many rows the period holds, and how many of them per reason, most frequent first
        (``""`` for none); the *limit* most frequent reasons (in the SQL) unless None.

        Counted by the database, for the digest: a period of a spam wave (a hundred thousand
        rows, each reason holding its score) is never read row by row.  The third value is the
        largest id counted (None for none): the counts cover the rows up to it, so that a caller
        reads the same rows (``rows(below_id=that + 1)``), not one committed meanwhile."""
        table = self.table
        window = []
        if since is not None:
            window.append(table.c.time >= _utc(since))
        if older_than is not None:
            window.append(table.c.time < _utc(older_than))
        reason, count = table.c.reason, func.count()  # reason is NOT NULL ("" for none)
        try:
            with self.engine.connect() as connection:
                total, last = connection.execute(select(func.count(), func.max(table.c.id)).select_from(table).where(*window)).one()
                if last is None:
                    return 0, [], None
                # Up to the id counted: each statement sees its own snapshot (READ COMMITTED).
                grouped = select(reason, count).where(*window, table.c.id <= last).group_by(reason).order_by(count.desc(), reason)
                if limit is not None:
                    grouped = grouped.limit(limit)
                counts = [(str(text or ""), int(n)) for text, n in connection.execute(grouped)]
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot read the quarantine: {_db_error(exc)}") from None
        return int(total or 0), counts, int(last)

    def purge_candidates(self, older_than: dt.datetime, now: dt.datetime | None = None) -> list[QuarantineRow]:
        """The rows (without the message) :meth:`purge` would delete now, by the same condition (:func:`purgeable`), newest first."""
        table = self.table
        query = self._select().where(purgeable(table, older_than, now)).order_by(table.c.id.desc())
        return [_fix(row) for row in self._fetch(query)]

    def of_log_rows(self, message_log_ids: list[int]) -> dict[int, QuarantineRow]:
        """The rows (without the message) stored for these log rows, by log row id (the newest, if several)."""
        if not message_log_ids:
            return {}
        rows = self._fetch(self._select().where(self.table.c.message_log_id.in_(message_log_ids)).order_by(self.table.c.id))
        return {row["message_log_id"]: _fix(row) for row in rows}

    def get(self, row_id: int) -> QuarantineRow | None:
        """One row (without the message), or None."""
        rows = self._fetch(self._select().where(self.table.c.id == row_id))
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

    def purge(self, older_than: dt.datetime, now: dt.datetime | None = None) -> int:
        """Delete every row stored before *older_than* and its pieces; return how many rows.

        ``PURGE_BATCH`` messages (``PURGE_BYTES`` of them) per transaction, in the order of
        their ids.  A row claimed by a release in the last ``RELEASE_GRACE`` before *now* is
        left to a later purge (:func:`purgeable`), and so is, on PostgreSQL, a row another
        transaction holds (a release claiming or recording itself).
        """
        table, chunks = self.table, self.chunks_table
        condition = purgeable(table, older_than, now)

        def batch(connection: Connection) -> tuple[bool, int]:
            query = select(table.c.id, table.c.size).where(condition).order_by(table.c.id).limit(PURGE_BATCH)
            if connection.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            found = connection.execute(query).all()
            ids: list[int] = []
            size = 0
            for row_id, row_size in found:
                if ids and size + (row_size or 0) > PURGE_BYTES:
                    break
                ids.append(row_id)
                size += row_size or 0
            if not ids:
                return False, 0
            # Each statement checks the condition again: on SQLite the SELECT above took no
            # lock, and a release may have claimed one of these rows since.
            still = select(table.c.id).where(table.c.id.in_(ids), condition)
            if size > PURGE_BYTES:
                # One message larger than a transaction's share: its last pieces go first.
                count = int(connection.execute(select(func.count()).select_from(chunks).where(chunks.c.quarantine_id == ids[0])).scalar() or 0)
                if count > PURGE_CHUNKS:
                    connection.execute(delete(chunks).where(
                        chunks.c.quarantine_id.in_(still), chunks.c.quarantine_id == ids[0], chunks.c.chunk_ind >= count - PURGE_CHUNKS,
                    ))
                    return True, 0
            connection.execute(delete(chunks).where(chunks.c.quarantine_id.in_(still)))
            deleted = int(connection.execute(delete(table).where(table.c.id.in_(ids), condition)).rowcount or 0)
            return len(found) == PURGE_BATCH or len(ids) < len(found), deleted

        total = 0
        while True:
            more, deleted = self._transaction(batch)
            total += deleted
            if not more:
                return total

    def claim(self, row_id: int, who: str, when: dt.datetime, force: bool, previous: tuple[Any, Any] | None = None) -> bool:
        """Mark the row released by *who* unless it already is (any host may try at once); True when claimed.

        With *force*, the claim replaces the one in *previous* (``released_at``, ``released_by``
        as the caller read them), and only that one: False when another release claimed the row
        since, whose claim a failed forced release must not give back as *previous* (without
        *previous*, whatever is there).
        """
        table = self.table
        statement = update(table).where(table.c.id == row_id).values(released_at=when, released_by=who)
        if not force:
            statement = statement.where(table.c.released_at.is_(None))
        elif previous is not None:
            statement = statement.where(
                table.c.released_at.is_(None) if previous[0] is None else table.c.released_at == previous[0],
                table.c.released_by.is_(None) if previous[1] is None else table.c.released_by == previous[1],
            )
        return self._write(statement) > 0

    def record_release(
        self, row_id: int, attempt: dict[str, Any], delivered: bool, claim: tuple[dt.datetime, str], previous: tuple[Any, Any], learned_ham: bool,
        keep_claim: bool | None = None, bound: Callable[[list[Any]], list[Any]] | None = None,
    ) -> None:
        """Append *attempt* to the release history and count a delivery; when nothing went out, give
        the claim back: restore *previous* (``released_at``, ``released_by``) where the row still holds
        this release's *claim*, not where another release (a forced one, from any host) claimed it since.
        *keep_claim* (default: *delivered*) keeps it without counting a delivery: the outcome is unknown.
        *bound*, when given, shortens the history (with *attempt*) before it is written back."""
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
            if bound is not None:
                history = bound(history)
            connection.execute(update(table).where(row).values(release_result=history))
            if not (delivered if keep_claim is None else keep_claim):
                ours = row & (table.c.released_at == claim[0]) & (table.c.released_by == claim[1])
                connection.execute(update(table).where(ours).values(released_at=previous[0], released_by=previous[1]))

        self._transaction(work)

    def claim_notice(self, row_id: int, recipient: str) -> bool:
        """Record *recipient* of the row as sent its virus notice, before it is sent; True when claimed.

        False when the list holds *recipient* already (another digest, on any host, claimed it,
        even one that read the row before this one) or when the row is gone (purged).
        """

        def work(connection: Connection) -> bool:
            told = self._lock_notified(connection, row_id)
            if told is None or recipient in told:
                return False
            self._set_notified(connection, row_id, [*told, recipient])
            return True

        return self._transaction(work)

    def release_notice(self, row_id: int, recipient: str) -> None:
        """Give back the claim of :meth:`claim_notice` (its notice was not sent): a later digest tells *recipient*."""

        def work(connection: Connection) -> None:
            told = self._lock_notified(connection, row_id)
            if told is not None and recipient in told:
                self._set_notified(connection, row_id, [r for r in told if r != recipient])

        self._transaction(work)

    def _lock_notified(self, connection: Connection, row_id: int) -> list[str] | None:
        """The row's ``notified`` list ([] for none), the row taken first; None when there is no such row."""
        table = self.table
        row = table.c.id == row_id
        # This first write takes the row (the database, on SQLite) before the list is read: of
        # two digests claiming at once, the second waits, then reads the first one's claim.
        if not connection.execute(update(table).where(row).values(notified=table.c.notified)).rowcount:
            return None
        told = connection.execute(select(table.c.notified).where(row)).scalar()
        return list(told) if isinstance(told, list) else []

    def _set_notified(self, connection: Connection, row_id: int, told: list[str]) -> None:
        """Write the row's ``notified`` list, SQL NULL when empty (as a row no digest touched)."""
        table = self.table
        connection.execute(update(table).where(table.c.id == row_id).values(notified=told or null()))

    def mark_learned_ham(self, row_id: int) -> None:
        """Record that the message of *row_id* was taught as ham (``learned_ham``)."""
        self._write(update(self.table).where(self.table.c.id == row_id).values(learned_ham=True))

    def mark_ham(self, message_log_id: int) -> None:
        """Mark the message's log row as a false positive (``released_as_ham``)."""
        messages = schema.messages
        self._write(update(messages).where(messages.c.id == message_log_id).values(released_as_ham=True))

    def mark_spam(self, row_id: int, message_log_id: int | None) -> None:
        """Take back a ham verdict: the message of *row_id* was confirmed as spam (``learned_ham`` and its
        log row's ``released_as_ham`` cleared, in one transaction), so rule statistics no longer count it
        as a false positive."""
        messages = schema.messages
        statements: list[Any] = [update(self.table).where(self.table.c.id == row_id).values(learned_ham=False)]
        if message_log_id is not None:
            statements.append(update(messages).where(messages.c.id == message_log_id).values(released_as_ham=False))
        self._write(*statements)

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


def purgeable(table: Any, older_than: dt.datetime, now: dt.datetime | None = None) -> Any:
    """The SQL condition of a row a purge deletes: stored before *older_than*, and not claimed
    by a release within ``RELEASE_GRACE`` before *now* (which may still be reading it)."""
    claimed_before = _utc(now or utcnow()) - RELEASE_GRACE
    return (table.c.time < _utc(older_than)) & (table.c.released_at.is_(None) | (table.c.released_at < claimed_before))


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
