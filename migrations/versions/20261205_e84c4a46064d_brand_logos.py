"""Brand logos: fetched and checked at import, stored once by digest, served by syncsvc.

Revision ID: e84c4a46064d
Revises: 3ecedcc582b8
Create Date: 2026-12-05 21:45:00 UTC

Types are spelled out rather than imported from ``syncsvc.db``. ``tenants.logo_sha256`` has no
foreign key: adding one on SQLite would copy the tenants table, and the import that writes it
also deletes the logos no tenant shows.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e84c4a46064d"
down_revision: str | Sequence[str] | None = "3ecedcc582b8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    op.create_table(
        "logos",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("content_type", sa.String(length=32), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_logos")),
    )
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("logo_sha256", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("logo_url", sa.String(length=2048), nullable=True))


def downgrade() -> None:
    """Revert :func:`upgrade`."""
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.drop_column("logo_url")
        batch_op.drop_column("logo_sha256")
    op.drop_table("logos")
