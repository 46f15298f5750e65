"""The provider search's short queries: an ordered index over the start of each name.

Revision ID: 9a4c2e7b1d63
Revises: 3d8f6a1c2e57
Create Date: 2026-12-05 21:30:00 UTC

One or two letters match most of a directory as word prefixes, and ranking all of them costs in
proportion to its size. A query that short is answered from the start of the name instead: a
range of this index, read in its order and cut to the page. Byte order (``COLLATE "C"`` on
PostgreSQL, SQLite's default) keeps the range a plain prefix of the folded ASCII terms. On
PostgreSQL the index is on an expression (the name's first 64 characters, well inside a B-tree
entry's size limit), so it lives in the migration only, like the full-text index; SQLite, which
cannot reflect an expression index, indexes the column itself.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "9a4c2e7b1d63"
down_revision: str | Sequence[str] | None = "3d8f6a1c2e57"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The table's rowid (its id) ends every SQLite index entry already.
_SQLITE = "CREATE INDEX ix_tenant_search_name_prefix ON tenant_search (name_terms)"
# The id in the index too: the page is read in (prefix, id) order without a sort.
_POSTGRES = (
    "CREATE INDEX ix_tenant_search_name_prefix ON tenant_search "
    '((substr(name_terms, 1, 64) COLLATE "C"), id)'
)


def upgrade() -> None:
    """Upgrade the schema."""
    op.execute(_SQLITE if op.get_bind().dialect.name == "sqlite" else _POSTGRES)


def downgrade() -> None:
    """Revert :func:`upgrade`."""
    op.execute("DROP INDEX ix_tenant_search_name_prefix")
