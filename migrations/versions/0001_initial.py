"""Node state and the routing-table peers.

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "node_state",
        sa.Column("key", sa.String(), nullable=False),
        sa.Column("value", sa.String(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_node_state")),
    )
    op.create_table(
        "peers",
        sa.Column("peer_id", sa.LargeBinary(), nullable=False),
        sa.Column("addrs", sa.JSON(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("failures", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint("length(peer_id) = 32", name=op.f("ck_peers_peer_id_length")),
        sa.PrimaryKeyConstraint("peer_id", name=op.f("pk_peers")),
    )


def downgrade() -> None:
    op.drop_table("peers")
    op.drop_table("node_state")
