"""Granular scopes: the scope syntax each tenant asks in, and the parts of a type each pull covers.

Revision ID: 5e7b3d9c4a26
Revises: 8a4c2e6f1b93
Create Date: 2026-12-05 21:40:00 UTC

``tenants.scope_syntax`` is the operator's choice of SMART scope syntax (``auto``: v2 where the
server advertises ``permission-v2``, else v1). ``sync_states.granted_parts`` lists the parts of a
type (query qualifiers such as ``category=<system>|laboratory``) that the type's last completed
pull searched, NULL for the whole type: a grant that adds a part makes the next pull a full one.
``sync_states.withdrawn_parts`` lists the parts a refresh stopped sharing while the type stayed
granted (``*``: all but the parts still granted): what was synced of them is kept, not updated.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "5e7b3d9c4a26"
down_revision: str | Sequence[str] | None = "8a4c2e6f1b93"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SCOPE_SYNTAXES = "scope_syntax IN ('auto', 'v1', 'v2')"


def _recreate() -> Literal["always", "auto"]:
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def upgrade() -> None:
    """Upgrade the schema."""
    with op.batch_alter_table("tenants", recreate=_recreate()) as batch_op:
        batch_op.add_column(
            sa.Column("scope_syntax", sa.String(4), nullable=False, server_default="auto")
        )
        batch_op.create_check_constraint("scope_syntax", SCOPE_SYNTAXES)
    with op.batch_alter_table("sync_states") as batch_op:
        batch_op.add_column(sa.Column("granted_parts", sa.JSON()))
        batch_op.add_column(sa.Column("withdrawn_parts", sa.JSON()))


def downgrade() -> None:
    """Revert :func:`upgrade`."""
    with op.batch_alter_table("sync_states") as batch_op:
        batch_op.drop_column("withdrawn_parts")
        batch_op.drop_column("granted_parts")
    with op.batch_alter_table("tenants", recreate=_recreate()) as batch_op:
        batch_op.drop_constraint(op.f("ck_tenants_scope_syntax"), type_="check")
        batch_op.drop_column("scope_syntax")
