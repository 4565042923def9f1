"""The classifier's SQL: token counts, learned totals and learned-message digests.

:class:`LearnerStore` is the only code that reads or writes the
``learner_tokens``, ``learner_totals`` and ``learner_messages`` tables; what
the counts mean is decided by the pure functions of
:mod:`milterd.learner.classifier`.  Every database error leaves here as
:class:`~milterd.store.errors.StoreError`.

One store serves every worker and, on PostgreSQL, every MX host: what one
learns, all use.  Lookups are batched (``SELECT … WHERE token IN (…)`` in
chunks of :data:`CHUNK`).  Learning a message is one transaction: its digest
is claimed first (learning the same message twice counts once; learning it
with the other label moves its counts), then its tokens are counted with one
insert-or-update per token in a single executemany, so that workers and hosts
learning at once add up instead of overwriting each other.

Several learners (workers, MX hosts) write one PostgreSQL store at once, and two
transactions that lock rows they share in opposite orders deadlock: PostgreSQL
aborts one.  Every learn, move and forget therefore takes its rows in one order:
its digest's row (the only one it takes), its tokens' rows by token, the totals'
row last.  The token upsert inserts and updates in token order; a forget locks
its tokens' rows in token order (``SELECT … ORDER BY token FOR UPDATE``) before
its ``UPDATE … WHERE token IN (…)``, which would meet them in the order of its
scan; a move counts the new label before taking the old one away, so that the
tokens it creates (those expired since it was learned) come in their place, and
its decrement only changes rows it already holds.  Expiry never waits for a row
a learner holds, and emptying the model takes the three tables first
(:mod:`milterd.store.upsert`).  SQLite has one writer at a time and no row locks.

The digests are bounded (``[learner] max_learned``, :meth:`LearnerStore.drop_learned`):
beyond the bound the maintenance job deletes those learned (or moved) longest ago,
by their ``time``, and leaves every count as it is.  Their messages stay in the totals,
so it adds them, by label, to a second row of ``learner_totals`` (:data:`DROPPED_ID`),
which only it and emptying the model write: totals = digests + dropped, the
invariant :attr:`ModelSummary.inflated` checks.  A digest a learner holds (moving
or forgetting it) is skipped.  One that expiry takes first is gone when a learner
gets to it, as if expiry had run first: a forget finds nothing (``unknown``), a learn
claims it anew and counts again; a move that met the digest (its claim found it)
just before expiry deleted it finds nothing to move, and counts nothing (``already``).

The statements are built once (per dialect), and the token upsert is compiled
once per engine and handed to the driver's executemany with plain rows
(:class:`_TokenUpsert`): building each row's parameters in SQLAlchemy, and the
statements on every call, was half of a learn's CPU (``bench.learner_eval``).
"""

from __future__ import annotations

import datetime as dt
import time
import weakref
from array import array
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Literal, Sequence

from sqlalchemy import Engine, Integer, String, and_, bindparam, case, delete, func, make_url, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection
from sqlalchemy.exc import ArgumentError
from sqlalchemy.types import BigInteger

from ..clock import as_utc, utcnow
from ..learner.classifier import Counts
from . import unusable_database
from .engine import sqlite_file
from .errors import guarded
from .schema import learner_messages as messages_table
from .schema import learner_tokens as tokens_table
from .schema import learner_totals as totals_table
from .upsert import advisory_lock, deletable, dialect_insert, lock_tables

Label = Literal["spam", "ham"]

#: Tokens asked or changed per statement: well under SQLite's bound-parameter limit.
CHUNK = 500
#: Expired tokens deleted per transaction, and the pause between two (see :meth:`LearnerStore.expire`).
EXPIRE_BATCH = 5000
EXPIRE_PAUSE = 0.1

#: The ``learner_totals`` row (the totals' is 1) of the learned-message digests dropped beyond
#: ``[learner] max_learned``, by label: messages still counted, no longer recorded as learned.
DROPPED_ID = 2
#: The key of the PostgreSQL advisory lock that runs one host's expiry at a time ("milterd" and 2 in ASCII): two MX
#: hosts counting the table at once each deleted the excess over the bound, the model left at twice too little.
HOUSEKEEPING_LOCK = 0x6D696C7465726402


@dataclass(frozen=True)
class ModelSummary:
    """What the classifier's model holds (for ``milterd doctor``): messages learned, tokens, when learned."""

    spam: int
    ham: int
    tokens: int
    spam_messages: int  # learned-message digests kept, by label: always equal to spam and ham, unless the counts were inflated
    ham_messages: int
    oldest: dt.datetime | None  # the earliest learn (or label change) still recorded
    newest: dt.datetime | None
    spam_dropped: int = 0  # digests dropped beyond [learner] max_learned, by label: their messages are still counted
    ham_dropped: int = 0

    @property
    def messages(self) -> int:
        """Learned-message digests kept."""
        return self.spam_messages + self.ham_messages

    @property
    def inflated(self) -> bool:
        """Whether the totals exceed the messages recorded as learned.

        Every learn, move and forget changes a total and the digests together,
        and the digests dropped beyond ``[learner] max_learned`` are counted
        as dropped, so that the totals are the digests and the dropped ones;
        more counted than that means a message was
        counted twice, as relearning did on PostgreSQL before the fix of
        2026-12-02 (an INSERT's rowcount read as -1).  The token counts are
        inflated with the totals and cannot be repaired without the messages.
        """
        return self.spam > self.spam_messages + self.spam_dropped or self.ham > self.ham_messages + self.ham_dropped


#: The one row of learned totals.
_TOTALS = select(totals_table.c.spam, totals_table.c.ham).where(totals_table.c.id == 1)
#: The row of the digests dropped (none before the first is).
_DROPPED = select(totals_table.c.spam, totals_table.c.ham).where(totals_table.c.id == DROPPED_ID)


def model_may_exist(url: str) -> bool:
    """Whether a classifier model can be read at *url* without creating anything:
    False for an SQLite file that does not exist (opening it would create it).
    StoreError, as opening the store says it, for a URL that does not parse or a file that cannot be looked at."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError) as exc:  # ValueError: int() of a port ("postgresql://[::1/db")
        raise unusable_database(url, exc) from exc
    if parsed.get_backend_name() != "sqlite":
        return True
    file = sqlite_file(parsed)  # "~" expanded as the store reads it; None in memory
    try:
        return file is not None and file.exists()
    except OSError as exc:  # its name too long
        raise unusable_database(url, exc.strerror or exc) from exc


def day_number(when: dt.datetime) -> int:
    """Days since the epoch (the ``atime`` of tokens)."""
    return int(when.timestamp() // 86400)


def _chunks(values: Sequence[int]) -> Iterable[Sequence[int]]:
    for start in range(0, len(values), CHUNK):
        yield values[start:start + CHUNK]


def _learned_by_label(connection: Connection) -> dict[str, int]:
    """How many learned-message digests each label has."""
    rows = connection.execute(select(messages_table.c.label, func.count()).group_by(messages_table.c.label))
    return {str(label): int(count) for label, count in rows}


def _model_summary(totals: Any, tokens: int | None, by_label: dict[str, int], oldest: dt.datetime | None, newest: dt.datetime | None, dropped: Any = None) -> ModelSummary:
    """A :class:`ModelSummary` of what was read: the totals row (None before any learn), the token count, the digests
    by label and the row of those dropped (None before any is)."""
    return ModelSummary(int(totals.spam) if totals else 0, int(totals.ham) if totals else 0, int(tokens or 0),
                        by_label.get("spam", 0), by_label.get("ham", 0), oldest, newest,
                        int(dropped.spam) if dropped else 0, int(dropped.ham) if dropped else 0)


# What learn runs, built once: the values are bound parameters, given at execution.
# Forgetting and moving name the label they change: the row is locked and its label checked by the
# statement itself, so that of two learners forgetting or moving one message at once (PostgreSQL's
# READ COMMITTED, or SQLite's read before the write lock) only one moves the counts.
_PREVIOUS = bindparam("previous", type_=String)
_FORGET = delete(messages_table).where(messages_table.c.digest == bindparam("key"), messages_table.c.label == _PREVIOUS)
_RELABEL = update(messages_table).where(messages_table.c.digest == bindparam("key"), messages_table.c.label == _PREVIOUS)  # SET label, time: the columns given
_DECREMENT = {
    column.name: update(tokens_table).where(tokens_table.c.token.in_(bindparam("tokens", expanding=True))).values({column.name: case((column > 0, column - 1), else_=0)})
    for column in (tokens_table.c.spam, tokens_table.c.ham)
}
#: The existing rows of a chunk of tokens, locked in token order (SQLite: no FOR UPDATE, nothing to lock).
_LOCK_TOKENS = select(tokens_table.c.token).where(tokens_table.c.token.in_(bindparam("tokens", expanding=True))).order_by(tokens_table.c.token).with_for_update()
_SPAM_DELTA, _HAM_DELTA = bindparam("spam_delta", type_=Integer), bindparam("ham_delta", type_=Integer)


def _totals_added() -> dict[str, Any]:
    """The totals plus the bound deltas, never below 0 (the SET of updating the totals row)."""
    return {"spam": case((totals_table.c.spam + _SPAM_DELTA < 0, 0), else_=totals_table.c.spam + _SPAM_DELTA),
            "ham": case((totals_table.c.ham + _HAM_DELTA < 0, 0), else_=totals_table.c.ham + _HAM_DELTA)}


_ADD_TOTALS = update(totals_table).where(totals_table.c.id == 1).values(_totals_added())


#: The order of the upsert's parameters, as _TokenUpsert's rows give them.
_UPSERT_KEYS = ["token", "spam", "ham", "atime"]


def _counted(upsert: Any) -> Any:
    """*upsert* (an INSERT of tokens) adding its counts to the tokens already there and setting their day."""
    return upsert.on_conflict_do_update(
        index_elements=[tokens_table.c.token],
        set_={
            "spam": tokens_table.c.spam + upsert.excluded.spam,
            "ham": tokens_table.c.ham + upsert.excluded.ham,
            "atime": upsert.excluded.atime,
        },
    )


class _Inserts:
    """One dialect's ON CONFLICT statements of learn (the digest's claim, the totals' first row, the token upsert)."""

    def __init__(self, insert: Any, dialect: str) -> None:
        # An INSERT's rowcount is read after its psycopg cursor is closed (-1) unless kept: without
        # this, a claim that met the digest counted on PostgreSQL as new (relearning counted twice).
        self.claim = insert(messages_table).on_conflict_do_nothing(index_elements=[messages_table.c.digest]).execution_options(preserve_rowcount=True)
        # The totals row made by another learner since the UPDATE found none (PostgreSQL): add to it.
        first = insert(totals_table)
        self.first_totals = first.on_conflict_do_update(index_elements=[totals_table.c.id], set_=_totals_added())
        self.upsert = _counted(insert(tokens_table))
        # PostgreSQL: a chunk's tokens as one array, one statement (psycopg's executemany sends, and
        # spends Python on, a statement per token); ORDER BY keeps the rows locked in token order.
        self.upsert_array: Any = None
        if dialect == "postgresql":
            token = func.unnest(bindparam("tokens", type_=ARRAY(BigInteger))).column_valued("token")
            rows = select(token, bindparam("spam", type_=Integer), bindparam("ham", type_=Integer), bindparam("atime", type_=Integer)).order_by(token)
            self.upsert_array = _counted(insert(tokens_table).from_select(_UPSERT_KEYS, rows))


_INSERTS: dict[str, _Inserts] = {}


def _inserts(connection: Connection) -> _Inserts:
    """*connection*'s dialect's statements (StoreError on a database other than SQLite or PostgreSQL)."""
    insert = dialect_insert(connection, "the classifier")
    name = connection.dialect.name
    found = _INSERTS.get(name)
    if found is None:
        found = _INSERTS[name] = _Inserts(insert, name)
    return found


class _TokenUpsert:
    """The token upsert compiled once for an engine, as the log row's ``_LogInsert`` in
    :mod:`milterd.store`: SQLAlchemy's own SQL, run with ``exec_driver_sql`` on the
    transaction's connection, so the rows go to the driver's executemany as they are
    (the columns are integers: no bind processor would change them), or on PostgreSQL
    as one array per chunk.  SQLAlchemy's error wrapping, disconnect handling and
    transaction are kept.
    """

    def __init__(self, engine: Engine, inserts: _Inserts) -> None:
        dialect = engine.dialect
        self.positional = bool(dialect.positional)
        self.array: Any = None  # the bind processor of the tokens' array, where they go as one
        self.array_order: list[str] | None = None
        if inserts.upsert_array is not None:
            compiled = inserts.upsert_array.compile(dialect=dialect)
            self.sql = compiled.string
            self.array_order = list(compiled.positiontup or ()) if self.positional else None
            if sorted(compiled.binds) != ["atime", "ham", "spam", "tokens"] or (self.array_order is not None and sorted(self.array_order) != sorted(compiled.binds)):
                raise ValueError(f"unexpected bind parameters {list(compiled.binds)}")
            self.array = compiled.binds["tokens"].type.dialect_impl(dialect).bind_processor(dialect) or list
            return
        compiled = inserts.upsert.compile(dialect=dialect, column_keys=_UPSERT_KEYS)
        names = list(compiled.positiontup or ()) if dialect.positional else list(compiled.binds)
        if sorted(names) != sorted(_UPSERT_KEYS) or (dialect.positional and names != _UPSERT_KEYS):
            raise ValueError(f"unexpected bind parameters {names}")
        for name in names:
            if tokens_table.c[name].type.dialect_impl(dialect).bind_processor(dialect) is not None:
                raise ValueError(f"the {name} column would need its bind processor")
        self.sql = compiled.string

    def run(self, connection: Connection, tokens: Sequence[int], spam: int, ham: int, day: int) -> None:
        """Add (*spam*, *ham*) to each of *tokens* (distinct, in the order they are to be locked) and set their day."""
        if self.array is not None:
            for start in range(0, len(tokens), CHUNK):
                values = {"tokens": self.array(list(tokens[start:start + CHUNK])), "spam": spam, "ham": ham, "atime": day}
                connection.exec_driver_sql(self.sql, values if self.array_order is None else tuple(values[name] for name in self.array_order))
            return
        if self.positional:
            rows: list[Any] = [(token, spam, ham, day) for token in tokens]
        else:
            rows = [{"token": token, "spam": spam, "ham": ham, "atime": day} for token in tokens]
        for start in range(0, len(rows), CHUNK):
            connection.exec_driver_sql(self.sql, rows[start:start + CHUNK])


#: Each engine's compiled upsert (LearnerStore is made per use in places: the cache is the engine's).
_UPSERTS: "weakref.WeakKeyDictionary[Engine, _TokenUpsert]" = weakref.WeakKeyDictionary()


def _token_upsert(engine: Engine, inserts: _Inserts) -> _TokenUpsert:
    found = _UPSERTS.get(engine)
    if found is None:
        found = _UPSERTS[engine] = _TokenUpsert(engine, inserts)
    return found


class _TokenLookup:
    """The batched lookup ``SELECT token, spam, ham … WHERE token IN (…)`` compiled once for an
    engine, run with ``exec_driver_sql`` as :class:`_TokenUpsert` (SQLAlchemy coerced every token
    into a literal and expanded the IN list on each call before).  Its SQL is kept for IN lists
    of 1, 2, 4 … 256 and CHUNK values (a dozen texts), the list padded with its last token."""

    def __init__(self, engine: Engine) -> None:
        dialect = engine.dialect
        query = select(tokens_table.c.token, tokens_table.c.spam, tokens_table.c.ham).where(tokens_table.c.token.in_(bindparam("tokens", expanding=True)))
        if tokens_table.c.token.type.dialect_impl(dialect).bind_processor(dialect) is not None:
            raise ValueError("the token column would need its bind processor")
        self.compiled = query.compile(dialect=dialect)
        self.positional = bool(dialect.positional)
        self.by_size: dict[int, tuple[str, list[str]]] = {}

    def sql(self, size: int) -> tuple[str, list[str]]:
        """The SQL asking for *size* tokens (1, 2, 4 … or CHUNK) and its parameters' names in order."""
        found = self.by_size.get(size)
        if found is None:
            state = self.compiled.construct_expanded_state({"tokens": list(range(size))})
            found = self.by_size[size] = (state.statement, list(state.parameters))
            if self.positional and list(state.positiontup or ()) != found[1]:
                raise ValueError(f"unexpected bind parameters {state.positiontup}")
        return found

    def run(self, connection: Connection, tokens: Sequence[int], found: dict[int, Counts]) -> None:
        """Add the stored counts of *tokens* (distinct, at most CHUNK) to *found*."""
        asked = list(tokens)
        size = min(CHUNK, 1 << (len(asked) - 1).bit_length())
        asked += asked[-1:] * (size - len(asked))  # a token asked again changes nothing an IN list finds
        sql, names = self.sql(size)
        parameters: Any = tuple(asked) if self.positional else dict(zip(names, asked, strict=True))
        for token, spam, ham in connection.exec_driver_sql(sql, parameters):
            found[int(token)] = Counts(int(spam), int(ham))


_LOOKUPS: "weakref.WeakKeyDictionary[Engine, _TokenLookup]" = weakref.WeakKeyDictionary()


def _token_lookup(engine: Engine) -> _TokenLookup:
    found = _LOOKUPS.get(engine)
    if found is None:
        found = _LOOKUPS[engine] = _TokenLookup(engine)
    return found


class LearnerStore:
    """The classifier's tables of one store (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- reading ----------------------------------------------------------
    def totals(self) -> Counts:
        """How many spam and ham messages are learned."""

        def read() -> Counts:
            with self.engine.connect() as connection:
                row = connection.execute(_TOTALS).first()
            return Counts(int(row.spam), int(row.ham)) if row is not None else Counts()

        return guarded("read the classifier's totals", read)

    def counts(self, tokens: Sequence[int]) -> dict[int, Counts]:
        """The learned counts of *tokens* (those never learned are absent), asked in chunks."""

        def read() -> dict[int, Counts]:
            found: dict[int, Counts] = {}
            lookup = _token_lookup(self.engine)
            with self.engine.connect() as connection:
                for chunk in _chunks(list(dict.fromkeys(tokens))):
                    lookup.run(connection, chunk, found)
            return found

        return guarded("read the classifier's tokens", read)

    def label(self, digest: str) -> Label | None:
        """How the message with *digest* was learned, or None."""

        def read() -> Label | None:
            with self.engine.connect() as connection:
                value = connection.execute(select(messages_table.c.label).where(messages_table.c.digest == digest)).scalar()
            return "spam" if value == "spam" else "ham" if value == "ham" else None

        return guarded("read the learned messages", read)

    def size(self) -> int:
        """How many tokens the model holds."""

        def read() -> int:
            with self.engine.connect() as connection:
                return int(connection.execute(select(func.count()).select_from(tokens_table)).scalar() or 0)

        return guarded("count the classifier's tokens", read)

    def summary(self) -> ModelSummary:
        """Totals, token count and the oldest and newest learned message, read in one connection."""

        def read() -> ModelSummary:
            with self.engine.connect() as connection:
                # The totals before the digests: a learn committed in between (workers auto-learn at any time)
                # then shows more digests than totals, never the inflated state (a concurrent forget could).
                totals = connection.execute(_TOTALS).first()
                tokens = connection.execute(select(func.count()).select_from(tokens_table)).scalar()
                row = connection.execute(select(func.min(messages_table.c.time), func.max(messages_table.c.time))).one()
                by_label = _learned_by_label(connection)
                # The dropped after the digests: digests dropped in between then show twice, never as inflated counts.
                dropped = connection.execute(_DROPPED).first()
            return _model_summary(totals, tokens, by_label, as_utc(row[0]), as_utc(row[1]), dropped)

        return guarded("summarise the classifier's model", read)

    # --- learning ---------------------------------------------------------
    def learn(self, digest: str, tokens: Sequence[int], label: Label | None, now: dt.datetime | None = None, move: bool = True) -> str:
        """Learn (or, with *label* None, forget) one message, in one transaction.

        Returns what happened: ``learned``, ``already`` (learned with this label
        before: nothing counted), ``moved`` (learned with the other label: its
        counts moved), ``forgotten`` or ``unknown`` (forgetting a message never learned).
        With *move* False (auto-learning) a message learned with either label is left
        as it is, ``already``: a label an administrator gave is never overridden.
        """
        when = now or utcnow()
        # Sorted: concurrent learners (workers, MX hosts) lock the rows they share in the same order, never in a deadlock.
        distinct = sorted(set(tokens))

        def work() -> str:
            with self.engine.begin() as connection:
                inserts = _inserts(connection)
                previous: str | None = None
                if label is None:
                    previous = next((old for old in ("spam", "ham") if connection.execute(_FORGET, {"key": digest, "previous": old}).rowcount), None)
                    if previous is None:
                        return "unknown"
                elif connection.execute(inserts.claim, {"digest": digest, "label": label, "time": when}).rowcount == 0:
                    if not move:
                        return "already"
                    previous = "ham" if label == "spam" else "spam"
                    if not connection.execute(_RELABEL, {"key": digest, "previous": previous, "label": label, "time": when}).rowcount:
                        # Learned again with its label: its time is renewed, so that the digest bound (max_learned,
                        # oldest first) keeps what an administrator keeps teaching (a nightly learn of a Junk folder).
                        connection.execute(_RELABEL, {"key": digest, "previous": label, "label": label, "time": when})
                        return "already"
                # A move counts the new label first: the upsert takes (and makes) the rows in token
                # order, and the decrement then changes only rows this transaction holds.  The two
                # change different columns, and a row the upsert makes has 0 in the other: the counts
                # are those of decrementing first.
                if label is not None and distinct:
                    spam, ham = (1, 0) if label == "spam" else (0, 1)
                    _token_upsert(self.engine, inserts).run(connection, distinct, spam, ham, day_number(when))
                if previous in ("spam", "ham"):
                    self._decrement(connection, distinct, previous)
                self._add_totals(connection, inserts, previous if previous in ("spam", "ham") else None, label)
                return "forgotten" if label is None else "moved" if previous in ("spam", "ham") else "learned"

        return guarded("learn a message", work)

    @staticmethod
    def _decrement(connection: Connection, tokens: Sequence[int], label: str) -> None:
        """Take one from *label*'s count of *tokens* (sorted), never below 0.

        An ``UPDATE … WHERE token IN (…)`` locks rows in the order of its scan (the
        table's order, for a sequential or bitmap scan), not the list's: the rows are
        locked in token order first, and the update changes those rows only (a row
        another learner made since is no row of this message's)."""
        statement = _DECREMENT["spam" if label == "spam" else "ham"]
        for chunk in _chunks(tokens):
            locked = [int(token) for token in connection.execute(_LOCK_TOKENS, {"tokens": list(chunk)}).scalars()]
            if locked:
                connection.execute(statement, {"tokens": locked})

    @staticmethod
    def _add_totals(connection: Connection, inserts: _Inserts, removed: str | None, added: str | None) -> None:
        spam = (1 if added == "spam" else 0) - (1 if removed == "spam" else 0)
        ham = (1 if added == "ham" else 0) - (1 if removed == "ham" else 0)
        if not spam and not ham:
            return
        deltas = {"spam_delta": spam, "ham_delta": ham}
        if not connection.execute(_ADD_TOTALS, deltas).rowcount:
            connection.execute(inserts.first_totals, {"id": 1, "spam": max(spam, 0), "ham": max(ham, 0), **deltas})

    def clear(self) -> ModelSummary:
        """Empty the model (token counts, totals and learned-message digests) in one transaction;
        returns what it held.  Workers see the empty model within ``[learner] cache_ttl``."""

        def work() -> ModelSummary:
            with self.engine.begin() as connection:
                # PostgreSQL: the learners at work finish, the next ones wait (the tables in the order a learn takes them).
                lock_tables(connection, messages_table, tokens_table, totals_table)
                totals = connection.execute(_TOTALS).first()
                by_label = _learned_by_label(connection)
                tokens = connection.execute(delete(tokens_table)).rowcount
                connection.execute(delete(totals_table))
                connection.execute(delete(messages_table))
            return _model_summary(totals, tokens, by_label, None, None)

        return guarded("empty the classifier's model", work)

    # --- housekeeping -----------------------------------------------------
    def expire(self, older_than: dt.datetime, rare: int, max_tokens: int) -> int:
        """Delete tokens learned last before *older_than* and seen at most *rare* times,
        and tokens with no count left; then, beyond *max_tokens*, the least recently
        learned.  Returns how many were deleted.  On PostgreSQL the tokens a learner holds
        at that moment are left to the next expiry (it is counting them, or taking them
        away: in use, or soon due again).

        Each goes :data:`EXPIRE_BATCH` per transaction, :data:`EXPIRE_PAUSE` seconds
        apart: millions due at once (a corpus learned *token_expiry* ago, or *max_tokens*
        lowered) held SQLite's write lock past busy_timeout, and the mail's log rows were
        tempfailed meanwhile."""
        table = tokens_table
        day = day_number(older_than)
        token = table.c.token

        def batch(condition: Any) -> int:
            with self.engine.begin() as connection:
                due = select(token).where(condition).limit(EXPIRE_BATCH)
                if connection.dialect.name == "postgresql":  # as deletable(): never wait for a token a learner holds
                    due = due.with_for_update(skip_locked=True)
                return int(connection.execute(delete(table).where(token.in_(due))).rowcount or 0)

        def drained(condition: Any) -> int:
            deleted = done = batch(condition)
            while done >= EXPIRE_BATCH:
                time.sleep(EXPIRE_PAUSE)
                done = batch(condition)
                deleted += done
            return deleted

        def work() -> int:
            deleted = drained(table.c.spam + table.c.ham == 0)
            deleted += drained(and_(table.c.atime < day, table.c.spam + table.c.ham <= rare))
            if not max_tokens:
                return deleted
            due = array("q")
            with self.engine.begin() as connection:
                advisory_lock(connection, HOUSEKEEPING_LOCK)  # after another host's expiry: this one counts what it left
                total = int(connection.execute(select(func.count()).select_from(table)).scalar() or 0)
                if total <= max_tokens:
                    return deleted
                excess = select(token, table.c.atime).order_by(table.c.atime, table.c.spam + table.c.ham, token).limit(total - max_tokens)
                latest = 0
                for key, atime in connection.execute(excess):
                    due.append(key)
                    latest = atime
            # Chosen in one read (8 bytes a token), deleted EXPIRE_BATCH at a time as above (one DELETE of a million
            # held SQLite's write lock past busy_timeout, and PostgreSQL's learners waited for those rows as long).
            # Another host's expiry meanwhile chooses the same least recently learned tokens, not as many more.  A
            # token learned again since it was chosen stays when that is a later day than the newest chosen; one
            # learned again the same day may go, as with one DELETE (a row-value IN, which would tell, made each
            # PostgreSQL batch 30 times slower: a filter of 5,000 ORs over every row it scans).
            for start in range(0, len(due), EXPIRE_BATCH):
                if start:
                    time.sleep(EXPIRE_PAUSE)
                chosen = token.in_(due[start:start + EXPIRE_BATCH].tolist()) & (table.c.atime <= latest)
                with self.engine.begin() as connection:
                    deleted += int(connection.execute(delete(table).where(deletable(connection, token, chosen))).rowcount or 0)
            return deleted

        return guarded("expire the classifier's tokens", work)

    def drop_learned(self, max_learned: int) -> int:
        """Delete the learned-message digests beyond *max_learned* (0: no bound), those learned
        or moved longest ago first; returns how many were deleted.

        The token counts and totals stay: the messages are still learned, but one learned
        again counts again, and can no longer be forgotten or moved.  The digests dropped
        are added, by label, to the :data:`DROPPED_ID` row.  On PostgreSQL the digests a
        learner holds at that moment (moving or forgetting them) are left to the next run.
        """
        if not max_learned:
            return 0
        table = messages_table

        def work() -> int:
            with self.engine.begin() as connection:
                advisory_lock(connection, HOUSEKEEPING_LOCK)  # after another host's expiry: this one counts what it left
                inserts = _inserts(connection)
                total = int(connection.execute(select(func.count()).select_from(table)).scalar() or 0)
                if total <= max_learned:
                    return 0
                # No index on time: one sort of the table per run (the maintenance job's interval), not one per learn.
                oldest = select(table.c.digest).order_by(table.c.time, table.c.digest).limit(total - max_learned).scalar_subquery()
                statement = delete(table).where(deletable(connection, table.c.digest, table.c.digest.in_(oldest))).returning(table.c.label)
                dropped = Counter(str(label) for label in connection.execute(statement).scalars())
                spam, ham = dropped["spam"], dropped["ham"]
                if spam or ham:
                    # The row no learner takes: after the digests' rows, as a learn takes its totals after its digest.
                    connection.execute(inserts.first_totals, {"id": DROPPED_ID, "spam": spam, "ham": ham, "spam_delta": spam, "ham_delta": ham})
                return sum(dropped.values())

        return guarded("drop the classifier's learned-message digests", work)


