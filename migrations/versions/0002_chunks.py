"""Chunk metadata; peers remember whether they were in a k-bucket or its replacement cache.

Revision ID: 0002_chunks
Revises: 0001_initial
Create Date: 2025-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_chunks"
down_revision: str | Sequence[str] | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Peers saved before this revision were all routing-table members. (A plain ADD
    # COLUMN: SQLite allows it with a default, and it works in --sql mode too.)
    op.add_column(
        "peers",
        sa.Column("in_routing_table", sa.Boolean(), server_default=sa.text("1"), nullable=False),
    )
    op.create_table(
        "chunks",
        sa.Column("address", sa.LargeBinary(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("stored_at", sa.Float(), nullable=False),
        sa.Column("last_verified", sa.Float(), nullable=True),
        sa.CheckConstraint("length(address) = 32", name=op.f("ck_chunks_address_length")),
        sa.CheckConstraint("size >= 0", name=op.f("ck_chunks_size_not_negative")),
        sa.CheckConstraint("kind IN ('responsible', 'cache')", name=op.f("ck_chunks_kind")),
        sa.PrimaryKeyConstraint("address", name=op.f("pk_chunks")),
    )
    op.create_index("ix_chunks_kind_size", "chunks", ["kind", "size"])
    op.create_index(
        "ix_chunks_audit_order", "chunks", [sa.text("coalesce(last_verified, stored_at)")]
    )


def downgrade() -> None:
    op.drop_index("ix_chunks_audit_order", table_name="chunks")
    op.drop_index("ix_chunks_kind_size", table_name="chunks")
    op.drop_table("chunks")
    with op.batch_alter_table("peers") as batch:
        batch.drop_column("in_routing_table")
