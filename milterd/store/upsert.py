"""What the store's writes say differently per dialect: the ``insert`` whose ``ON CONFLICT`` the
store uses, and how a bulk delete or a rewrite of whole tables keeps clear of PostgreSQL's row locks.

Several workers and MX hosts write one PostgreSQL store at once: two transactions that
lock rows they share in opposite orders deadlock, and PostgreSQL aborts one of them.
The writes of mail (a learn, a message's greylist triplets) take their rows in key
order; a bulk ``DELETE`` takes its rows in the order of its scan, so it must either
never wait for a row (:func:`deletable`, for housekeeping) or take the whole tables
first (:func:`lock_tables`, for an administrator's command).  SQLite has one writer at
a time and no row locks: neither changes its SQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Table, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from .errors import StoreError


def dialect_insert(connection: Connection, feature: str) -> Any:
    """The ``insert`` of *connection*'s dialect (it has ``on_conflict_do_update``);
    StoreError naming *feature* on a database other than SQLite or PostgreSQL."""
    name = connection.dialect.name
    if name == "sqlite":
        return sqlite_insert
    if name == "postgresql":
        return postgresql_insert
    raise StoreError(f"{feature} needs SQLite or PostgreSQL, not {name}")


def deletable(connection: Connection, key: Any, condition: ColumnElement[bool]) -> ColumnElement[bool]:
    """The WHERE clause of a housekeeping ``DELETE`` of the rows matching *condition*.

    On PostgreSQL, ``key IN (SELECT key … WHERE condition FOR UPDATE SKIP LOCKED)``
    (*key*: the table's primary key column): the rows another transaction holds
    are left to the next run instead of waited for, so that the delete, which meets
    rows in the order of its scan, never waits while it holds others (a deadlock
    with a writer taking them in key order).  A row a writer holds is in use, and
    mostly no longer due.  Elsewhere *condition* itself.
    """
    if connection.dialect.name != "postgresql":
        return condition
    return key.in_(select(key).where(condition).with_for_update(skip_locked=True))  # type: ignore[no-any-return]


def lock_tables(connection: Connection, *tables: Table) -> None:
    """On PostgreSQL, take *tables*, in this order, for the rest of the transaction
    (``LOCK TABLE … IN EXCLUSIVE MODE``: reads go on, writes wait).

    For an administrator's rewrite of whole tables: it then waits for the writers
    already at work, which wait for nothing it holds, instead of taking their rows
    in an order of its own.  Give the tables in the order the writers first touch them.
    """
    if connection.dialect.name != "postgresql":
        return
    preparer = connection.dialect.identifier_preparer
    connection.exec_driver_sql(f"LOCK TABLE {', '.join(preparer.format_table(table) for table in tables)} IN EXCLUSIVE MODE")


def advisory_lock(connection: Connection, key: int) -> None:
    """On PostgreSQL, wait for the transaction-level advisory lock *key* and hold it until *connection*'s
    transaction ends: work that two MX hosts must not do at once.  SQLite's writers are one at a time already."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({int(key)})")
