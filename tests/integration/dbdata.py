"""Small builders for database rows used by the storage tests."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import repo
from syncsvc.db.models.connections import Connection, Tenant


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


async def add_tenant(session: AsyncSession, **overrides: Any) -> Tenant:
    """A generic tenant with a unique name and base."""
    suffix = uuid.uuid4().hex[:8]
    fields: dict[str, Any] = {
        "name": f"tenant-{suffix}",
        "display_name": f"Tenant {suffix}",
        "vendor": "generic",
        "fhir_base": f"https://ehr.example/fhir/{suffix}",
        "client_id": "client-1",
        "redirect_uri": "http://127.0.0.1:8000/callback",
        "configured_scopes": ["Patient", "Observation"],
    }
    fields.update(overrides)
    return await repo.create_tenant(session, now=utcnow(), **fields)


async def add_connection(
    session: AsyncSession,
    tenant: Tenant,
    *,
    patient_id: str | None = None,
    user_id: str | None = None,
    **fields: Any,
) -> Connection:
    """An active connection of a fresh user to ``tenant``."""
    return await repo.create_connection(
        session,
        tenant_id=tenant.id,
        user_id=user_id or f"user-{uuid.uuid4().hex[:8]}",
        patient_id=patient_id or f"patient-{uuid.uuid4().hex[:8]}",
        fhir_base=tenant.fhir_base,
        aud=tenant.fhir_base,
        token_endpoint=f"{tenant.fhir_base}/token",
        client_id=tenant.client_id,
        requested_scopes=["patient/Patient.read", "patient/Observation.read"],
        granted_scopes=["patient/Patient.read"],
        now=utcnow(),
        **fields,
    )
