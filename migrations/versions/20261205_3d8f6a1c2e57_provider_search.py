"""The provider picker: what a patient recognises a tenant by, delisting, and a search index.

Revision ID: 3d8f6a1c2e57
Revises: 5b0e7f2a9c41
Create Date: 2026-12-05 05:00:00 UTC

Types are spelled out rather than imported from ``syncsvc.db``, so this revision keeps meaning
what it meant when it was written. The index over ``tenant_search`` differs by database and is
not in the models: an external-content FTS5 table kept in step by triggers on SQLite (accents are
folded before the terms are written, so ``unicode61``'s defaults suffice), a GIN full-text index
on PostgreSQL (no extension needed).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3d8f6a1c2e57"
down_revision: str | Sequence[str] | None = "5b0e7f2a9c41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_SQLITE_INDEX = (
    "CREATE VIRTUAL TABLE tenant_search_fts USING fts5("
    "name_terms, alias_terms, place_terms, content='tenant_search', content_rowid='id')",
    "CREATE TRIGGER tenant_search_fts_insert AFTER INSERT ON tenant_search BEGIN "
    "INSERT INTO tenant_search_fts(rowid, name_terms, alias_terms, place_terms) "
    "VALUES (new.id, new.name_terms, new.alias_terms, new.place_terms); END",
    "CREATE TRIGGER tenant_search_fts_delete AFTER DELETE ON tenant_search BEGIN "
    "INSERT INTO tenant_search_fts(tenant_search_fts, rowid, name_terms, alias_terms, "
    "place_terms) "
    "VALUES ('delete', old.id, old.name_terms, old.alias_terms, old.place_terms); END",
    "CREATE TRIGGER tenant_search_fts_update AFTER UPDATE ON tenant_search BEGIN "
    "INSERT INTO tenant_search_fts(tenant_search_fts, rowid, name_terms, alias_terms, "
    "place_terms) "
    "VALUES ('delete', old.id, old.name_terms, old.alias_terms, old.place_terms); "
    "INSERT INTO tenant_search_fts(rowid, name_terms, alias_terms, place_terms) "
    "VALUES (new.id, new.name_terms, new.alias_terms, new.place_terms); END",
)
_POSTGRES_INDEX = (
    "CREATE INDEX ix_tenant_search_document_fts ON tenant_search "
    "USING gin (to_tsvector('simple'::regconfig, document))",
)


def upgrade() -> None:
    """Upgrade the schema."""
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.add_column(sa.Column("street", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("city", sa.String(length=100), nullable=True))
        batch_op.add_column(sa.Column("state", sa.String(length=50), nullable=True))
        batch_op.add_column(sa.Column("postal_code", sa.String(length=20), nullable=True))
        batch_op.add_column(
            sa.Column("aliases", sa.JSON(), nullable=False, server_default=sa.text("'[]'"))
        )
        batch_op.add_column(sa.Column("brand_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("portal_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("directory", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("delisted_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        batch_op.alter_column("aliases", server_default=None)
    op.create_table(
        "tenant_search",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("tenant_id", sa.String(length=36), nullable=False),
        sa.Column("name_terms", sa.Text(), nullable=False),
        sa.Column("alias_terms", sa.Text(), nullable=False),
        sa.Column("place_terms", sa.Text(), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_tenant_search_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenant_search")),
        sa.UniqueConstraint("tenant_id", name=op.f("uq_tenant_search_tenant_id")),
    )
    sqlite = op.get_bind().dialect.name == "sqlite"
    for statement in _SQLITE_INDEX if sqlite else _POSTGRES_INDEX:
        op.execute(statement)
    # Tenants registered before: their names, lower-cased (the next import or register folds
    # accents and adds the rest).
    op.execute(
        "INSERT INTO tenant_search (tenant_id, name_terms, alias_terms, place_terms, document) "
        "SELECT id, lower(display_name), '', '', lower(display_name) FROM tenants"
    )


def downgrade() -> None:
    """Revert :func:`upgrade`."""
    if op.get_bind().dialect.name == "sqlite":
        for trigger in ("insert", "delete", "update"):
            op.execute(f"DROP TRIGGER tenant_search_fts_{trigger}")
        op.execute("DROP TABLE tenant_search_fts")
    else:
        op.execute("DROP INDEX ix_tenant_search_document_fts")
    op.drop_table("tenant_search")
    with op.batch_alter_table("tenants", schema=None) as batch_op:
        for column in (
            "delisted_at",
            "directory",
            "portal_name",
            "brand_name",
            "aliases",
            "postal_code",
            "state",
            "city",
            "street",
        ):
            batch_op.drop_column(column)
