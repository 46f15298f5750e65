"""Per-tenant query plan overrides over the vendor profile.

Revision ID: 69ed2a82fad9
Revises: 31f2b514f162
Create Date: 2026-11-27 04:04:32 UTC
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "69ed2a82fad9"
down_revision: str | Sequence[str] | None = "31f2b514f162"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("plan_overrides", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Revert :func:`upgrade`."""
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("plan_overrides")
