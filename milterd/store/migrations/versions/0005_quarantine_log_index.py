"""An index on quarantine.message_log_id, the foreign key to the message log.

Deleting a log row makes the database look for the quarantine rows pointing at it (``ON DELETE SET NULL``), and
the log's retention purge (``[database] log_retention``) asks which rows the quarantine still points at: without
an index each deleted row scanned the quarantine table, and on SQLite a batch of 5,000 held the write lock past
the workers' busy timeout with 40,000 messages quarantined.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_quarantine_message_log_id", "quarantine", ["message_log_id"])


def downgrade() -> None:
    op.drop_index("ix_quarantine_message_log_id", table_name="quarantine")
