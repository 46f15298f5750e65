"""Query functions: each takes an ``AsyncSession`` and never commits.

The caller owns the transaction (``async with sessionmaker.begin() as session``). Functions that
must be safe under concurrency are written as one guarded UPDATE whose row count says who won:
single use of launch attempts and connect links, compare-and-swap on credentials, and the lease
that makes refresh and sync single-flight across processes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.errors import Conflict, LaunchError, NotFound

from .base import rowcount
from .columns import new_id
from .leases import claim_rows, lease_free
from .models.connections import Connection, ConnectLink, Credential, LaunchAttempt, Tenant


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


# --- tenants ---------------------------------------------------------------------------------


async def create_tenant(session: AsyncSession, *, now: dt.datetime, **fields: Any) -> Tenant:
    """Insert a tenant (``id`` may be given so secrets can be encrypted for it beforehand)."""
    fields.setdefault("id", new_id())
    tenant = Tenant(created_at=now, updated_at=now, **fields)
    session.add(tenant)
    await session.flush()
    return tenant


async def get_tenant(session: AsyncSession, tenant_id: str) -> Tenant | None:
    """The tenant with this id."""
    return await session.get(Tenant, tenant_id)


async def get_tenant_by_name(session: AsyncSession, name: str) -> Tenant | None:
    """The tenant with this operator handle."""
    return await session.scalar(select(Tenant).where(Tenant.name == name))


async def get_tenant_by_base(session: AsyncSession, fhir_base: str) -> Tenant | None:
    """The tenant for this (normalised) FHIR base."""
    return await session.scalar(select(Tenant).where(Tenant.fhir_base == fhir_base))


async def list_tenants(session: AsyncSession) -> list[Tenant]:
    """Every tenant, by name."""
    return list(await session.scalars(select(Tenant).order_by(Tenant.name)))


@dataclass(frozen=True)
class PrivateKeyRow:
    """A tenant's encrypted private_key_jwt key, as the served JWKS needs it."""

    tenant_id: str
    key_id: str | None
    private_key_enc: str


async def private_key_rows(session: AsyncSession) -> list[PrivateKeyRow]:
    """Every tenant's encrypted private key, by tenant id (no decryption here)."""
    rows = await session.execute(
        select(Tenant.id, Tenant.key_id, Tenant.private_key_enc)
        .where(Tenant.private_key_enc.is_not(None))
        .order_by(Tenant.id)
    )
    return [PrivateKeyRow(str(i), k, str(e)) for i, k, e in rows]


async def update_tenant(
    session: AsyncSession, tenant_id: str, *, now: dt.datetime, **changes: Any
) -> Tenant:
    """Apply ``changes`` to a tenant's columns; NotFound if there is no such tenant."""
    tenant = await get_tenant(session, tenant_id)
    if tenant is None:
        raise NotFound("No such tenant.")
    for name, value in changes.items():
        if name not in Tenant.__table__.columns or name in ("id", "created_at"):
            raise ValueError(f"not an updatable tenant column: {name}")
        setattr(tenant, name, value)
    tenant.updated_at = now
    await session.flush()
    return tenant


async def delete_tenant(session: AsyncSession, tenant_id: str) -> bool:
    """Delete a tenant without connections; returns whether one was deleted."""
    result = await session.execute(delete(Tenant).where(Tenant.id == tenant_id))
    return rowcount(result) == 1


# --- connections -----------------------------------------------------------------------------


async def create_connection(
    session: AsyncSession,
    *,
    tenant_id: str,
    user_id: str,
    patient_id: str,
    fhir_base: str,
    aud: str,
    token_endpoint: str,
    client_id: str,
    now: dt.datetime,
    issuer: str | None = None,
    requested_scopes: Sequence[str] = (),
    granted_scopes: Sequence[str] = (),
    status: str = "active",
    connection_id: str | None = None,
    **fields: Any,
) -> Connection:
    """Insert a connection; IntegrityError if (tenant, user, patient) already exists."""
    connection = Connection(
        id=connection_id or new_id(),
        tenant_id=tenant_id,
        user_id=user_id,
        patient_id=patient_id,
        fhir_base=fhir_base,
        aud=aud,
        issuer=issuer,
        token_endpoint=token_endpoint,
        client_id=client_id,
        requested_scopes=list(requested_scopes),
        granted_scopes=list(granted_scopes),
        status=status,
        failure_count=0,
        created_at=now,
        updated_at=now,
        connected_at=now,
        **fields,
    )
    session.add(connection)
    await session.flush()
    return connection


async def get_connection(session: AsyncSession, connection_id: str) -> Connection | None:
    """The connection with this id."""
    return await session.get(Connection, connection_id)


async def find_connection(
    session: AsyncSession, *, tenant_id: str, user_id: str, patient_id: str
) -> Connection | None:
    """The connection of this user to this patient at this tenant (a reconnect reuses it)."""
    return await session.scalar(
        select(Connection).where(
            Connection.tenant_id == tenant_id,
            Connection.user_id == user_id,
            Connection.patient_id == patient_id,
        )
    )


async def list_connections(
    session: AsyncSession,
    *,
    user_id: str | None = None,
    tenant_id: str | None = None,
    status: str | None = None,
) -> list[Connection]:
    """Connections matching every given filter, oldest first."""
    query = select(Connection).order_by(Connection.created_at, Connection.id)
    if user_id is not None:
        query = query.where(Connection.user_id == user_id)
    if tenant_id is not None:
        query = query.where(Connection.tenant_id == tenant_id)
    if status is not None:
        query = query.where(Connection.status == status)
    return list(await session.scalars(query))


async def set_connection_status(
    session: AsyncSession,
    connection_id: str,
    *,
    status: str,
    now: dt.datetime,
    reason: str | None = None,
    message: str | None = None,
    error_uri: str | None = None,
) -> None:
    """Record a status change with its reason code, human message and the EHR's error link."""
    result = await session.execute(
        update(Connection)
        .where(Connection.id == connection_id)
        .values(
            status=status,
            status_reason=reason,
            status_message=message,
            error_uri=error_uri,
            updated_at=now,
        )
    )
    if rowcount(result) != 1:
        raise NotFound("No such connection.")


# --- credentials -----------------------------------------------------------------------------


async def get_credentials(session: AsyncSession, connection_id: str) -> Credential | None:
    """The current (encrypted) tokens of a connection, read fresh from the database."""
    return await session.scalar(
        select(Credential)
        .where(Credential.connection_id == connection_id)
        .execution_options(populate_existing=True)
    )


async def upsert_credentials(
    session: AsyncSession,
    connection_id: str,
    *,
    expected_version: int | None,
    key_id: str,
    refresh_token_enc: str | None,
    access_token_enc: str | None,
    access_expires_at: dt.datetime | None,
    refresh_expires_at: dt.datetime | None,
    now: dt.datetime,
) -> int:
    """Write a connection's tokens with compare-and-swap; returns the new version.

    ``expected_version=None`` creates the row (version 1) and conflicts if one exists; otherwise
    the write succeeds only if the stored version still equals ``expected_version``. A loser gets
    :class:`~syncsvc.errors.Conflict` and must re-read: another process refreshed first.
    """
    values = {
        "key_id": key_id,
        "refresh_token_enc": refresh_token_enc,
        "access_token_enc": access_token_enc,
        "access_expires_at": access_expires_at,
        "refresh_expires_at": refresh_expires_at,
        "updated_at": now,
    }
    if expected_version is None:
        insert = postgresql.insert if _dialect(session) == "postgresql" else sqlite.insert
        # ON CONFLICT DO NOTHING, not catch-IntegrityError: a failed INSERT would abort the
        # caller's whole PostgreSQL transaction.
        statement = (
            insert(Credential)
            .values(connection_id=connection_id, version=1, **values)
            .on_conflict_do_nothing(index_elements=[Credential.connection_id])
        )
        if rowcount(await session.execute(statement)) != 1:
            raise Conflict("Credentials already exist for this connection.")
        return 1
    result = await session.execute(
        update(Credential)
        .where(
            Credential.connection_id == connection_id,
            Credential.version == expected_version,
        )
        .values(version=expected_version + 1, **values)
        .execution_options(synchronize_session=False)
    )
    if rowcount(result) != 1:
        raise Conflict("The credentials changed since they were read.")
    return expected_version + 1


# --- launch attempts -------------------------------------------------------------------------


async def create_launch_attempt(
    session: AsyncSession,
    *,
    attempt_id: str,
    state_hash: str,
    code_verifier_enc: str,
    nonce: str,
    tenant_id: str,
    user_id: str,
    browser_binding_hash: str,
    requested_scopes: Sequence[str],
    now: dt.datetime,
    ttl_seconds: int,
) -> LaunchAttempt:
    """Record an authorize redirect about to be sent (``attempt_id`` from ``new_id()``)."""
    attempt = LaunchAttempt(
        id=attempt_id,
        state_hash=state_hash,
        code_verifier_enc=code_verifier_enc,
        nonce=nonce,
        tenant_id=tenant_id,
        user_id=user_id,
        browser_binding_hash=browser_binding_hash,
        requested_scopes=list(requested_scopes),
        created_at=now,
        expires_at=now + dt.timedelta(seconds=ttl_seconds),
    )
    session.add(attempt)
    await session.flush()
    return attempt


async def consume_launch_attempt(
    session: AsyncSession, *, state_hash: str, browser_binding_hash: str, now: dt.datetime
) -> LaunchAttempt:
    """Mark the attempt with this state used, exactly once, from the browser that started it.

    One guarded UPDATE decides: of two concurrent callbacks with the same state, exactly one
    changes a row. Failures raise LaunchError with reason ``state_unknown``, ``state_replayed``,
    ``state_expired`` or ``state_browser_mismatch``.
    """
    result = await session.execute(
        update(LaunchAttempt)
        .where(
            LaunchAttempt.state_hash == state_hash,
            LaunchAttempt.browser_binding_hash == browser_binding_hash,
            LaunchAttempt.used_at.is_(None),
            LaunchAttempt.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    attempt = await session.scalar(
        select(LaunchAttempt)
        .where(LaunchAttempt.state_hash == state_hash)
        .execution_options(populate_existing=True)
    )
    if rowcount(result) == 1 and attempt is not None:
        return attempt
    if attempt is None:
        raise LaunchError(
            "This sign-in was not started here or is no longer known. Please start again.",
            reason="state_unknown",
        )
    if attempt.used_at is not None:
        raise LaunchError(
            "This sign-in has already been completed. Please start again if needed.",
            reason="state_replayed",
        )
    if attempt.expires_at <= now:
        raise LaunchError(
            "This sign-in took too long and expired. Please start again.", reason="state_expired"
        )
    raise LaunchError(
        "This sign-in was started in a different browser. Please start again here.",
        reason="state_browser_mismatch",
    )


async def set_launch_outcome(session: AsyncSession, attempt_id: str, outcome: str) -> None:
    """Record how a consumed launch attempt ended (``connected``, ``ehr_error``, ...)."""
    await session.execute(
        update(LaunchAttempt).where(LaunchAttempt.id == attempt_id).values(outcome=outcome)
    )


async def delete_expired_launch_attempts(session: AsyncSession, *, before: dt.datetime) -> int:
    """Remove attempts that expired before ``before``; returns how many."""
    result = await session.execute(delete(LaunchAttempt).where(LaunchAttempt.expires_at < before))
    return rowcount(result)


# --- connect links ---------------------------------------------------------------------------


async def create_connect_link(
    session: AsyncSession,
    *,
    link_id: str,
    user_id: str,
    tenant_id: str | None,
    now: dt.datetime,
    ttl_seconds: int,
) -> ConnectLink:
    """Record an issued connect link so it can be used once."""
    link = ConnectLink(
        id=link_id,
        user_id=user_id,
        tenant_id=tenant_id,
        created_at=now,
        expires_at=now + dt.timedelta(seconds=ttl_seconds),
    )
    session.add(link)
    await session.flush()
    return link


async def get_connect_link(session: AsyncSession, link_id: str) -> ConnectLink | None:
    """The connect link with this id."""
    return await session.get(ConnectLink, link_id)


async def consume_connect_link(
    session: AsyncSession, link_id: str, *, now: dt.datetime
) -> ConnectLink:
    """Mark a connect link used, exactly once; else LaunchError (unknown, used, expired)."""
    result = await session.execute(
        update(ConnectLink)
        .where(
            ConnectLink.id == link_id,
            ConnectLink.used_at.is_(None),
            ConnectLink.expires_at > now,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    link = await session.scalar(
        select(ConnectLink)
        .where(ConnectLink.id == link_id)
        .execution_options(populate_existing=True)
    )
    if rowcount(result) == 1 and link is not None:
        return link
    check_connect_link(link, now)
    # Neither unknown nor used, so the guarded UPDATE found it expired.
    raise _link_expired()


def check_connect_link(link: ConnectLink | None, now: dt.datetime) -> None:
    """Raise LaunchError (unknown, used, expired) unless ``link`` can be used at ``now``."""
    if link is None:
        raise LaunchError("This link is not valid.", reason="link_unknown")
    if link.used_at is not None:
        raise LaunchError(
            "This link has already been used. Ask the application that sent it for a new one.",
            reason="link_used",
        )
    if link.expires_at <= now:
        raise _link_expired()


def _link_expired() -> LaunchError:
    return LaunchError(
        "This link has expired. Ask the application that sent it for a new one.",
        reason="link_expired",
    )


# --- leases ----------------------------------------------------------------------------------


def _due(now: dt.datetime) -> Any:
    return and_(
        Connection.status == "active",
        Connection.next_due_at <= now,
        or_(Connection.backoff_until.is_(None), Connection.backoff_until <= now),
        lease_free(Connection.lease_until, now),
    )


async def claim_due_connections(
    session: AsyncSession,
    owner: str,
    now: dt.datetime,
    lease_seconds: int,
    limit: int,
    *,
    tenant_id: str | None = None,
    connection_ids: Sequence[str] | None = None,
) -> list[Connection]:
    """Lease up to ``limit`` due connections to ``owner`` until ``now + lease_seconds``.

    A connection is due when it is active, its refresh or sync time has come, it is not backing
    off and nobody holds an unexpired lease (an expired lease is a crashed worker's, taken over).
    The claim is :func:`syncsvc.db.leases.claim_rows`: safe under concurrent claimers on
    PostgreSQL and SQLite. Commit promptly: the lease is the claim, not the lock.
    """
    filters: list[ColumnElement[bool]] = []
    if tenant_id is not None:
        filters.append(Connection.tenant_id == tenant_id)
    if connection_ids is not None:
        filters.append(Connection.id.in_(list(connection_ids)))
    return await claim_rows(
        session,
        Connection,
        Connection.id,
        claimable=_due(now),
        filters=filters,
        order_by=(Connection.next_due_at, Connection.id),
        owner=owner,
        now=now,
        lease_seconds=lease_seconds,
        limit=limit,
    )


async def due_backlog(session: AsyncSession, now: dt.datetime) -> tuple[int, dt.datetime | None]:
    """How many connections a claim could take now, and since when the longest-waiting is due.

    The same predicate as :func:`claim_due_connections`, so the backlog metric and the claims
    cannot disagree about what is due.
    """
    row = (
        await session.execute(
            select(func.count(), func.min(Connection.next_due_at)).where(_due(now))
        )
    ).one()
    return int(row[0]), row[1]


async def renew_lease(
    session: AsyncSession,
    connection_id: str,
    owner: str,
    *,
    now: dt.datetime,
    lease_seconds: int,
) -> bool:
    """Extend ``owner``'s lease; False if the lease was lost (expired and taken over)."""
    result = await session.execute(
        update(Connection)
        .where(
            Connection.id == connection_id,
            Connection.lease_owner == owner,
            Connection.lease_until > now,
        )
        .values(lease_until=now + dt.timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


async def release_lease(session: AsyncSession, connection_id: str, owner: str) -> bool:
    """Give back ``owner``'s lease on a connection; False if ``owner`` no longer held it."""
    result = await session.execute(
        update(Connection)
        .where(Connection.id == connection_id, Connection.lease_owner == owner)
        .values(lease_owner=None, lease_until=None)
        .execution_options(synchronize_session=False)
    )
    return rowcount(result) == 1


async def delete_credentials(session: AsyncSession, connection_id: str) -> bool:
    """Delete a connection's stored tokens at once; returns whether there were any."""
    result = await session.execute(
        delete(Credential).where(Credential.connection_id == connection_id)
    )
    return rowcount(result) == 1


async def delete_connection(session: AsyncSession, connection_id: str) -> bool:
    """Delete a connection; its tokens and synced data go with it (foreign keys cascade)."""
    result = await session.execute(delete(Connection).where(Connection.id == connection_id))
    return rowcount(result) == 1
