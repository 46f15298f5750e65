"""Synced resources: current versions, history, per-connection cursors, per-type state, runs.

Revision ID: f57e410ce0d5
Revises: 8ece50df605b
Create Date: 2026-11-27 03:40:35 UTC

Types are spelled out here rather than imported from ``syncsvc.db``: a migration must keep meaning
what it meant when it was written, whatever the models become later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "f57e410ce0d5"
down_revision: str | Sequence[str] | None = "8ece50df605b"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONNECTION_ID = sa.String(length=36)
RESOURCE_TYPE = sa.String(length=64)
RESOURCE_ID = sa.String(length=64)
HASH = sa.String(length=64)


def _timestamp(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _connection_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["connection_id"],
        ["connections.id"],
        name=op.f(f"fk_{table}_connection_id_connections"),
        ondelete="CASCADE",
    )


def _counts() -> list[sa.Column[object]]:
    return [
        sa.Column(name, sa.Integer(), nullable=False)
        for name in (
            "new_count",
            "changed_count",
            "unchanged_count",
            "deleted_count",
            "rejected_count",
        )
    ]


def upgrade() -> None:
    """Create the tables of synced resources and sync bookkeeping."""
    op.create_table(
        "resources",
        sa.Column("connection_id", CONNECTION_ID, nullable=False),
        sa.Column("resource_type", RESOURCE_TYPE, nullable=False),
        sa.Column("resource_id", RESOURCE_ID, nullable=False),
        sa.Column("version_id", RESOURCE_ID, nullable=True),
        _timestamp("last_updated", nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("content_hash", HASH, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        _timestamp("stored_at", nullable=False),
        _timestamp("deleted_at", nullable=True),
        sa.Column("deleted_reason", sa.String(length=32), nullable=True),
        sa.CheckConstraint(
            "deleted_reason IN ('vanished', 'entered-in-error')",
            name=op.f("ck_resources_deleted_reason"),
        ),
        _connection_fk("resources"),
        # The primary key also serves "every resource of one type of one connection".
        sa.PrimaryKeyConstraint(
            "connection_id", "resource_type", "resource_id", name=op.f("pk_resources")
        ),
        # Host applications read "what changed since my cursor" through this.
        sa.UniqueConstraint("connection_id", "seq", name=op.f("uq_resources_connection_id_seq")),
    )

    op.create_table(
        "resource_history",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("connection_id", CONNECTION_ID, nullable=False),
        sa.Column("resource_type", RESOURCE_TYPE, nullable=False),
        sa.Column("resource_id", RESOURCE_ID, nullable=False),
        sa.Column("version_id", RESOURCE_ID, nullable=True),
        _timestamp("last_updated", nullable=True),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("content_hash", HASH, nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        _timestamp("stored_at", nullable=False),
        _timestamp("replaced_at", nullable=False),
        _connection_fk("resource_history"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resource_history")),
    )
    op.create_index(
        "ix_resource_history_connection_id_resource_type_resource_id",
        "resource_history",
        ["connection_id", "resource_type", "resource_id"],
    )

    op.create_table(
        "resource_cursors",
        sa.Column("connection_id", CONNECTION_ID, nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        _connection_fk("resource_cursors"),
        sa.PrimaryKeyConstraint("connection_id", name=op.f("pk_resource_cursors")),
    )

    op.create_table(
        "sync_states",
        sa.Column("connection_id", CONNECTION_ID, nullable=False),
        sa.Column("resource_type", RESOURCE_TYPE, nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        _timestamp("watermark", nullable=True),
        _timestamp("last_full_at", nullable=True),
        _timestamp("last_attempt_at", nullable=True),
        _timestamp("last_success_at", nullable=True),
        sa.Column("error_class", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("grant_fingerprint", HASH, nullable=True),
        *_counts(),
        _timestamp("updated_at", nullable=False),
        sa.CheckConstraint(
            "status IN ('ok', 'denied', 'error')", name=op.f("ck_sync_states_status")
        ),
        _connection_fk("sync_states"),
        sa.PrimaryKeyConstraint("connection_id", "resource_type", name=op.f("pk_sync_states")),
    )

    op.create_table(
        "sync_runs",
        sa.Column("id", CONNECTION_ID, nullable=False),
        sa.Column("connection_id", CONNECTION_ID, nullable=False),
        sa.Column("owner", sa.String(length=255), nullable=True),
        sa.Column("full", sa.Boolean(), nullable=False),
        _timestamp("started_at", nullable=False),
        _timestamp("finished_at", nullable=True),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        *_counts(),
        sa.Column("type_results", sa.JSON(), nullable=False),
        sa.Column("error_class", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("bytes_received", sa.BigInteger(), nullable=False),
        sa.Column("requests", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "outcome IN ('running', 'ok', 'partial', 'transient', 'misbound', 'reauth', 'error')",
            name=op.f("ck_sync_runs_outcome"),
        ),
        _connection_fk("sync_runs"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sync_runs")),
    )
    op.create_index(
        "ix_sync_runs_connection_id_started_at", "sync_runs", ["connection_id", "started_at"]
    )


def downgrade() -> None:
    """Drop the tables :func:`upgrade` created; their indexes go with them."""
    op.drop_table("sync_runs")
    op.drop_table("sync_states")
    op.drop_table("resource_cursors")
    op.drop_table("resource_history")
    op.drop_table("resources")
