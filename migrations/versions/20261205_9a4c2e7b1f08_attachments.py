"""Attachments of clinical documents: compressed contents per connection, and what became of each.

Revision ID: 9a4c2e7b1f08
Revises: 5e7b3d9c4a26
Create Date: 2026-12-05 21:30:00 UTC

Types are spelled out rather than imported from ``syncsvc.db``, so this revision keeps meaning
what it meant when it was written. Every table hangs off ``connections`` with ``ON DELETE
CASCADE``: erasing a connection erases its documents' contents with it.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9a4c2e7b1f08"
down_revision: str | Sequence[str] | None = "5e7b3d9c4a26"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Upgrade the schema."""
    op.create_table(
        "attachment_blobs",
        sa.Column("connection_id", sa.String(length=36), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("codec", sa.String(length=16), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("stored_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("codec IN ('zlib', 'identity')", name=op.f("ck_attachment_blobs_codec")),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_attachment_blobs_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("connection_id", "sha256", name=op.f("pk_attachment_blobs")),
    )
    op.create_table(
        "attachment_sources",
        sa.Column("connection_id", sa.String(length=36), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("resource_hash", sa.String(length=64), nullable=False),
        sa.Column("examined_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_attachment_sources_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "connection_id", "resource_type", "resource_id", name=op.f("pk_attachment_sources")
        ),
    )
    op.create_table(
        "attachments",
        sa.Column("connection_id", sa.String(length=36), nullable=False),
        sa.Column("resource_type", sa.String(length=64), nullable=False),
        sa.Column("resource_id", sa.String(length=64), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("url", sa.String(length=2048), nullable=True),
        sa.Column("declared_type", sa.String(length=255), nullable=True),
        sa.Column("title", sa.String(length=200), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=True),
        sa.Column("detail", sa.Text(), nullable=True),
        sa.Column("content_type", sa.String(length=255), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "reason IN ('too_large', 'connection_cap', 'type_not_allowed', 'type_mismatch', "
            "'not_granted', 'outside_base', 'unusable_url', 'bad_data', 'denied', 'not_found', "
            "'http_error', 'transient')",
            name=op.f("ck_attachments_reason"),
        ),
        sa.CheckConstraint(
            "status IN ('stored', 'skipped', 'refused', 'failed')",
            name=op.f("ck_attachments_status"),
        ),
        sa.ForeignKeyConstraint(
            ["connection_id", "sha256"],
            ["attachment_blobs.connection_id", "attachment_blobs.sha256"],
            name="fk_attachments_blob",
        ),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_attachments_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "connection_id", "resource_type", "resource_id", "position", name=op.f("pk_attachments")
        ),
    )
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.create_index(
            "ix_attachments_connection_id_sha256", ["connection_id", "sha256"], unique=False
        )


def downgrade() -> None:
    """Revert :func:`upgrade`."""
    with op.batch_alter_table("attachments", schema=None) as batch_op:
        batch_op.drop_index("ix_attachments_connection_id_sha256")

    op.drop_table("attachments")
    op.drop_table("attachment_sources")
    op.drop_table("attachment_blobs")
