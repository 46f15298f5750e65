"""Per-type failure schedule (transient_error, failing) and retries counted in each run.

Revision ID: 7c1e9a4b2d30
Revises: 29e0fc659213
Create Date: 2026-12-04 23:20:00 UTC

A resource type whose requests keep failing is retried on its own schedule: ``sync_states``
gains the next attempt's time, the failures in a row and when they began, and two statuses
(``transient_error``, then ``failing`` past a threshold). ``sync_runs.retries`` counts the
requests a run retried in place. Types are spelled out rather than imported from ``syncsvc.db``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "7c1e9a4b2d30"
down_revision: str | Sequence[str] | None = "29e0fc659213"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_STATUSES = "status IN ('ok', 'denied', 'error')"
NEW_STATUSES = "status IN ('ok', 'denied', 'error', 'transient_error', 'failing')"


def _recreate() -> Literal["always", "auto"]:
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    """Upgrade the schema."""
    with op.batch_alter_table("sync_states", recreate=_recreate()) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True)))
        batch_op.add_column(
            sa.Column("failure_count", sa.Integer(), nullable=False, server_default="0")
        )
        batch_op.add_column(sa.Column("failing_since", sa.DateTime(timezone=True)))
        batch_op.drop_constraint(op.f("ck_sync_states_status"), type_="check")
        batch_op.create_check_constraint("status", NEW_STATUSES)
    with op.batch_alter_table("sync_runs") as batch_op:
        batch_op.add_column(sa.Column("retries", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    """Revert :func:`upgrade` (types waiting for a retry read as plain errors)."""
    with op.batch_alter_table("sync_runs") as batch_op:
        batch_op.drop_column("retries")
    op.execute(
        "UPDATE sync_states SET status = 'error' WHERE status IN ('transient_error', 'failing')"
    )
    with op.batch_alter_table("sync_states", recreate=_recreate()) as batch_op:
        batch_op.drop_constraint(op.f("ck_sync_states_status"), type_="check")
        batch_op.create_check_constraint("status", OLD_STATUSES)
        batch_op.drop_column("failing_since")
        batch_op.drop_column("failure_count")
        batch_op.drop_column("next_attempt_at")
