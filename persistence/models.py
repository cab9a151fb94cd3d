"""SQLAlchemy tables of the node's database (the schema at the head revision).

These tables describe the schema for alembic and for building statements in
``persistence.database``; rows never leave that module (callers get the frozen
records defined there). Plain Core tables, not ORM classes: the node never maps rows
to objects, and not importing ``sqlalchemy.orm`` saves each node process about 6 MB.

The migrations in ``migrations/versions`` must produce exactly this schema; a test
compares the two.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    text,
)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
"""Stable constraint names, so that batch (copy-and-move) migrations on SQLite can
refer to them."""


class ChunkKind(StrEnum):
    """Why a node holds a chunk."""

    RESPONSIBLE = "responsible"
    """The node is in the chunk's close group and must keep it."""
    CACHE = "cache"
    """A copy kept to answer popular reads early; may be dropped at any time."""


metadata = MetaData(naming_convention=NAMING_CONVENTION)

node_state = Table(
    "node_state",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
)
"""Small facts about the node itself: peer_id, created_at, last_started_at, ..."""

peers = Table(
    "peers",
    metadata,
    Column("peer_id", LargeBinary, primary_key=True),
    Column("addrs", JSON, nullable=False),  # multiaddr strings, most preferred first
    Column("last_seen", Float, nullable=False),  # unix time the peer last answered
    # consecutive failed contacts since it last answered
    Column("failures", Integer, nullable=False, server_default=text("0")),
    # True: in its k-bucket; False: in that bucket's replacement cache (revision 0002)
    Column("in_routing_table", Boolean, nullable=False, server_default=text("1")),
    Column("ip", String(45)),  # the IP it was seen at, for the per-IP limits (0003)
    CheckConstraint("length(peer_id) = 32", name="peer_id_length"),
)
"""A peer the routing table knew, so that it can be restored after a restart."""

chunks = Table(
    "chunks",
    metadata,
    Column("address", LargeBinary, primary_key=True),
    Column("size", Integer, nullable=False),
    Column("kind", String(16), nullable=False),
    Column("stored_at", Float, nullable=False),
    Column("last_verified", Float),
    # the chunk's proof of payment (msgpack PaymentProof), carried to replicas (0004);
    # None on a free network or for a chunk adopted from disk
    Column("proof", LargeBinary),
    CheckConstraint("length(address) = 32", name="address_length"),
    CheckConstraint("size >= 0", name="size_not_negative"),
    CheckConstraint("kind IN ('responsible', 'cache')", name="kind"),
    Index("ix_chunks_kind_size", "kind", "size"),
)
"""Metadata of a chunk whose bytes are in ``chunks/<2 hex>/<64 hex>``."""

peer_trust = Table(
    "peer_trust",
    metadata,
    Column("peer_id", LargeBinary, primary_key=True),
    # the trust score as of updated_at (the rules in protocol.trust decay it)
    Column("score", Float, nullable=False),
    Column("updated_at", Float, nullable=False),  # unix time the score last changed
    Column("passed", Integer, nullable=False, server_default=text("0")),
    Column("failed", Integer, nullable=False, server_default=text("0")),
    Column("shunned_until", Float),  # unix time the peer is shunned until; None: not
    CheckConstraint("length(peer_id) = 32", name="peer_id_length"),
)
"""How far the node trusts a peer, from the storage audits it sent it (revision 0005):
kept so that a restart neither forgives a shunned peer nor forgets a reliable one."""

AUDIT_ORDER = func.coalesce(chunks.c.last_verified, chunks.c.stored_at)
"""When a chunk's bytes were last known good: its last audit, else its arrival (the
hash is checked when a chunk is stored). Audits take the oldest first; the audit
query must use this same expression for SQLite to use the index."""

Index("ix_chunks_audit_order", AUDIT_ORDER)
