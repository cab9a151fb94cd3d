"""SQLAlchemy table models of the node's database (the schema at the head revision).

These classes describe the tables for alembic and for building statements in
``persistence.database``; they never leave that module. Callers get the frozen
records defined there instead.

The migrations in ``migrations/versions`` must produce exactly this schema; a test
compares the two.
"""

from __future__ import annotations

from enum import StrEnum

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Float,
    Index,
    LargeBinary,
    MetaData,
    String,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

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


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class NodeStateRow(Base):
    """Small facts about the node itself: peer_id, created_at, last_started_at, ..."""

    __tablename__ = "node_state"

    key: Mapped[str] = mapped_column(String, primary_key=True)
    value: Mapped[str] = mapped_column(String)


class PeerRow(Base):
    """A peer the routing table knew, so that it can be restored after a restart."""

    __tablename__ = "peers"
    __table_args__ = (CheckConstraint("length(peer_id) = 32", name="peer_id_length"),)

    peer_id: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    addrs: Mapped[list[str]] = mapped_column(JSON)
    """Multiaddr strings, most preferred first."""
    last_seen: Mapped[float] = mapped_column(Float)
    """Unix time the peer last answered."""
    failures: Mapped[int] = mapped_column(server_default=text("0"))
    """Consecutive failed contacts since it last answered."""
    in_routing_table: Mapped[bool] = mapped_column(server_default=text("1"))
    """True: in its k-bucket; False: in that bucket's replacement cache (revision 0002)."""
    ip: Mapped[str | None] = mapped_column(String(45))
    """The IP the peer was seen at, for the per-IP limits (revision 0003)."""


class ChunkRow(Base):
    """Metadata of a chunk whose bytes are in ``chunks/<2 hex>/<64 hex>``."""

    __tablename__ = "chunks"
    __table_args__ = (
        CheckConstraint("length(address) = 32", name="address_length"),
        CheckConstraint("size >= 0", name="size_not_negative"),
        CheckConstraint("kind IN ('responsible', 'cache')", name="kind"),
        Index("ix_chunks_kind_size", "kind", "size"),
    )

    address: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    size: Mapped[int]
    kind: Mapped[str] = mapped_column(String(16))
    stored_at: Mapped[float] = mapped_column(Float)
    last_verified: Mapped[float | None] = mapped_column(Float)
    proof: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    """The chunk's proof of payment (msgpack ``PaymentProof``), carried to replicas
    (revision 0004); None on a free network or for a chunk adopted from disk."""


class PeerTrustRow(Base):
    """How far the node trusts a peer, from the storage audits it sent it (revision 0005).

    Kept so that a restart neither forgives a shunned peer nor forgets a reliable one.
    """

    __tablename__ = "peer_trust"
    __table_args__ = (CheckConstraint("length(peer_id) = 32", name="peer_id_length"),)

    peer_id: Mapped[bytes] = mapped_column(LargeBinary, primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    """The trust score as of ``updated_at`` (the rules in ``protocol.trust`` decay it)."""
    updated_at: Mapped[float] = mapped_column(Float)
    """Unix time the score was last changed."""
    passed: Mapped[int] = mapped_column(server_default=text("0"))
    """Audits of this peer that passed."""
    failed: Mapped[int] = mapped_column(server_default=text("0"))
    """Audits of this peer that failed."""
    shunned_until: Mapped[float | None] = mapped_column(Float)
    """Unix time until which the peer is shunned; None: not shunned."""


AUDIT_ORDER = func.coalesce(ChunkRow.last_verified, ChunkRow.stored_at)
"""When a chunk's bytes were last known good: its last audit, else its arrival (the
hash is checked when a chunk is stored). Audits take the oldest first; the audit
query must use this same expression for SQLite to use the index."""

Index("ix_chunks_audit_order", AUDIT_ORDER)
