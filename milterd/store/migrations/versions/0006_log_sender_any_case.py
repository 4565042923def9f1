"""The message log's sender index on lower(sender): ``milterd log --sender`` matches any case.

``--sender Alice@Example.org`` found none of the rows logged as ``alice@example.org`` (the quarantine's
``--sender`` already matched any case).  The index on the sender as written served only that filter; an
index on its lower-case form serves the filter that ignores case, and one index is kept, not two.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_messages_sender", table_name="messages")
    op.create_index("ix_messages_sender_lower", "messages", [sa.text("lower(sender)")])


def downgrade() -> None:
    op.drop_index("ix_messages_sender_lower", table_name="messages")
    op.create_index("ix_messages_sender", "messages", ["sender"])
