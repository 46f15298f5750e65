"""Unsearchable parts: type state ``unsearchable`` and the granted parts a vendor cannot search.

Revision ID: c3e1a7d95b42
Revises: 56f486b70c7a
Create Date: 2026-12-06 00:40:00 UTC

A type granted only in parts (SMART v2 query qualifiers) may be granted only in parts its
tenant's vendor plan cannot search (a category the vendor's searches do not take). Such a type
was silently left out and shown as "not synced yet"; it is now ``unsearchable``, a state of its
own. ``sync_states.unsearchable_parts`` lists the granted parts (``category=<system>|<code>``)
the vendor cannot search, for an ``unsearchable`` type and for a type pulled in its other parts.

Downgrading forgets ``unsearchable`` rows (they hold no sync progress: the next run of the
older release leaves the type out again).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "c3e1a7d95b42"
down_revision: str | Sequence[str] | None = "56f486b70c7a"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_TYPE = (
    "ok",
    "denied",
    "error",
    "transient_error",
    "failing",
    "not_granted",
    "withdrawn",
    "unsupported",
)
NEW_TYPE = (*OLD_TYPE, "unsearchable")


def _recreate() -> Literal["always", "auto"]:
    return "always" if op.get_bind().dialect.name == "sqlite" else "auto"


def _check(values: Sequence[str]) -> None:
    name = "ck_sync_states_status"
    with op.batch_alter_table("sync_states", recreate=_recreate()) as batch_op:
        batch_op.drop_constraint(op.f(name), type_="check")
        batch_op.create_check_constraint(
            op.f(name), f"status IN ({', '.join(repr(v) for v in values)})"
        )


def upgrade() -> None:
    """Widen the type-state check and add ``sync_states.unsearchable_parts``."""
    _check(NEW_TYPE)
    with op.batch_alter_table("sync_states") as batch_op:
        batch_op.add_column(sa.Column("unsearchable_parts", sa.JSON()))


def downgrade() -> None:
    """Revert :func:`upgrade` (see the module docstring)."""
    op.execute("DELETE FROM sync_states WHERE status = 'unsearchable'")
    with op.batch_alter_table("sync_states") as batch_op:
        batch_op.drop_column("unsearchable_parts")
    _check(OLD_TYPE)
