"""US Core types: type state ``unsupported``; tenants keep the resource types they had.

Revision ID: a4c9e2f71b08
Revises: 9a4c2e7b1d63
Create Date: 2026-12-05 21:40:00 UTC

The default resource types grow from twelve to every US Core 6.1 patient type. A tenant that
stored no list of its own followed the default, so the new release would silently ask its
patients for more at their next launch: its list is pinned here to the twelve it had. Tenants
that stored a list keep it as it is. The check constraint of ``sync_states.status`` gains
``unsupported`` (a type the tenant's server does not offer).

Downgrading forgets ``unsupported`` rows (they hold no sync progress); pinned lists stay (they
are what those tenants pulled before the upgrade).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import sqlalchemy as sa
from alembic import op

revision: str = "a4c9e2f71b08"
down_revision: str | Sequence[str] | None = "9a4c2e7b1d63"
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
)
NEW_TYPE = (*OLD_TYPE, "unsupported")
#: The default resource types before this revision, frozen here (the application's change).
PREVIOUS_DEFAULT_TYPES = (
    "Patient",
    "AllergyIntolerance",
    "Condition",
    "Observation",
    "MedicationRequest",
    "Immunization",
    "Procedure",
    "Encounter",
    "DiagnosticReport",
    "DocumentReference",
    "CarePlan",
    "Goal",
)


def _check(values: Sequence[str]) -> None:
    name = "ck_sync_states_status"
    recreate: Literal["always", "auto"] = (
        "always" if op.get_bind().dialect.name == "sqlite" else "auto"
    )
    with op.batch_alter_table("sync_states", recreate=recreate) as batch_op:
        batch_op.drop_constraint(op.f(name), type_="check")
        batch_op.create_check_constraint(
            op.f(name), f"status IN ({', '.join(repr(v) for v in values)})"
        )


def upgrade() -> None:
    """Widen the type-state check and pin the lists of tenants that followed the default."""
    _check(NEW_TYPE)
    bind = op.get_bind()
    tenants = sa.table("tenants", sa.column("id"), sa.column("configured_scopes", sa.JSON))
    for row in bind.execute(sa.select(tenants.c.id, tenants.c.configured_scopes)).all():
        if row.configured_scopes:
            continue
        bind.execute(
            sa.update(tenants)
            .where(tenants.c.id == row.id)
            .values(configured_scopes=list(PREVIOUS_DEFAULT_TYPES))
        )


def downgrade() -> None:
    """Revert :func:`upgrade` (see the module docstring)."""
    op.execute("DELETE FROM sync_states WHERE status = 'unsupported'")
    _check(OLD_TYPE)
