"""Virus notices sent once: the recipients of a quarantine row already told (quarantine.notified).

``quarantine digest --notify-virus-recipients`` records each recipient whose
notice went out, so that overlapping runs do not tell them again and a failed
notice is retried.  Rows from before this revision (NULL) have told no one.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("quarantine", sa.Column("notified", sa.JSON, nullable=True))


def downgrade() -> None:
    # Not in a batch: on SQLite a batch copies and drops the quarantine table, and with
    # foreign keys on that drop deletes every row of quarantine_chunks (ON DELETE CASCADE).
    # SQLite 3.35 and later drop a column in place.
    op.drop_column("quarantine", "notified")
