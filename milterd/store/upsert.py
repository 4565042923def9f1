"""Insert-or-update statements: the ``insert`` of the dialects whose ``ON CONFLICT`` the store uses."""

from __future__ import annotations

from typing import Any

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
