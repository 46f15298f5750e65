"""Grant states: connection status ``no_access``, type states ``not_granted`` and ``withdrawn``.

Revision ID: 5b0e7f2a9c41
Revises: 5c1a7e9d2b40
Create Date: 2026-12-04 23:00:00 UTC

The check constraints of ``connections.status`` and ``sync_states.status`` are widened. Active
connections whose grant lets syncsvc read none of the tenant's resource types become
``no_access`` (they were reported ``active`` while every run did nothing). The scope test is
frozen here: it must not change when the application's scope parser does.

Downgrading turns ``no_access`` into ``needs_reauth``, ``withdrawn`` into ``denied`` (data kept,
type not pulled) and forgets ``not_granted`` rows (they hold no sync progress).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "5b0e7f2a9c41"
down_revision: str | Sequence[str] | None = "5c1a7e9d2b40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OLD_CONNECTION = ("active", "needs_reauth", "revoked", "misbound", "error")
NEW_CONNECTION = ("active", "no_access", "needs_reauth", "revoked", "misbound", "error")
OLD_TYPE = ("ok", "denied", "error", "transient_error", "failing")
NEW_TYPE = (*OLD_TYPE, "not_granted", "withdrawn")
#: The default resource types of a tenant that configured none (as of this revision).
DEFAULT_TYPES = (
    "Patient",
    "Observation",
    "Condition",
    "MedicationRequest",
    "AllergyIntolerance",
    "Immunization",
    "Encounter",
    "Procedure",
    "DiagnosticReport",
    "DocumentReference",
    "CarePlan",
    "Goal",
)
_READ_SCOPE = re.compile(
    r"^(?:patient|user)/(?P<type>\*|[a-z][a-z0-9]*)\.(?P<perm>read|\*|[cruds]+)(?:\?.*)?$",
    re.IGNORECASE,
)


#: ``connections.next_due_at`` as revision b6cbeeb2c205 made it.
NEXT_DUE_SQL = (
    "CASE WHEN next_refresh_at IS NULL THEN next_sync_at "
    "WHEN next_sync_at IS NULL OR next_refresh_at < next_sync_at THEN next_refresh_at "
    "ELSE next_sync_at END"
)
DUE_INDEX = "ix_connections_status_next_due_at_id"


def _sqlite() -> bool:
    return op.get_bind().dialect.name == "sqlite"


def _in(column: str, values: Sequence[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _check(table: str, column: str, values: Sequence[str]) -> None:
    """Replace ``ck_{table}_{column}``: ALTER TABLE on PostgreSQL, a table rebuild on SQLite.

    SQLite cannot copy a stored generated column into a rebuilt table, so there
    ``connections.next_due_at`` is dropped with the old table and added back to the new one
    (it is computed, so nothing is lost).
    """
    name = f"ck_{table}_{column}"
    due_column = _sqlite() and table == "connections"
    recreate: Literal["always", "auto"] = "always" if _sqlite() else "auto"
    with op.batch_alter_table(table, recreate=recreate) as batch_op:
        if due_column:
            batch_op.drop_index(DUE_INDEX)
            batch_op.drop_column("next_due_at")
        batch_op.drop_constraint(op.f(name), type_="check")
        batch_op.create_check_constraint(op.f(name), _in(column, values))
    if due_column:
        with op.batch_alter_table(table, recreate="always") as batch_op:
            batch_op.add_column(
                sa.Column(
                    "next_due_at",
                    sa.DateTime(timezone=True),
                    sa.Computed(NEXT_DUE_SQL, persisted=True),
                    nullable=True,
                )
            )
            batch_op.create_index(DUE_INDEX, ["status", "next_due_at", "id"], unique=False)


def _readable(granted: Sequence[str], wanted: Sequence[str]) -> bool:
    readable: set[str] = set()
    for scope in granted:
        match = _READ_SCOPE.match(scope.strip())
        if match is None:
            continue
        perm = match["perm"].lower()
        if perm in ("read", "*") or "r" in perm or "s" in perm:
            readable.add(match["type"].lower())
    return "*" in readable or any(t.lower() in readable for t in wanted)


def upgrade() -> None:
    """Upgrade the schema, then mark active grants that can read nothing ``no_access``."""
    _check("connections", "status", NEW_CONNECTION)
    _check("sync_states", "status", NEW_TYPE)
    bind = op.get_bind()
    tenants = sa.table("tenants", sa.column("id"), sa.column("configured_scopes", sa.JSON))
    connections = sa.table(
        "connections",
        sa.column("id"),
        sa.column("tenant_id"),
        sa.column("status"),
        sa.column("status_reason"),
        sa.column("status_message"),
        sa.column("granted_scopes", sa.JSON),
        sa.column("next_sync_at"),
        sa.column("next_refresh_at"),
        sa.column("updated_at"),
    )
    wanted = {
        row.id: tuple(row.configured_scopes or ()) or DEFAULT_TYPES
        for row in bind.execute(sa.select(tenants.c.id, tenants.c.configured_scopes))
    }
    rows = bind.execute(
        sa.select(connections.c.id, connections.c.tenant_id, connections.c.granted_scopes).where(
            connections.c.status == "active"
        )
    ).all()
    now = dt.datetime.now(dt.UTC)
    for row in rows:
        if _readable(row.granted_scopes or (), wanted.get(row.tenant_id, DEFAULT_TYPES)):
            continue
        bind.execute(
            sa.update(connections)
            .where(connections.c.id == row.id)
            .values(
                status="no_access",
                status_reason="no_readable_type",
                status_message=None,
                next_sync_at=None,
                next_refresh_at=None,
                updated_at=now,
            )
        )


def downgrade() -> None:
    """Revert :func:`upgrade` (see the module docstring for what new states become)."""
    op.execute("UPDATE connections SET status = 'needs_reauth' WHERE status = 'no_access'")
    op.execute("DELETE FROM sync_states WHERE status = 'not_granted'")
    op.execute("UPDATE sync_states SET status = 'denied' WHERE status = 'withdrawn'")
    _check("sync_states", "status", OLD_TYPE)
    _check("connections", "status", OLD_CONNECTION)
