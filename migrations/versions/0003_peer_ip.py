"""Peers remember the IP they were seen at, so restored peers count toward the
routing table's per-IP and per-/24 limits before they are seen again.

Revision ID: 0003_peer_ip
Revises: 0002_chunks
Create Date: 2026-11-22
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_peer_ip"
down_revision: str | Sequence[str] | None = "0002_chunks"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Peers saved before this revision have no IP: they count toward no limit until
    # they are seen again (as before).
    op.add_column("peers", sa.Column("ip", sa.String(length=45), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("peers") as batch:
        batch.drop_column("ip")
