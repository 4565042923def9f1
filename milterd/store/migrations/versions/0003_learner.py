"""The classifier's model: token counts, learned totals, learned-message digests.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "learner_tokens",
        sa.Column("token", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("spam", sa.Integer, nullable=False, server_default="0"),
        sa.Column("ham", sa.Integer, nullable=False, server_default="0"),
        sa.Column("atime", sa.Integer, nullable=False),
    )
    op.create_index("ix_learner_tokens_atime", "learner_tokens", ["atime"])
    op.create_table(
        "learner_totals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("spam", sa.Integer, nullable=False, server_default="0"),
        sa.Column("ham", sa.Integer, nullable=False, server_default="0"),
    )
    op.bulk_insert(sa.table("learner_totals", sa.column("id", sa.Integer), sa.column("spam", sa.Integer), sa.column("ham", sa.Integer)), [{"id": 1, "spam": 0, "ham": 0}])
    op.create_table(
        "learner_messages",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("label", sa.String(4), nullable=False),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("learner_messages")
    op.drop_table("learner_totals")
    op.drop_index("ix_learner_tokens_atime", table_name="learner_tokens")
    op.drop_table("learner_tokens")
