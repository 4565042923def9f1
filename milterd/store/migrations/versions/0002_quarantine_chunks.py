"""Quarantined messages in chunks (quarantine_chunks); quarantine.raw kept for older rows.

Rows written before this revision keep their whole message in
``quarantine.raw`` and stay readable; new rows leave ``raw`` NULL and store
the message as numbered pieces in ``quarantine_chunks``.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # The batch below copies the table row by row, foreign keys checked (the engine turns them on): a row whose
        # log row was deleted while they were off (sqlite3's default) failed the whole upgrade.  Unlinked, as
        # ON DELETE SET NULL would have left it.
        op.execute("UPDATE quarantine SET message_log_id = NULL WHERE message_log_id IS NOT NULL"
                   " AND message_log_id NOT IN (SELECT id FROM messages)")
    with op.batch_alter_table("quarantine") as batch:
        batch.alter_column("raw", existing_type=sa.LargeBinary, nullable=True)
    op.create_table(
        "quarantine_chunks",
        sa.Column("quarantine_id", Id, sa.ForeignKey("quarantine.id", ondelete="CASCADE"), primary_key=True, autoincrement=False),
        sa.Column("chunk_ind", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    # Chunked rows are joined back into quarantine.raw before the table goes.
    connection = op.get_bind()
    chunks = sa.table("quarantine_chunks", sa.column("quarantine_id"), sa.column("chunk_ind"), sa.column("data", sa.LargeBinary))
    quarantine = sa.table("quarantine", sa.column("id"), sa.column("raw", sa.LargeBinary))
    ids = [row[0] for row in connection.execute(sa.select(chunks.c.quarantine_id).distinct())]
    for row_id in ids:
        parts = connection.execute(sa.select(chunks.c.data).where(chunks.c.quarantine_id == row_id).order_by(chunks.c.chunk_ind))
        connection.execute(sa.update(quarantine).where(quarantine.c.id == row_id).values(raw=b"".join(bytes(p[0]) for p in parts)))
    op.drop_table("quarantine_chunks")
    connection.execute(sa.update(quarantine).where(quarantine.c.raw.is_(None)).values(raw=b""))
    with op.batch_alter_table("quarantine") as batch:
        batch.alter_column("raw", existing_type=sa.LargeBinary, nullable=False)
