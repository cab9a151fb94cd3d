"""Peers' trust scores from storage audits survive a restart, so a shunned peer stays
shunned and a reliable one keeps its standing.

Revision ID: 0005_peer_trust
Revises: 0004_chunk_proof
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_peer_trust"
down_revision: str | Sequence[str] | None = "0004_chunk_proof"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "peer_trust",
        sa.Column("peer_id", sa.LargeBinary(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("passed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("failed", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("shunned_until", sa.Float(), nullable=True),
        sa.CheckConstraint("length(peer_id) = 32", name=op.f("ck_peer_trust_peer_id_length")),
        sa.PrimaryKeyConstraint("peer_id", name=op.f("pk_peer_trust")),
    )


def downgrade() -> None:
    op.drop_table("peer_trust")
