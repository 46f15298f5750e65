"""Failed launches per tenant: the EHR's error, its URN code and description, syncsvc's reason.

Revision ID: 5c1a7e9d2b40
Revises: 7c1e9a4b2d30
Create Date: 2026-12-04 23:00:00 UTC

Types are spelled out rather than imported from ``syncsvc.db``, so this revision keeps meaning
what it meant when it was written.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5c1a7e9d2b40"
down_revision: str | Sequence[str] | None = "7c1e9a4b2d30"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    op.create_table(
        "launch_failures",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("attempt_id", sa.String(length=36), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("syncsvc_reason", sa.String(length=64), nullable=False),
        sa.Column("ehr_error", sa.String(length=100), nullable=True),
        sa.Column("ehr_code", sa.String(length=100), nullable=True),
        sa.Column("ehr_description", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_launch_failures_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_launch_failures")),
    )
    with op.batch_alter_table("launch_failures", schema=None) as batch_op:
        batch_op.create_index("ix_launch_failures_tenant_id_at", ["tenant_id", "at"], unique=False)


def downgrade() -> None:
    """Revert :func:`upgrade`."""
    with op.batch_alter_table("launch_failures", schema=None) as batch_op:
        batch_op.drop_index("ix_launch_failures_tenant_id_at")
    op.drop_table("launch_failures")
