"""The SQL schema of milterd's store (SQLAlchemy Core tables).

One store serves the message log, the quarantine, the greylist and the classifier, on SQLite
(the default) or PostgreSQL (several MX hosts sharing one database).  Schema
changes are alembic migrations in ``migrations/versions``; keep both in step.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets BIGINT.
Id = BigInteger().with_variant(Integer(), "sqlite")

messages = Table(
    "messages",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("mta_host", String(255), nullable=False, default=""),
    Column("queue_id", String(64), nullable=False, default=""),
    Column("client_addr", String(64), nullable=False, default=""),
    Column("client_name", String(255), nullable=False, default=""),
    Column("helo", String(255), nullable=False, default=""),
    Column("auth_user", String(255), nullable=False, default=""),
    Column("sender", String(512), nullable=False, default=""),
    Column("recipients", JSON, nullable=False, default=list),
    Column("subject", Text, nullable=False, default=""),
    Column("message_id", String(512), nullable=False, default=""),
    Column("size", BigInteger, nullable=False, default=0),
    Column("score", Float, nullable=False, default=0.0),
    Column("action", String(32), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("symbols", JSON, nullable=False, default=dict),
    Column("details", JSON, nullable=False, default=dict),
    Column("elapsed_ms", Float, nullable=False, default=0.0),
    Column("released_as_ham", Boolean, nullable=False, default=False),
    Index("ix_messages_time", "time"),
    Index("ix_messages_queue_id", "queue_id"),
    Index("ix_messages_action", "action"),
)
# ``milterd log --sender`` matches any case (migration 0006).
Index("ix_messages_sender_lower", func.lower(messages.c.sender))

quarantine = Table(
    "quarantine",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("message_log_id", Id, ForeignKey("messages.id", ondelete="SET NULL"), nullable=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("mta_host", String(255), nullable=False, default=""),
    Column("queue_id", String(64), nullable=False, default=""),
    Column("client_addr", String(64), nullable=False, default=""),
    Column("client_name", String(255), nullable=False, default=""),
    Column("helo", String(255), nullable=False, default=""),
    Column("sender", String(512), nullable=False, default=""),
    Column("recipients", JSON, nullable=False, default=list),
    Column("subject", Text, nullable=False, default=""),
    Column("score", Float, nullable=False, default=0.0),
    Column("reason", Text, nullable=False, default=""),
    Column("symbols", JSON, nullable=False, default=dict),
    Column("size", BigInteger, nullable=False, default=0),
    Column("mode", String(16), nullable=False, default="discard"),
    # Rows stored before schema 0002 hold the whole message here; newer ones
    # leave it NULL and keep the message in quarantine_chunks.
    Column("raw", LargeBinary, nullable=True),
    Column("released_at", DateTime(timezone=True), nullable=True),
    Column("released_by", String(255), nullable=True),
    Column("release_result", JSON, nullable=True),
    Column("release_count", Integer, nullable=False, default=0),
    Column("learned_ham", Boolean, nullable=False, default=False),
    # The recipients already sent a virus notice (schema 0004; NULL: none), each
    # claimed just before its notice is sent (given back if the sending fails):
    # a later digest tells only the others.
    Column("notified", JSON, nullable=True),
    Index("ix_quarantine_time", "time"),
    Index("ix_quarantine_message_log_id", "message_log_id"),  # the log's purge and ON DELETE SET NULL look it up
)

#: A quarantined message in pieces (amavisd's ``quarantine(mail_id, chunk_ind,
#: mail_text)``): written and read back one chunk at a time, so that neither the
#: milter nor a release holds a large message whole in memory.
quarantine_chunks = Table(
    "quarantine_chunks",
    metadata,
    Column("quarantine_id", Id, ForeignKey("quarantine.id", ondelete="CASCADE"), primary_key=True, autoincrement=False),
    Column("chunk_ind", Integer, primary_key=True, autoincrement=False),
    Column("data", LargeBinary, nullable=False),
)

#: The highest quarantine id ever issued (schema 0007), in its one row (``singleton`` = 1).  On SQLite
#: ``quarantine.id`` is an INTEGER PRIMARY KEY without AUTOINCREMENT, which hands out max(id) + 1: once
#: the newest rows were purged or deleted, the next message got an id digests had already printed in
#: ``milterd quarantine release N``.  The store's quarantine insert allocates above this and max(id)
#: (store/quarantine.py).  The table is not rebuilt with AUTOINCREMENT: a batch copy drops the old
#: one, and its ON DELETE CASCADE would delete every stored message.  Unused on PostgreSQL, whose
#: sequence never gives an id twice.
quarantine_high_water = Table(
    "quarantine_high_water",
    metadata,
    Column("singleton", Integer, primary_key=True, autoincrement=False),
    Column("last_id", BigInteger, nullable=False),
    CheckConstraint("singleton = 1", name="ck_quarantine_high_water_singleton"),
)

greylist = Table(
    "greylist",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("network", String(64), nullable=False),
    Column("sender", String(512), nullable=False),
    Column("recipient", String(512), nullable=False),
    Column("first_seen", DateTime(timezone=True), nullable=False),
    Column("last_seen", DateTime(timezone=True), nullable=False),
    Column("passed_at", DateTime(timezone=True), nullable=True),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("attempts", Integer, nullable=False, default=1),
    Column("passes", Integer, nullable=False, default=0),
    UniqueConstraint("network", "sender", "recipient", name="uq_greylist_triplet"),
    Index("ix_greylist_expires", "expires_at"),
)

greylist_clients = Table(
    "greylist_clients",
    metadata,
    Column("network", String(64), primary_key=True),
    Column("passes", Integer, nullable=False, default=0),
    Column("last_seen", DateTime(timezone=True), nullable=False),
)

greylist_whitelist = Table(
    "greylist_whitelist",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("kind", String(16), nullable=False),
    Column("value", String(512), nullable=False),
    Column("comment", Text, nullable=False, default=""),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("kind", "value", name="uq_greylist_whitelist"),
)

# The classifier's model (milterd.store.learner: LearnerStore reads and writes it).
learner_tokens = Table(
    "learner_tokens",
    metadata,
    Column("token", BigInteger, primary_key=True, autoincrement=False),
    Column("spam", Integer, nullable=False, default=0),
    Column("ham", Integer, nullable=False, default=0),
    # Days since the epoch when a message with this token was last learned.
    Column("atime", Integer, nullable=False, index=True),
)

learner_totals = Table(
    "learner_totals",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("spam", Integer, nullable=False, default=0),
    Column("ham", Integer, nullable=False, default=0),
)

learner_messages = Table(
    "learner_messages",
    metadata,
    Column("digest", String(64), primary_key=True),
    Column("label", String(4), nullable=False),
    Column("time", DateTime(timezone=True), nullable=False),  # learned, or moved to its label: the order in which digests are dropped
)
