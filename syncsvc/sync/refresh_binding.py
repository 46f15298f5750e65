"""A refresh checked against the connection's binding (patient, tenant) before it is stored.

A grant belongs to one patient at one tenant. A refresh response that names another patient, or
another tenant (Cerner's ``tenant`` field, a readable token's tenant claim), ends the grant as
misbound (:mod:`syncsvc.sync.misbound`) before anything it returned is stored or used.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import repo
from syncsvc.db.models.connections import Connection
from syncsvc.smart.binding import foreign_patient, foreign_tenant
from syncsvc.smart.oauth import TokenResponse

from .context import SyncContext
from .credentials import StoredTokens
from .misbound import PATIENT_MISMATCH, TENANT_MISMATCH, MisboundEnd, end_misbound
from .revocation_queue import GrantToEnd


async def end_if_misbound(
    ctx: SyncContext,
    session: AsyncSession,
    *,
    connection: Connection,
    previous: StoredTokens,
    response: TokenResponse,
    now: dt.datetime,
) -> MisboundEnd | None:
    """End the grant before its new token is stored if the EHR renewed it for someone else.

    A refresh response naming another patient, or another tenant (Cerner's ``tenant`` field,
    a readable token's tenant claim), makes the connection ``misbound``: nothing it returned is
    stored or used, and the newest token of the grant is queued for revocation.
    """
    other_patient = foreign_patient(connection.patient_id, response)
    other_tenant = None if other_patient else foreign_tenant(connection.fhir_base, response)
    if other_patient is None and other_tenant is None:
        return None
    tenant = await repo.get_tenant(session, connection.tenant_id)
    if tenant is None:  # pragma: no cover - the foreign key forbids it
        return None
    refresh_token = response.refresh_token or previous.refresh_token
    ended = await end_misbound(
        session,
        vault=ctx.vault,
        owner=ctx.owner,
        connection=connection,
        tenant=tenant,
        grant=GrantToEnd.of(refresh_token, response.access_token),
        reason=PATIENT_MISMATCH if other_patient else TENANT_MISMATCH,
        foreign=other_tenant,
        stage="refresh",
        now=now,
    )
    await session.refresh(connection)
    return ended
