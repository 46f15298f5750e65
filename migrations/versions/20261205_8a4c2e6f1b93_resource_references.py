"""Referenced resources: each connection's references to shared resources, and its scan position.

Revision ID: 8a4c2e6f1b93
Revises: e84c4a46064d
Create Date: 2026-12-05 21:40:00 UTC

Types are spelled out rather than imported from ``syncsvc.db``, so this revision keeps meaning
what it meant when it was written.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8a4c2e6f1b93"
down_revision: str | Sequence[str] | None = "e84c4a46064d"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATES = ("pending", "stored", "missing", "denied", "failed", "not_granted", "outside_base")


def upgrade() -> None:
    op.create_table(
        "resource_references",
        sa.Column("connection_id", sa.String(36), nullable=False),
        sa.Column("ref_key", sa.String(129), nullable=False),
        sa.Column("resource_type", sa.String(64), nullable=True),
        sa.Column("resource_id", sa.String(64), nullable=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=True),
        sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("checked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN (" + ", ".join(f"'{s}'" for s in _STATES) + ")",
            name=op.f("ck_resource_references_state"),
        ),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_resource_references_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("connection_id", "ref_key", name=op.f("pk_resource_references")),
    )
    op.create_table(
        "reference_scans",
        sa.Column("connection_id", sa.String(36), nullable=False),
        sa.Column("scanned_seq", sa.BigInteger(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("over_cap", sa.Integer(), server_default="0", nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_reference_scans_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("connection_id", name=op.f("pk_reference_scans")),
    )


def downgrade() -> None:
    op.drop_table("reference_scans")
    op.drop_table("resource_references")
