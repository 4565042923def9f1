"""Initial schema: message log, quarantine, greylist.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "messages",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("time", TS, nullable=False),
        sa.Column("mta_host", sa.String(255), nullable=False),
        sa.Column("queue_id", sa.String(64), nullable=False),
        sa.Column("client_addr", sa.String(64), nullable=False),
        sa.Column("client_name", sa.String(255), nullable=False),
        sa.Column("helo", sa.String(255), nullable=False),
        sa.Column("auth_user", sa.String(255), nullable=False),
        sa.Column("sender", sa.String(512), nullable=False),
        sa.Column("recipients", sa.JSON, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("message_id", sa.String(512), nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("symbols", sa.JSON, nullable=False),
        sa.Column("details", sa.JSON, nullable=False),
        sa.Column("elapsed_ms", sa.Float, nullable=False),
        sa.Column("released_as_ham", sa.Boolean, nullable=False),
    )
    op.create_index("ix_messages_time", "messages", ["time"])
    op.create_index("ix_messages_queue_id", "messages", ["queue_id"])
    op.create_index("ix_messages_sender", "messages", ["sender"])
    op.create_index("ix_messages_action", "messages", ["action"])
    op.create_table(
        "quarantine",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("message_log_id", Id, sa.ForeignKey("messages.id", ondelete="SET NULL"), nullable=True),
        sa.Column("time", TS, nullable=False),
        sa.Column("mta_host", sa.String(255), nullable=False),
        sa.Column("queue_id", sa.String(64), nullable=False),
        sa.Column("client_addr", sa.String(64), nullable=False),
        sa.Column("client_name", sa.String(255), nullable=False),
        sa.Column("helo", sa.String(255), nullable=False),
        sa.Column("sender", sa.String(512), nullable=False),
        sa.Column("recipients", sa.JSON, nullable=False),
        sa.Column("subject", sa.Text, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("symbols", sa.JSON, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("raw", sa.LargeBinary, nullable=False),
        sa.Column("released_at", TS, nullable=True),
        sa.Column("released_by", sa.String(255), nullable=True),
        sa.Column("release_result", sa.JSON, nullable=True),
        sa.Column("release_count", sa.Integer, nullable=False),
        sa.Column("learned_ham", sa.Boolean, nullable=False),
    )
    op.create_index("ix_quarantine_time", "quarantine", ["time"])
    op.create_table(
        "greylist",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("network", sa.String(64), nullable=False),
        sa.Column("sender", sa.String(512), nullable=False),
        sa.Column("recipient", sa.String(512), nullable=False),
        sa.Column("first_seen", TS, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
        sa.Column("passed_at", TS, nullable=True),
        sa.Column("expires_at", TS, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("passes", sa.Integer, nullable=False),
        sa.UniqueConstraint("network", "sender", "recipient", name="uq_greylist_triplet"),
    )
    op.create_index("ix_greylist_expires", "greylist", ["expires_at"])
    op.create_table(
        "greylist_clients",
        sa.Column("network", sa.String(64), primary_key=True),
        sa.Column("passes", sa.Integer, nullable=False),
        sa.Column("last_seen", TS, nullable=False),
    )
    op.create_table(
        "greylist_whitelist",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(512), nullable=False),
        sa.Column("comment", sa.Text, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("kind", "value", name="uq_greylist_whitelist"),
    )


def downgrade() -> None:
    for table in ("greylist_whitelist", "greylist_clients", "greylist", "quarantine", "messages"):
        op.drop_table(table)
