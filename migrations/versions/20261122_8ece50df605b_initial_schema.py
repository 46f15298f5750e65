"""Initial schema: tenants, connections, credentials, launch attempts, connect links.

Revision ID: 8ece50df605b
Revises:
Create Date: 2026-11-22 14:30:30 UTC

Types are spelled out here rather than imported from ``syncsvc.db``: a migration must keep meaning
what it meant when it was written, whatever the models become later.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "8ece50df605b"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

URL = sa.String(length=2048)


def _timestamp(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    """Create every table."""
    op.create_table(
        "tenants",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("vendor", sa.String(length=16), nullable=False),
        sa.Column("fhir_base", URL, nullable=False),
        sa.Column("issuer", URL, nullable=True),
        sa.Column("endpoints", sa.JSON(), nullable=False),
        sa.Column("capabilities", sa.JSON(), nullable=False),
        sa.Column("scopes_supported", sa.JSON(), nullable=True),
        _timestamp("discovery_fetched_at", nullable=True),
        sa.Column("discovery_error", sa.Text(), nullable=True),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("auth_method", sa.String(length=32), nullable=False),
        sa.Column("client_secret_enc", sa.Text(), nullable=True),
        sa.Column("private_key_enc", sa.Text(), nullable=True),
        sa.Column("key_id", sa.String(length=255), nullable=True),
        sa.Column("redirect_uri", URL, nullable=False),
        sa.Column("configured_scopes", sa.JSON(), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        sa.CheckConstraint(
            "auth_method IN ('public', 'client_secret_basic', 'client_secret_post', "
            "'private_key_jwt')",
            name=op.f("ck_tenants_auth_method"),
        ),
        sa.CheckConstraint(
            "vendor IN ('cerner', 'epic', 'generic')", name=op.f("ck_tenants_vendor")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
        sa.UniqueConstraint("fhir_base", name=op.f("uq_tenants_fhir_base")),
        sa.UniqueConstraint("name", name=op.f("uq_tenants_name")),
    )

    op.create_table(
        "connections",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("patient_id", sa.String(length=255), nullable=False),
        sa.Column("fhir_base", URL, nullable=False),
        sa.Column("aud", URL, nullable=False),
        sa.Column("issuer", URL, nullable=True),
        sa.Column("token_endpoint", URL, nullable=False),
        sa.Column("client_id", sa.String(length=255), nullable=False),
        sa.Column("requested_scopes", sa.JSON(), nullable=False),
        sa.Column("granted_scopes", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.String(length=64), nullable=True),
        sa.Column("status_message", sa.Text(), nullable=True),
        sa.Column("error_uri", URL, nullable=True),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        _timestamp("connected_at", nullable=True),
        _timestamp("last_refresh_at", nullable=True),
        _timestamp("last_sync_at", nullable=True),
        _timestamp("last_success_at", nullable=True),
        _timestamp("next_refresh_at", nullable=True),
        _timestamp("next_sync_at", nullable=True),
        sa.Column("lease_owner", sa.String(length=255), nullable=True),
        _timestamp("lease_until", nullable=True),
        sa.Column("failure_count", sa.Integer(), nullable=False),
        _timestamp("backoff_until", nullable=True),
        sa.CheckConstraint(
            "status IN ('active', 'needs_reauth', 'revoked', 'misbound', 'error')",
            name=op.f("ck_connections_status"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_connections_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connections")),
        sa.UniqueConstraint(
            "tenant_id",
            "user_id",
            "patient_id",
            name=op.f("uq_connections_tenant_id_user_id_patient_id"),
        ),
    )
    # The scheduler's "what is due" and "whose lease expired" queries read these.
    op.create_index(op.f("ix_connections_next_refresh_at"), "connections", ["next_refresh_at"])
    op.create_index(op.f("ix_connections_next_sync_at"), "connections", ["next_sync_at"])
    op.create_index(op.f("ix_connections_lease_until"), "connections", ["lease_until"])
    op.create_index(op.f("ix_connections_user_id"), "connections", ["user_id"])

    op.create_table(
        "credentials",
        sa.Column("connection_id", sa.String(length=36), nullable=False),
        sa.Column("refresh_token_enc", sa.Text(), nullable=True),
        sa.Column("access_token_enc", sa.Text(), nullable=True),
        _timestamp("access_expires_at", nullable=True),
        _timestamp("refresh_expires_at", nullable=True),
        sa.Column("key_id", sa.String(length=32), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        _timestamp("updated_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["connection_id"],
            ["connections.id"],
            name=op.f("fk_credentials_connection_id_connections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("connection_id", name=op.f("pk_credentials")),
    )

    op.create_table(
        "launch_attempts",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("state_hash", sa.String(length=64), nullable=False),
        sa.Column("code_verifier_enc", sa.Text(), nullable=False),
        sa.Column("nonce", sa.String(length=128), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("browser_binding_hash", sa.String(length=64), nullable=False),
        sa.Column("requested_scopes", sa.JSON(), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("expires_at", nullable=False),
        _timestamp("used_at", nullable=True),
        sa.Column("outcome", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_launch_attempts_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_launch_attempts")),
        sa.UniqueConstraint("state_hash", name=op.f("uq_launch_attempts_state_hash")),
    )
    op.create_index(op.f("ix_launch_attempts_expires_at"), "launch_attempts", ["expires_at"])

    op.create_table(
        "connect_links",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=True),
        _timestamp("created_at", nullable=False),
        _timestamp("expires_at", nullable=False),
        _timestamp("used_at", nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_connect_links_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_connect_links")),
    )
    op.create_index(op.f("ix_connect_links_expires_at"), "connect_links", ["expires_at"])


def downgrade() -> None:
    """Drop every table (dependants first); their indexes go with them."""
    op.drop_table("connect_links")
    op.drop_table("launch_attempts")
    op.drop_table("credentials")
    op.drop_table("connections")
    op.drop_table("tenants")
