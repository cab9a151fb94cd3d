"""Chunks keep their proof of payment, so that replicas travel with it.

Revision ID: 0004_chunk_proof
Revises: 0003_peer_ip
Create Date: 2026-12-01
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_chunk_proof"
down_revision: str | Sequence[str] | None = "0003_peer_ip"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Chunks stored before this revision have no proof (they were stored for free).
    op.add_column("chunks", sa.Column("proof", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    # SQLite (3.35+) drops a plain column in place; a batch copy would trip over the
    # expression index of the audit order.
    op.execute("ALTER TABLE chunks DROP COLUMN proof")
