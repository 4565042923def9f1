"""The greylist's SQL: triplets, client networks and the stored whitelist.

:class:`GreylistStore` is the only code that reads or writes the
``greylist``, ``greylist_clients`` and ``greylist_whitelist`` tables; what a
triplet's state means is decided by the pure functions of
:mod:`milterd.greylist`.  Every database error leaves here as
:class:`~milterd.store.StoreError`.

The check reads at RCPT (an indexed SELECT, never the writer's lock) and hands
the writes of a whole message to :meth:`GreylistStore.record`, which applies
them in one transaction: a message with 1,000 new triplets takes SQLite's
single writer once, not a thousand times.  Each write is an insert-or-update
on the triplet's unique key, so concurrent first attempts from several workers
or MX hosts end up on one row and none of them fails.

On PostgreSQL two transactions that lock rows they share in opposite orders
deadlock, and one of them fails.  A message's writes take their rows in one
order: its triplets by key, whatever the kind of each write (a triplet one
message writes as ``new`` another may write as ``early``), then its client
networks' rows by network.  The purge never waits for a row a message holds,
and removing triplets takes the table first (:mod:`milterd.store.upsert`).

Several MX hosts sharing a PostgreSQL store compare times that other hosts
wrote: every "now" here and in the check is the database server's time
(:meth:`GreylistStore.now`: the local clock plus the offset of the server's,
measured once a minute per process), never each host's own clock.  On SQLite
(one host) it is the local clock, and nothing is asked.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import weakref
from typing import Any, Iterable, Sequence

from sqlalchemy import Engine, and_, case, delete, func, select, update

from ..clock import ClockReading, DatabaseClock, as_utc, utcnow
from ..greylist import CLIENT_COUNT_INTERVAL, RENEW_INTERVAL, Kind, State, Triplet, Whitelist, Write, compile_pattern, entry_value
from . import schema
from .errors import guarded
from .upsert import deletable, dialect_insert, lock_tables

#: Recipients asked per SELECT … IN (…): well under SQLite's bound-parameter limit.
CHUNK = 500

#: Expired triplets deleted per transaction by :meth:`GreylistStore.purge`, and the pause
#: between two: the writer (SQLite's only one; on PostgreSQL the rows a message's upsert
#: waits for) is held for one batch at a time, not for a whole backlog of botnet triplets.
PURGE_BATCH = 5000
PURGE_PAUSE = 0.1

#: The order in which :meth:`GreylistStore.record` applies writes of different kinds to one triplet.
KIND_ORDER: tuple[Kind, ...] = ("new", "early", "expired", "pass", "known")


def _aware(value: dt.datetime | None) -> dt.datetime:
    result = as_utc(value)
    assert result is not None  # NOT NULL columns
    return result


def _state(row: Any) -> State:
    return State(
        first_seen=_aware(row.first_seen),
        last_seen=_aware(row.last_seen),
        passed_at=as_utc(row.passed_at),
        expires_at=_aware(row.expires_at),
        attempts=int(row.attempts),
        passes=int(row.passes),
    )


#: The clock of each engine's database (one per process: the workers open their own store).
_CLOCKS: "weakref.WeakKeyDictionary[Engine, DatabaseClock]" = weakref.WeakKeyDictionary()
_CLOCKS_LOCK = threading.Lock()


def _clock(engine: Engine) -> DatabaseClock:
    """*engine*'s :class:`DatabaseClock`, made at first use (it holds the engine weakly)."""
    with _CLOCKS_LOCK:
        clock = _CLOCKS.get(engine)
        if clock is None:
            ref = weakref.ref(engine)
            name = f"the database server {engine.url.host}" if engine.url.host else "the database server"
            clock = _CLOCKS[engine] = DatabaseClock(lambda: _read_clock(ref()), name=name)
    return clock


def _read_clock(engine: Engine | None) -> ClockReading | None:
    return GreylistStore(engine).read_clock() if engine is not None else None


#: A triplet filter's client networks: one, several (any of them), or None for all.
Networks = str | Sequence[str] | None


def _stored_forms(kind: str, value: str) -> set[str]:
    """The forms an entry may be stored in: :func:`~milterd.greylist.entry_value`'s, and the lower-cased text an
    older version stored (angle brackets, U-labels), so that either is found to remove."""
    value = value.strip()
    return {entry_value(kind, value), value if value.startswith("/") else value.lower()}


class GreylistStore:
    """The greylist tables of one store (SQLite or PostgreSQL)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    # --- the clock every host compares by ----------------------------------------
    def now(self) -> dt.datetime:
        """The time greylisting compares and writes: on PostgreSQL the database
        server's (this host's clock plus the offset measured at most once a minute,
        the last one kept when the server does not answer), on SQLite this host's."""
        return _clock(self.engine).now()

    def clock_offset(self) -> dt.timedelta:
        """The offset :meth:`now` applies (the database's time minus this host's; 0 on SQLite)."""
        return _clock(self.engine).offset

    def read_clock(self) -> ClockReading | None:
        """Read the database server's clock (``clock_timestamp()``) between two readings
        of this host's; None on SQLite, whose clock is this host's (nothing is asked).
        StoreError when the server does not answer."""
        if self.engine.dialect.name != "postgresql":
            return None

        def read() -> ClockReading:
            with self.engine.connect() as connection:  # the pool's checkout (and ping) before the timing
                before = utcnow()
                database = connection.execute(select(func.clock_timestamp())).scalar_one()
                after = utcnow()
            return ClockReading(before, _aware(database).astimezone(dt.timezone.utc), after)

        return guarded("read the database's clock", read)

    # --- triplets: the decision at RCPT and its writes ------------------------
    def state(self, triplet: Triplet) -> State | None:
        """The stored state of one triplet (None: never seen)."""
        table = schema.greylist
        query = select(table).where(
            table.c.network == triplet.network, table.c.sender == triplet.sender, table.c.recipient == triplet.recipient
        )

        def read() -> State | None:
            with self.engine.connect() as connection:
                row = connection.execute(query).first()
            return _state(row) if row is not None else None

        return guarded("read the greylist", read)

    def states(self, network: str, sender: str, recipients: Iterable[str] | None = None, limit: int | None = None) -> dict[str, State] | None:
        """The stored states of (*network*, *sender*)'s triplets, by recipient.

        With *recipients*, only theirs (asked in chunks of :data:`CHUNK`).
        Without, every such triplet, or None when there are more than *limit*
        (the caller then asks recipient by recipient).
        """
        table = schema.greylist
        columns = (table.c.recipient, table.c.first_seen, table.c.last_seen, table.c.passed_at, table.c.expires_at, table.c.attempts, table.c.passes)
        base = select(*columns).where(table.c.network == network, table.c.sender == sender)

        def read() -> dict[str, State] | None:
            found: dict[str, State] = {}
            with self.engine.connect() as connection:
                if recipients is None:
                    query = base if limit is None else base.limit(limit + 1)
                    rows = connection.execute(query).all()
                    if limit is not None and len(rows) > limit:
                        return None
                    found.update((row.recipient, _state(row)) for row in rows)
                    return found
                wanted = list(dict.fromkeys(recipients))
                for start in range(0, len(wanted), CHUNK):
                    chunk = wanted[start:start + CHUNK]
                    for row in connection.execute(base.where(table.c.recipient.in_(chunk))):
                        found[row.recipient] = _state(row)
            return found

        return guarded("read the greylist", read)

    def record(self, writes: Sequence[Write], touch_clients: Iterable[str] = (), now: dt.datetime | None = None) -> None:
        """Apply the writes of one message (and keep auto-whitelisted *touch_clients*
        from expiring) in ONE transaction.

        Each write is an insert-or-update on the triplet's key: the insert is
        what the row would be had nobody else seen the triplet, the update what
        the attempt changes in a row somebody else created or changed meanwhile.
        Consecutive writes of the same kind go in one executemany.  A client network whose
        writes ``count_client`` gains one successful retry, whatever their number,
        unless it last counted less than :data:`CLIENT_COUNT_INTERVAL` before.
        """
        touch = sorted(set(touch_clients))
        if not writes and not touch:
            return
        now = now or self.now()
        # Every row in key order, the triplets' (by key, not by kind: a kind is one message's
        # view of a triplet) and then the networks': two messages lock the rows they share in
        # the same order (no deadlock on PostgreSQL).  Runs of one kind go in one statement.
        runs: list[tuple[Kind, list[dict[str, Any]]]] = []
        for write in sorted(writes, key=lambda w: (w.triplet.network, w.triplet.sender, w.triplet.recipient, KIND_ORDER.index(w.kind))):
            if not runs or runs[-1][0] != write.kind:
                runs.append((write.kind, []))
            runs[-1][1].append(_insert_values(write))
        counted: dict[str, Write] = {}  # the latest counting write of each network
        for write in writes:
            if write.count_client and (write.triplet.network not in counted or write.at > counted[write.triplet.network].at):
                counted[write.triplet.network] = write
        networks = sorted(set(counted) | set(touch))
        renewed = now - dt.timedelta(seconds=RENEW_INTERVAL)

        def apply() -> None:
            with self.engine.begin() as connection:
                insert = dialect_insert(connection, "greylisting")
                table = schema.greylist
                statements: dict[Kind, Any] = {}
                for kind, rows in runs:
                    if kind not in statements:
                        statement = insert(table)
                        statements[kind] = statement.on_conflict_do_update(
                            index_elements=[table.c.network, table.c.sender, table.c.recipient],
                            set_=_conflict_update(kind, table, statement.excluded),
                        )
                    connection.execute(statements[kind], rows)
                clients = schema.greylist_clients
                for network in networks:
                    if network in counted:
                        connection.execute(_count_client(insert, network, counted[network]))
                    if network in touch:
                        connection.execute(update(clients).where(clients.c.network == network, clients.c.last_seen < renewed).values(last_seen=now))

        guarded("write the greylist", apply)

    # --- client networks (auto whitelist) ---------------------------------------
    def client_state(self, network: str) -> tuple[int, dt.datetime | None]:
        """The passes and last use of a client network (0, None when unknown)."""
        table = schema.greylist_clients

        def read() -> tuple[int, dt.datetime | None]:
            with self.engine.connect() as connection:
                row = connection.execute(select(table.c.passes, table.c.last_seen).where(table.c.network == network)).first()
            return (int(row.passes), as_utc(row.last_seen)) if row else (0, None)

        return guarded("read the greylist clients", read)

    def count_retry(self, write: Write) -> None:
        """Add *write*'s successful retry to its client network's count, alone: the
        check counts a retry once its message is delivered (:meth:`record` with a
        ``count_client`` write counts it with the triplet's own write)."""

        def apply() -> None:
            with self.engine.begin() as connection:
                connection.execute(_count_client(dialect_insert(connection, "greylisting"), write.triplet.network, write))

        guarded("write the greylist", apply)

    def touch_client(self, network: str, now: dt.datetime | None = None) -> None:
        """Keep an auto-whitelisted client from expiring (written at most every RENEW_INTERVAL)."""
        self.record((), (network,), now)

    # --- housekeeping and the administrator's commands ---------------------------
    def purge(self, expire: float, now: dt.datetime | None = None) -> tuple[int, int]:
        """Delete expired triplets and clients unseen for *expire* seconds; return both counts.

        Triplets go :data:`PURGE_BATCH` per transaction (by the index on ``expires_at``),
        :data:`PURGE_PAUSE` seconds apart, so that the mail's writes wait for one batch at
        most.  On PostgreSQL the rows a message is writing at that moment are left to the
        next purge."""
        now = now or self.now()
        table, clients = schema.greylist, schema.greylist_clients

        def batch() -> int:
            with self.engine.begin() as connection:
                due = select(table.c.id).where(table.c.expires_at < now).limit(PURGE_BATCH)
                if connection.dialect.name == "postgresql":  # as deletable(): never wait for a row a message holds
                    due = due.with_for_update(skip_locked=True)
                return int(connection.execute(delete(table).where(table.c.id.in_(due))).rowcount or 0)

        def work() -> tuple[int, int]:
            triplets = deleted = batch()
            while deleted >= PURGE_BATCH:
                time.sleep(PURGE_PAUSE)
                deleted = batch()
                triplets += deleted
            with self.engine.begin() as connection:
                unseen = clients.c.last_seen < now - dt.timedelta(seconds=expire)
                clients_deleted = connection.execute(delete(clients).where(deletable(connection, clients.c.network, unseen))).rowcount
            return triplets, int(clients_deleted or 0)

        return guarded("purge the greylist", work)

    def list_triplets(
        self, network: Networks = None, sender: str | None = None, recipient: str | None = None,
        passed: bool | None = None, limit: int | None = 100, expired: bool | None = None, now: dt.datetime | None = None,
    ) -> list[dict[str, Any]]:
        """Stored triplets, most recently seen first, as dictionaries (at most *limit*, taken
        in SQL).  *expired*: only the rows expired (True) or not (False) at *now* (the
        store's time when not given)."""
        table = schema.greylist
        conditions = _triplet_filters(network, sender, recipient, passed, expired, (now or self.now()) if expired is not None else None)
        query = select(table).where(*conditions).order_by(table.c.last_seen.desc(), table.c.id.desc())
        if limit:
            query = query.limit(limit)

        def read() -> list[dict[str, Any]]:
            with self.engine.connect() as connection:
                rows = [dict(r._mapping) for r in connection.execute(query)]
            for row in rows:
                for name in ("first_seen", "last_seen", "passed_at", "expires_at"):
                    row[name] = as_utc(row[name])
            return rows

        return guarded("list the greylist", read)

    def count_triplets(
        self, network: Networks = None, sender: str | None = None, recipient: str | None = None,
        passed: bool | None = None, expired: bool | None = None, now: dt.datetime | None = None,
    ) -> int:
        """How many stored triplets :meth:`list_triplets` would list without a limit (counted in SQL)."""
        table = schema.greylist
        conditions = _triplet_filters(network, sender, recipient, passed, expired, (now or self.now()) if expired is not None else None)
        query = select(func.count()).select_from(table).where(*conditions)

        def read() -> int:
            with self.engine.connect() as connection:
                return int(connection.execute(query).scalar() or 0)

        return guarded("count the greylist", read)

    def stats(self, auto_whitelist_after: int, now: dt.datetime | None = None, expire: float | None = None) -> dict[str, int]:
        """Counts for ``milterd greylist stats``: ``passed``, ``waiting`` and ``expired``
        split the triplets as the check judges them at *now*; with *expire* (seconds),
        clients unused for longer are not counted as auto-whitelisted (the check ignores them)."""
        now = now or self.now()
        table, clients = schema.greylist, schema.greylist_clients

        def read() -> dict[str, int]:
            with self.engine.connect() as connection:
                def count(query: Any) -> int:
                    return int(connection.execute(query).scalar() or 0)

                total = count(select(func.count()).select_from(table))
                live = table.c.expires_at >= now  # an expired row starts again, passed or not
                passed = count(select(func.count()).select_from(table).where(live, table.c.passed_at.is_not(None)))
                waiting = count(select(func.count()).select_from(table).where(live, table.c.passed_at.is_(None)))
                expired = count(select(func.count()).select_from(table).where(table.c.expires_at < now))
                attempts = count(select(func.coalesce(func.sum(table.c.attempts), 0)))
                known_clients = count(select(func.count()).select_from(clients))
                auto = 0
                if auto_whitelist_after > 0:
                    whitelisted = clients.c.passes >= auto_whitelist_after
                    if expire is not None:
                        whitelisted = and_(whitelisted, clients.c.last_seen >= now - dt.timedelta(seconds=expire))
                    auto = count(select(func.count()).select_from(clients).where(whitelisted))
                manual = count(select(func.count()).select_from(schema.greylist_whitelist))
            return {
                "triplets": total,
                "passed": passed,
                "waiting": waiting,
                "expired": expired,
                "attempts": attempts,
                "clients": known_clients,
                "auto_whitelisted_clients": auto,
                "whitelist_entries": manual,
            }

        return guarded("count the greylist", read)

    def remove_triplets(self, network: Networks = None, sender: str | None = None, recipient: str | None = None) -> int:
        """Delete the triplets matching every filter given; return how many (none without a filter)."""
        table = schema.greylist
        conditions = _triplet_filters(network, sender, recipient, None, None, None)
        if not conditions:
            return 0

        def work() -> int:
            with self.engine.begin() as connection:
                lock_tables(connection, table)  # PostgreSQL: the messages writing finish, the next ones wait
                return int(connection.execute(delete(table).where(and_(*conditions))).rowcount or 0)

        return guarded("delete triplets", work)

    def client_rows(self, network: Networks = None, limit: int | None = 100) -> list[dict[str, Any]]:
        """The client networks' successful-retry counts (the auto whitelist), most recently seen first, as
        dictionaries ``{network, passes, last_seen}`` (at most *limit*; only those of *network*, when given)."""
        clients = schema.greylist_clients

        def read() -> list[dict[str, Any]]:
            query = select(clients.c.network, clients.c.passes, clients.c.last_seen).order_by(clients.c.last_seen.desc(), clients.c.network)
            if network:
                query = query.where(clients.c.network.in_([network] if isinstance(network, str) else network))
            if limit:
                query = query.limit(limit)
            with self.engine.connect() as connection:
                return [{"network": row.network, "passes": int(row.passes), "last_seen": as_utc(row.last_seen)}
                        for row in connection.execute(query)]

        return guarded("read the greylist clients", read)

    def remove_clients(self, network: Sequence[str]) -> int:
        """Delete the successful-retry counts of these client networks (their auto whitelisting); return how many."""
        clients = schema.greylist_clients
        if not network:
            return 0

        def work() -> int:
            with self.engine.begin() as connection:
                return int(connection.execute(delete(clients).where(clients.c.network.in_(list(network)))).rowcount or 0)

        return guarded("delete greylist clients", work)

    # --- the stored whitelist ------------------------------------------------------
    def whitelist_rows(self) -> list[dict[str, Any]]:
        """The entries of the ``greylist_whitelist`` table."""
        table = schema.greylist_whitelist

        def read() -> list[dict[str, Any]]:
            with self.engine.connect() as connection:
                rows = [dict(r._mapping) for r in connection.execute(select(table).order_by(table.c.kind, table.c.value))]
            for row in rows:
                row["created_at"] = as_utc(row["created_at"])
            return rows

        return guarded("read the greylist whitelist", read)

    def whitelist_add(self, kind: str, value: str, comment: str = "") -> bool:
        """Add an entry (checked first: ValueError); False when it was already there."""
        compile_pattern(kind, value)
        table = schema.greylist_whitelist
        value = entry_value(kind, value)

        def work() -> bool:
            with self.engine.begin() as connection:
                statement = dialect_insert(connection, "greylisting")(table).values(kind=kind, value=value, comment=comment, created_at=self.now())
                statement = statement.on_conflict_do_nothing(index_elements=[table.c.kind, table.c.value]).returning(table.c.id)
                return connection.execute(statement).first() is not None

        return guarded("add to the greylist whitelist", work)

    def whitelist_remove(self, kind: str, value: str) -> bool:
        """Remove an entry; False when there was none."""
        table = schema.greylist_whitelist
        forms = _stored_forms(kind, value)

        def work() -> bool:
            with self.engine.begin() as connection:
                return bool(connection.execute(delete(table).where(table.c.kind == kind, table.c.value.in_(forms))).rowcount)

        return guarded("remove from the greylist whitelist", work)

    def whitelist(self) -> Whitelist:
        """The table's entries as a :class:`~milterd.greylist.Whitelist` (unusable rows are skipped)."""
        entries = []
        for row in self.whitelist_rows():
            try:
                compile_pattern(row["kind"], row["value"])
            except ValueError:
                continue
            entries.append((str(row["kind"]), str(row["value"])))
        return Whitelist.build(entries)


def _triplet_filters(
    network: Networks, sender: str | None, recipient: str | None, passed: bool | None, expired: bool | None, now: dt.datetime | None,
) -> list[Any]:
    """The WHERE conditions of :meth:`GreylistStore.list_triplets`, :meth:`~GreylistStore.count_triplets` and
    :meth:`~GreylistStore.remove_triplets`; *network* is one stored network or several (any of them)."""
    table = schema.greylist
    conditions: list[Any] = []
    if isinstance(network, str):
        network = [network] if network else None
    if network:
        conditions.append(table.c.network.in_(network))
    if sender is not None:
        conditions.append(table.c.sender == sender)
    if recipient:
        conditions.append(table.c.recipient == recipient)
    if passed is not None:
        conditions.append(table.c.passed_at.is_not(None) if passed else table.c.passed_at.is_(None))
    if expired is not None and now is not None:
        conditions.append(table.c.expires_at < now if expired else table.c.expires_at >= now)
    return conditions


def _insert_values(write: Write) -> dict[str, Any]:
    """The row an attempt creates when the triplet is not stored (any more)."""
    passed = write.kind in ("pass", "known")
    return {
        "network": write.triplet.network, "sender": write.triplet.sender, "recipient": write.triplet.recipient,
        "first_seen": write.at, "last_seen": write.at, "passed_at": write.at if passed else None,
        "expires_at": write.expires_at, "attempts": 1, "passes": 1 if passed else 0,
    }


def _count_client(insert: Any, network: str, write: Write) -> Any:
    """The insert-or-update adding *write*'s successful retry to *network*'s count.

    The row's ``last_seen`` is its last count (or, once auto-whitelisted, its
    last use): a count less than :data:`CLIENT_COUNT_INTERVAL` after it is
    skipped (the row is left as it is), and a row unseen for ``client_expire``
    seconds starts again from this one.  Decided on the row itself, so that
    workers and MX hosts counting the same network at once count it once.
    """
    clients = schema.greylist_clients
    statement = insert(clients).values(network=network, passes=1, last_seen=write.at)
    passes: Any = clients.c.passes + statement.excluded.passes
    if write.client_expire is not None:
        stale = write.at - dt.timedelta(seconds=write.client_expire)
        passes = case((clients.c.last_seen < stale, statement.excluded.passes), else_=passes)
    return statement.on_conflict_do_update(
        index_elements=[clients.c.network],
        set_={"passes": passes, "last_seen": statement.excluded.last_seen},
        where=clients.c.last_seen <= write.at - dt.timedelta(seconds=CLIENT_COUNT_INTERVAL),
    )


def _conflict_update(kind: Kind, table: Any, excluded: Any) -> dict[str, Any]:
    """What an attempt of *kind* changes in a stored row (``excluded``: the values inserted)."""
    if kind == "expired":  # start again as a first attempt
        return {"first_seen": excluded.first_seen, "last_seen": excluded.last_seen, "passed_at": None,
                "expires_at": excluded.expires_at, "attempts": 1, "passes": 0}
    values: dict[str, Any] = {"attempts": table.c.attempts + 1, "last_seen": excluded.last_seen}
    if kind == "pass":
        values.update(passed_at=func.coalesce(table.c.passed_at, excluded.passed_at), expires_at=excluded.expires_at, passes=table.c.passes + 1)
    elif kind == "known":  # renewed
        values.update(expires_at=excluded.expires_at, passes=table.c.passes + 1)
    return values
