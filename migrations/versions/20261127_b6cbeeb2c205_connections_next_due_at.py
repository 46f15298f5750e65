"""Connections: a stored ``next_due_at`` (the earlier of refresh and sync) and the claim index.

Revision ID: b6cbeeb2c205
Revises: 69ed2a82fad9
Create Date: 2026-11-27 04:42:54 UTC

SQLite cannot add a stored generated column in place, so there the table is rebuilt; PostgreSQL
adds it with ALTER TABLE (a rebuild there would have to drop the foreign keys pointing at it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "b6cbeeb2c205"
down_revision: str | Sequence[str] | None = "69ed2a82fad9"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


NEXT_DUE_SQL = (
    "CASE WHEN next_refresh_at IS NULL THEN next_sync_at "
    "WHEN next_sync_at IS NULL OR next_refresh_at < next_sync_at THEN next_refresh_at "
    "ELSE next_sync_at END"
)


def _recreate() -> Literal["always", "auto"]:
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    """Upgrade the schema."""
    with op.batch_alter_table("connections", recreate=_recreate()) as batch_op:
        batch_op.add_column(
            sa.Column(
                "next_due_at",
                sa.DateTime(timezone=True),
                sa.Computed(NEXT_DUE_SQL, persisted=True),
                nullable=True,
            )
        )
        batch_op.create_index(
            "ix_connections_status_next_due_at_id", ["status", "next_due_at", "id"], unique=False
        )


def downgrade() -> None:
    """Revert :func:`upgrade`."""
    with op.batch_alter_table("connections", recreate=_recreate()) as batch_op:
        batch_op.drop_index("ix_connections_status_next_due_at_id")
        batch_op.drop_column("next_due_at")
