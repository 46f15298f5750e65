"""Which of a tenant's resource types its server can serve per patient, and why not.

A type is ``unsupported`` at a tenant when the vendor's plan says the vendor cannot search it per
patient (Epic and Oracle Health serve Provenance only by id or target), or when the server's
CapabilityStatement lists resources and leaves the type out. Such a type is never asked for at
launch, never pulled, and shown as unsupported on every surface, never as a failure. Patient is
always supported: it is read, not searched, and the launch names it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence

from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import run_repo
from syncsvc.db.models.connections import Tenant
from syncsvc.db.models.records import SyncState
from syncsvc.fhir.plans import VendorPlan, plan_for
from syncsvc.smart.discovery import SmartConfiguration
from syncsvc.smart.scopes import plan_scopes
from syncsvc.sync.tenant_config import resource_types_of, smart_configuration
from syncsvc.vocabulary import UNSUPPORTED

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
    changed = False
    for resource_type, reason in unsupported.items():
        state = states.get(resource_type)
        if state is not None and state.status == UNSUPPORTED and state.error_message == reason:
            continue
        await run_repo.save_sync_state(
            session,
            connection_id,
            resource_type,
            now=now,
            status=UNSUPPORTED,
            error_class=None,
            error_message=reason,
            grant_fingerprint=None,
            next_attempt_at=None,
            failure_count=0,
            failing_since=None,
        )
        changed = True
    for resource_type, state in states.items():
        if state.status == UNSUPPORTED and resource_type not in unsupported:
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
