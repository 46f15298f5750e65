"""Connections: a back-off folded into ``next_due_at``, a partial claim index, two indexes fewer.

Revision ID: 56f486b70c7a
Revises: 9a4c2e7b1f08
Create Date: 2026-12-06 00:40:00 UTC

- ``next_due_at`` becomes the earlier of ``next_refresh_at`` and ``next_sync_at``, but never
  before ``backoff_until``: the moment the connection is next claimable. The claim then reads
  only what is due from its index, instead of stepping over every connection backing off with
  an old due time. PostgreSQL 15 cannot change a generated column's expression, so the column
  is dropped and added again (a rewrite of the table under an exclusive lock: minutes at
  millions of connections, at a time an operator chooses).
- ``ix_connections_status_next_due_at_id`` becomes ``ix_connections_due`` on
  ``(next_due_at, id) WHERE status = 'active'``: the claim's walk in due order, without the
  inactive connections and without a status in every entry.
- ``ix_connections_next_refresh_at`` and ``ix_connections_next_sync_at`` go: no query filters or
  orders by either column alone, and each made every reschedule write one more index entry.

``lease_owner`` and ``lease_until`` stay out of every index (heap-only lease writes, see
``syncsvc/db/leases.py``). SQLite rebuilds the table, as it must for a generated column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "56f486b70c7a"
down_revision: str | Sequence[str] | None = "9a4c2e7b1f08"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_EARLIER = (
    "CASE WHEN next_refresh_at IS NULL THEN next_sync_at "
    "WHEN next_sync_at IS NULL OR next_refresh_at < next_sync_at THEN next_refresh_at "
    "ELSE next_sync_at END"
)
NEXT_DUE_SQL = (
    f"CASE WHEN ({_EARLIER}) IS NULL THEN NULL "
    f"WHEN backoff_until > ({_EARLIER}) THEN backoff_until "
    f"ELSE ({_EARLIER}) END"
)
ACTIVE = "status = 'active'"


def _recreate() -> Literal["always", "auto"]:
    return "always" if op.get_context().dialect.name == "sqlite" else "auto"


def _next_due(expression: str) -> sa.Column[object]:
    return sa.Column(
        "next_due_at", sa.DateTime(timezone=True), sa.Computed(expression, persisted=True)
    )


def upgrade() -> None:
    """Upgrade the schema."""
    with op.batch_alter_table("connections", recreate=_recreate()) as batch_op:
        batch_op.drop_index("ix_connections_status_next_due_at_id")
        batch_op.drop_index("ix_connections_next_refresh_at")
        batch_op.drop_index("ix_connections_next_sync_at")
        batch_op.drop_column("next_due_at")
    with op.batch_alter_table("connections", recreate=_recreate()) as batch_op:
        batch_op.add_column(_next_due(NEXT_DUE_SQL))
        batch_op.create_index(
            "ix_connections_due",
            ["next_due_at", "id"],
            unique=False,
            postgresql_where=sa.text(ACTIVE),
            sqlite_where=sa.text(ACTIVE),
        )


def downgrade() -> None:
    """Revert :func:`upgrade`."""
    with op.batch_alter_table("connections", recreate=_recreate()) as batch_op:
        batch_op.drop_index("ix_connections_due")
        batch_op.drop_column("next_due_at")
    with op.batch_alter_table("connections", recreate=_recreate()) as batch_op:
        batch_op.add_column(_next_due(_EARLIER))
        batch_op.create_index("ix_connections_next_sync_at", ["next_sync_at"], unique=False)
        batch_op.create_index("ix_connections_next_refresh_at", ["next_refresh_at"], unique=False)
        batch_op.create_index(
            "ix_connections_status_next_due_at_id", ["status", "next_due_at", "id"], unique=False
        )
