"""Which of a tenant's resource types its server can serve per patient, and why not.

A type is ``unsupported`` at a tenant when the vendor's plan says the vendor cannot search it per
patient (Epic and Oracle Health serve Provenance only by id or target), or when the server's
CapabilityStatement lists resources and leaves the type out. Such a type is never asked for at
launch, never pulled, and shown as unsupported on every surface, never as a failure. Patient is
always supported: it is read, not searched, and the launch names it.

A type the server offers may still be granted only in parts (SMART v2 query qualifiers) that the
vendor cannot search: a category its searches do not take. Such a type is ``unsearchable`` for
that connection, with the parts named: never pulled while so, not a failure, and pulled in full
once the vendor's plan or the grant lets any part of it be searched.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import run_repo
from syncsvc.db.models.connections import Tenant
from syncsvc.db.models.records import SyncState
from syncsvc.fhir.grant_parts import within_grant
from syncsvc.fhir.plans import VendorPlan, plan_for
from syncsvc.smart.discovery import SmartConfiguration
from syncsvc.smart.scope_grammar import Part, part_text
from syncsvc.smart.scopes import plan_scopes, type_grants
from syncsvc.sync.tenant_config import resource_types_of, smart_configuration
from syncsvc.vocabulary import UNSEARCHABLE, UNSUPPORTED

NOT_ADVERTISED = "not listed in the server's CapabilityStatement"


def why_unsupported(
    resource_type: str, vendor_plan: VendorPlan, listed: Mapping[str, Sequence[str]]
) -> str | None:
    """Why the tenant's server cannot serve ``resource_type`` per patient, or None if it can.

    ``listed``: the CapabilityStatement's types (empty when it was not read: nothing follows).
    """
    if resource_type == "Patient":
        return None
    reason = vendor_plan.for_type(resource_type).unsupported
    if reason is not None:
        return reason
    if listed and resource_type not in listed:
        return NOT_ADVERTISED
    return None


def unsupported_types(tenant: Tenant, vendor_plan: VendorPlan | None = None) -> dict[str, str]:
    """The tenant's configured types its server cannot serve, each with why, in its order."""
    plan = vendor_plan or plan_for(tenant.vendor, tenant.plan_overrides)
    config = smart_configuration(tenant)
    listed = config.resource_search_params if config is not None else {}
    found: dict[str, str] = {}
    for resource_type in resource_types_of(tenant):
        reason = why_unsupported(resource_type, plan, listed)
        if reason is not None:
            found[resource_type] = reason
    return found


def pullable_types(tenant: Tenant, vendor_plan: VendorPlan | None = None) -> list[str]:
    """The tenant's configured types its server can serve, in the operator's order."""
    unsupported = unsupported_types(tenant, vendor_plan)
    return [t for t in resource_types_of(tenant) if t not in unsupported]


async def record_unsupported(
    session: AsyncSession,
    connection_id: str,
    tenant: Tenant,
    states: dict[str, SyncState],
    *,
    now: dt.datetime,
    vendor_plan: VendorPlan | None = None,
) -> bool:
    """Make the ``unsupported`` rows of a connection agree with its tenant; whether any changed.

    A type the server cannot serve gets (or keeps) an ``unsupported`` row with the reason; a
    type that was unsupported and is served now loses its row, so the next run pulls it in full
    (a grant that does not cover it is then worded by the grant's own states). ``states`` is
    the caller's view of the rows; it is not updated. In the caller's transaction.
    """
    unsupported = unsupported_types(tenant, vendor_plan)
    explained = {t: _Explained(error_message=reason) for t, reason in unsupported.items()}
    return await _keep_explained_rows(
        session, connection_id, UNSUPPORTED, explained, states, now=now
    )


def unsearchable_types(
    tenant: Tenant, granted_scopes: Iterable[str], vendor_plan: VendorPlan | None = None
) -> dict[str, tuple[Part, ...]]:
    """The granted types whose every granted part the vendor cannot search, with those parts.

    The same narrowing the pull plans with (:func:`syncsvc.fhir.grant_parts.within_grant`), so
    a type is ``unsearchable`` exactly when a run would leave it out.
    """
    plan = vendor_plan or plan_for(tenant.vendor, tenant.plan_overrides)
    found: dict[str, tuple[Part, ...]] = {}
    for resource_type, grant in type_grants(granted_scopes, pullable_types(tenant, plan)).items():
        narrowed = within_grant(plan.for_type(resource_type), grant)
        if narrowed.searched == ():
            found[resource_type] = narrowed.unsearchable
    return found


async def record_unsearchable(
    session: AsyncSession,
    connection_id: str,
    tenant: Tenant,
    granted_scopes: Iterable[str],
    states: dict[str, SyncState],
    *,
    now: dt.datetime,
    vendor_plan: VendorPlan | None = None,
) -> bool:
    """Make the ``unsearchable`` rows of a connection agree with its grant and tenant; whether
    any changed.

    A granted type none of whose parts the vendor can search gets (or keeps) an
    ``unsearchable`` row naming the parts; a type that was unsearchable and has a searchable
    part now (the plan or the grant changed), or is no longer granted, loses its row, so the
    next run pulls it in full (or the grant's own states word it). ``states`` is the caller's
    view of the rows; it is not updated. In the caller's transaction.
    """
    unsearchable = unsearchable_types(tenant, granted_scopes, vendor_plan)
    explained = {
        t: _Explained(unsearchable_parts=tuple(part_text(p) for p in parts))
        for t, parts in unsearchable.items()
    }
    return await _keep_explained_rows(
        session, connection_id, UNSEARCHABLE, explained, states, now=now
    )


@dataclass(frozen=True)
class _Explained:
    """What the row of a type that is not pulled, and says why, holds: a reason or the parts."""

    error_message: str | None = None
    unsearchable_parts: tuple[str, ...] = ()


async def _keep_explained_rows(
    session: AsyncSession,
    connection_id: str,
    status: str,
    explained: Mapping[str, _Explained],
    states: Mapping[str, SyncState],
    *,
    now: dt.datetime,
) -> bool:
    """Make a connection's rows of ``status`` exactly ``explained``; whether any changed.

    A row that already says the same is left alone (no write at every run); a type no longer
    explained this way loses its row, so the next run pulls it in full.
    """
    changed = False
    for resource_type, row in explained.items():
        state = states.get(resource_type)
        if (
            state is not None
            and state.status == status
            and state.error_message == row.error_message
            and tuple(state.unsearchable_parts or ()) == row.unsearchable_parts
        ):
            continue
        await run_repo.save_sync_state(
            session,
            connection_id,
            resource_type,
            now=now,
            status=status,
            error_class=None,
            error_message=row.error_message,
            grant_fingerprint=None,
            next_attempt_at=None,
            failure_count=0,
            failing_since=None,
            unsearchable_parts=list(row.unsearchable_parts) or None,
        )
        changed = True
    for resource_type, state in states.items():
        if state.status == status and resource_type not in explained:
            await session.execute(
                delete(SyncState).where(
                    SyncState.connection_id == connection_id,
                    SyncState.resource_type == resource_type,
                )
            )
            changed = True
    return changed


def scopes_to_request(tenant: Tenant, config: SmartConfiguration) -> list[str]:
    """The scopes a launch at ``tenant`` asks for: its pullable types, in the syntax the
    tenant's option says (see :func:`syncsvc.smart.scopes.preferred_syntax`)."""
    return plan_scopes(pullable_types(tenant), config, tenant.scope_syntax)
