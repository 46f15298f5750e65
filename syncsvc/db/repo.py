"""Tenants, connections and their credentials: queries that take an ``AsyncSession``, never commit.

The caller owns the transaction (``async with sessionmaker.begin() as session``). Writes that must
be safe under concurrency are one guarded UPDATE whose row count says who won, such as the
compare-and-swap on credentials. Launch attempts and connect links are in ``launch_repo``; due
connections and their leases in ``connection_claims``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.errors import Conflict, NotFound

from .base import rowcount
from .columns import new_id
from .models.connections import Connection, Credential, Tenant
from .prebuilt import UpdateBy, table_of


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


async def tenant_names_by_base(session: AsyncSession) -> dict[str, str]:
    """Every tenant's name by its FHIR base (an import matches its endpoints to them)."""
    rows = await session.execute(select(Tenant.fhir_base, Tenant.name))
    return dict(rows.tuples().all())


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


async def get_connection(
    session: AsyncSession, connection_id: str, *, lock: bool = False
) -> Connection | None:
    """The connection with this id (``lock``: its row locked for update until the transaction
    ends, on PostgreSQL)."""
    return await session.get(Connection, connection_id, with_for_update=lock or None)


#: Built once (every refresh and every pull read a connection with its tenant).
_WITH_TENANT = (
    select(Connection, Tenant)
    .join(Tenant, Tenant.id == Connection.tenant_id)
    .where(Connection.id == bindparam("connection_id"))
)
_WITH_TENANT_AND_TOKENS = (
    select(Connection, Tenant, Credential)
    .join(Tenant, Tenant.id == Connection.tenant_id)
    .outerjoin(Credential, Credential.connection_id == Connection.id)
    .where(Connection.id == bindparam("connection_id"))
    .execution_options(populate_existing=True)
)


async def get_connection_with(
    session: AsyncSession, connection_id: str, *, credentials: bool = False
) -> tuple[Connection, Tenant, Credential | None] | None:
    """The connection, its tenant and (with ``credentials``) its encrypted tokens, in one read.

    None when there is no such connection (a connection's tenant cannot be missing: deleting a
    tenant deletes its connections).
    """
    params = {"connection_id": connection_id}
    if credentials:
        row = (await session.execute(_WITH_TENANT_AND_TOKENS, params)).first()
        return None if row is None else (row[0], row[1], row[2])
    found = (await session.execute(_WITH_TENANT, params)).first()
    return None if found is None else (found[0], found[1], None)


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


@dataclass(frozen=True, slots=True)
class TokenLifetimes:
    """What the refresh schedule needs of a connection's stored tokens (no ciphertext)."""

    access_expires_at: dt.datetime | None
    refresh_expires_at: dt.datetime | None
    has_refresh_token: bool


async def token_lifetimes(session: AsyncSession, connection_id: str) -> TokenLifetimes | None:
    """The stored tokens' expiries and whether a refresh token is held, read fresh.

    Three columns, not the :class:`Credential` entity: every sync's closing transaction asks,
    and loading the entity (ciphertexts, identity map) cost it several times as much.
    """
    row = (
        await session.execute(
            select(
                Credential.access_expires_at,
                Credential.refresh_expires_at,
                Credential.refresh_token_enc.is_not(None),
            ).where(Credential.connection_id == connection_id)
        )
    ).first()
    if row is None:
        return None
    return TokenLifetimes(row[0], row[1], bool(row[2]))


@dataclass(slots=True)
class ConnectionSchedule:
    """The columns a run's closing write reads and moves: its schedule, its grant, its status.

    Plain values read by Core, not the :class:`Connection` entity: every sync closes this way,
    and loading the entity and flushing its changes cost several times what the two
    statements do.
    """

    id: str
    tenant_id: str
    status: str
    granted_scopes: list[str]
    failure_count: int
    backoff_until: dt.datetime | None
    last_refresh_at: dt.datetime | None
    connected_at: dt.datetime | None
    next_sync_at: dt.datetime | None
    next_refresh_at: dt.datetime | None
    lease_owner: str | None
    lease_until: dt.datetime | None


_SCHEDULE_COLUMNS = tuple(
    Connection.__table__.c[name] for name in ConnectionSchedule.__dataclass_fields__
)
_WITH_LIFETIMES = (
    select(
        *_SCHEDULE_COLUMNS,
        Credential.connection_id,
        Credential.access_expires_at,
        Credential.refresh_expires_at,
        Credential.refresh_token_enc.is_not(None),
    )
    .outerjoin(Credential, Credential.connection_id == Connection.id)
    .where(Connection.id == bindparam("connection_id"))
)
_WITH_LIFETIMES_LOCKED = _WITH_LIFETIMES.with_for_update(of=table_of(Connection))


async def connection_schedule(
    session: AsyncSession, connection_id: str, *, lock: bool = False
) -> tuple[ConnectionSchedule, TokenLifetimes | None] | None:
    """The connection's :class:`ConnectionSchedule` with :func:`token_lifetimes`, in one read.

    ``lock``: the connection's row stays locked until the transaction ends (PostgreSQL; a
    SQLite transaction that writes holds the whole database already).
    """
    statement = _WITH_LIFETIMES_LOCKED if lock else _WITH_LIFETIMES
    row = (await session.execute(statement, {"connection_id": connection_id})).first()
    if row is None:
        return None
    width = len(_SCHEDULE_COLUMNS)
    schedule = ConnectionSchedule(*row[:width])
    tokens = row[width:]
    lifetimes = None if tokens[0] is None else TokenLifetimes(tokens[1], tokens[2], bool(tokens[3]))
    return schedule, lifetimes


_CONNECTION_UPDATE = UpdateBy(Connection, "id")


async def update_connection(session: AsyncSession, connection_id: str, **values: Any) -> int:
    """Set ``values`` on the connection (one statement per set of columns); rows changed."""
    return await _CONNECTION_UPDATE.execute(session, {"id": connection_id}, values)


#: A refresh's compare-and-swap: the row is written only while it holds the version read.
_CREDENTIALS_SWAP = UpdateBy(Credential, "connection_id", "version")


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
    swapped = await _CREDENTIALS_SWAP.execute(
        session,
        {"connection_id": connection_id, "version": expected_version},
        {"version": expected_version + 1, **values},
    )
    if swapped != 1:
        raise Conflict("The credentials changed since they were read.")
    return expected_version + 1


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
