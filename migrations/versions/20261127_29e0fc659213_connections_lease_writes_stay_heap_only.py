"""Connections: taking and handing back a lease rewrites no index (a heap-only update).

Revision ID: 29e0fc659213
Revises: b6cbeeb2c205
Create Date: 2026-11-27 07:34:42 UTC

PostgreSQL updates a row without touching its indexes (HOT) only when no indexed column changes
and the new version fits on the same page. A lease writes ``lease_owner`` and ``lease_until``, so:

- ``ix_connections_lease_until`` goes. No query seeks by it (the claim walks
  ``ix_connections_status_next_due_at_id`` and checks the lease on the row; renewing and releasing
  go by primary key), yet it made every lease write insert into all seven indexes of the table.
- ``fillfactor = 80`` leaves room on each page for the new versions. It applies to pages written
  from now on; rows already stored move into such pages as they are next updated (a table rewrite
  applies it at once, at a time an operator chooses).

SQLite has neither concept and only loses the index.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "29e0fc659213"
down_revision: str | Sequence[str] | None = "b6cbeeb2c205"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _postgresql() -> bool:
    # The migration context, not a bind: it also answers for ``alembic upgrade --sql``.
    return op.get_context().dialect.name == "postgresql"


def upgrade() -> None:
    """Upgrade the schema."""
    op.drop_index("ix_connections_lease_until", table_name="connections")
    if _postgresql():
        op.execute("ALTER TABLE connections SET (fillfactor = 80)")


def downgrade() -> None:
    """Revert :func:`upgrade`."""
    if _postgresql():
        op.execute("ALTER TABLE connections RESET (fillfactor)")
    op.create_index("ix_connections_lease_until", "connections", ["lease_until"], unique=False)
