"""The highest quarantine id ever issued, kept: on SQLite a quarantine id is never given twice.

``quarantine.id`` is SQLite's INTEGER PRIMARY KEY without AUTOINCREMENT, for which SQLite hands
out max(rowid) + 1: once the rows with the highest ids were gone (a retention purge on a quiet
site, ``quarantine purge``, ``quarantine delete`` of the newest), the next quarantined message
got an id already used.  Digests and tickets print ``milterd quarantine release N``: run later,
it released another message to that message's recipients (show, confirm and delete by id too).
PostgreSQL's sequence never gives an id twice.

The table is not rebuilt with AUTOINCREMENT: alembic's batch mode copies it and drops the old
one, and with ``PRAGMA foreign_keys=ON`` (store/engine.py) the ON DELETE CASCADE of
``quarantine_chunks`` would delete every stored message.  Instead a one-row table keeps the
highest id issued, and the store's quarantine insert on SQLite allocates above both it and
max(quarantine.id), in the transaction of the insert (store/quarantine.py).

Seeded from max(quarantine.id): the message log records no quarantine id (a quarantine row
points at its log row, not the other way), so ids issued and deleted before this upgrade
cannot be known; from here on none is issued twice.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "quarantine_high_water",
        sa.Column("singleton", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("last_id", sa.BigInteger, nullable=False),
        sa.CheckConstraint("singleton = 1", name="ck_quarantine_high_water_singleton"),
    )
    op.execute("INSERT INTO quarantine_high_water (singleton, last_id) SELECT 1, coalesce(max(id), 0) FROM quarantine")


def downgrade() -> None:
    # Only the new table goes: the quarantine and its chunks are not touched.
    op.drop_table("quarantine_high_water")
