"""Alembic environment: runs milterd's migrations on the connection it is given."""

from alembic import context

from milterd.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - milterd always passes a connection
    raise RuntimeError("milterd's migrations run through 'milterd db upgrade'")
context.configure(connection=connection, target_metadata=metadata, render_as_batch=connection.dialect.name == "sqlite")
# The connection comes in Store.upgrade's transaction, which holds the upgrade lock (_lock_for_upgrade):
# begin_transaction() adds no transaction of its own to it (nor per migration), so the lock spans them all.
with context.begin_transaction():
    context.run_migrations()
