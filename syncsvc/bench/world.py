"""What a benchmark runs against: the sandbox's configuration, tenants and connected patients.

Patients are connected the way a finished launch leaves them (tokens from the sandbox's real
authorization server: authorize, log in on its form, exchange the code with PKCE), with the
refresh and sync times the scenario wants. Scheduler-scale tables are filled in bulk instead
(``COPY`` on PostgreSQL, ``executemany`` batches on SQLite): those rows are never worked.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import orjson
from sqlalchemy import delete, insert, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import repo
from syncsvc.db.columns import new_id
from syncsvc.db.models.connections import Connection, Tenant
from syncsvc.directory.tenants import TenantSpec, register_tenant
from syncsvc.sandbox.config import (
    COMPARTMENT_TYPES,
    ClientRegistration,
    PatientSpec,
    RefreshMode,
    SandboxConfig,
    TenantConfig,
    vendor_policy,
)
from syncsvc.sandbox.profiles import TenantUrls, tenant_urls
from syncsvc.smart.oauth import exchange_code, new_pkce
from syncsvc.smart.scopes import plan_scopes
from syncsvc.sync.credentials import save_tokens
from syncsvc.sync.tenant_config import (
    client_credentials,
    smart_configuration,
)
from syncsvc.vault import Vault

CLIENT_ID = "syncsvc-bench"
REDIRECT_URI = "http://127.0.0.1:9/callback"
INGEST_TENANT = "bench"
STEADY_REFRESH_TENANT = "bench-refresh"
ROTATING_REFRESH_TENANT = "bench-rotating"
#: Only what the ingest measures: the Patient and its Observations.
RESOURCE_TYPES = ("Patient", "Observation")
PAGE_SIZE = 100
#: Access token lifetime at the refresh tenants; each refresh round moves syncsvc's clock on
#: by a little less, so every grant is due once per round and not again within it.
TOKEN_SECONDS = 3600
BIG_PATIENT = "bench-big"
#: The tenant of the whole-record figures: every US Core type, Patient/$everything offered.
WHOLE_TENANT = "bench-whole"
#: Patients of the whole-record figures, and the Observations each has (the other types get
#: the sandbox's default handful each).
WHOLE_PATIENTS = 8
WHOLE_OBSERVATIONS = 300
REFRESH_PATIENT = "bench-refresh-patient"
#: Concurrent authorize + exchange flows while connecting many patients.
CONNECT_CONCURRENCY = 16
BULK_BATCH = 10_000
#: Ids in one ``IN (...)`` list. Each id is one bound parameter, and PostgreSQL's protocol takes
#: at most 32,767 a statement (SQLite 32,766 by default): a fleet's ids go in slices of this.
IN_CHUNK = 1_000


def chunks(values: Sequence[str], size: int = IN_CHUNK) -> Iterator[list[str]]:
    """``values`` in consecutive lists of at most ``size``."""
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def patient_id(index: int) -> str:
    """The sandbox id of the ``index``-th benchmark patient."""
    return f"bench-p{index:04d}"


def _observations_only(count: int) -> dict[str, int]:
    return {name: (count if name == "Observation" else 0) for name in COMPARTMENT_TYPES}


def sandbox_config(*, patients: int, resources: int, big_resources: int) -> SandboxConfig:
    """The sandbox of a benchmark run: one ingest tenant and two refresh tenants."""
    specs = [
        PatientSpec(
            id=patient_id(i), given="Bench", family=f"P{i}", sizes=_observations_only(resources)
        )
        for i in range(patients)
    ]
    specs.append(
        PatientSpec(
            id=BIG_PATIENT, given="Bench", family="Big", sizes=_observations_only(big_resources)
        )
    )
    # No _lastUpdated (as at Epic): every re-sync is a full pull compared hash by hash, the
    # path the re-sync figures are about.
    ingest = TenantConfig(
        id=INGEST_TENANT,
        name="Benchmark tenant",
        policy=vendor_policy("generic", max_count=1000, last_updated_types=[]),
        patients=specs,
    )
    refresh_patient = [
        PatientSpec(
            id=REFRESH_PATIENT, given="Bench", family="Refresh", sizes=_observations_only(0)
        )
    ]

    def refresh_tenant(tenant_id: str, mode: RefreshMode) -> TenantConfig:
        policy = vendor_policy("generic", refresh_mode=mode, access_token_lifetime=TOKEN_SECONDS)
        return TenantConfig(id=tenant_id, name=tenant_id, policy=policy, patients=refresh_patient)

    whole = TenantConfig(
        id=WHOLE_TENANT,
        name="Benchmark tenant (whole record)",
        policy=vendor_policy("generic", max_count=1000),
        patients=[
            PatientSpec(
                id=patient_id(i),
                given="Whole",
                family=f"P{i}",
                sizes={"Observation": WHOLE_OBSERVATIONS},
            )
            for i in range(WHOLE_PATIENTS)
        ],
    )
    return SandboxConfig(
        tenants=[
            ingest,
            whole,
            refresh_tenant(STEADY_REFRESH_TENANT, "none"),
            refresh_tenant(ROTATING_REFRESH_TENANT, "strict_rotation"),
        ],
        clients=[ClientRegistration(client_id=CLIENT_ID, redirect_uris=[REDIRECT_URI])],
    )


def urls(origin: str, config: SandboxConfig, tenant_id: str) -> TenantUrls:
    """Absolute URLs of a sandbox tenant."""
    tenant = config.tenant(tenant_id)
    if tenant is None:
        raise KeyError(tenant_id)
    return tenant_urls(origin, tenant)


async def register(
    sessionmaker: async_sessionmaker[AsyncSession],
    vault: Vault,
    http: aiohttp.ClientSession,
    fhir_base: str,
    *,
    name: str,
    discover: bool = True,
    resource_types: Sequence[str] = RESOURCE_TYPES,
) -> Tenant:
    """Register a sandbox tenant with syncsvc (real discovery over loopback)."""
    spec = TenantSpec(
        name=name,
        fhir_base=fhir_base,
        client_id=CLIENT_ID,
        redirect_uri=REDIRECT_URI,
        resource_types=tuple(resource_types),
    )
    return await register_tenant(
        sessionmaker, vault, http, spec, now=dt.datetime.now(dt.UTC), run_discovery=discover
    )


async def _authorization_code(
    http: aiohttp.ClientSession, authorize: str, params: dict[str, str], login: str
) -> str:
    form = {**params, "username": login, "password": "portal", "decision": "approve"}
    async with http.post(authorize, data=form, allow_redirects=False) as response:
        location = response.headers.get("Location", "")
        await response.read()
    query = dict(parse_qsl(urlsplit(location).query))
    if "code" not in query:
        raise RuntimeError(
            f"the sandbox did not issue a code ({query.get('error', response.status)})"
        )
    return query["code"]


@dataclass
class Connector:
    """Connects sandbox patients to one registered tenant, as a finished launch would."""

    sessionmaker: async_sessionmaker[AsyncSession]
    vault: Vault
    http: aiohttp.ClientSession
    tenant: Tenant
    authorize_url: str
    #: Shared types (Practitioner ...) asked for besides the tenant's, where it lists them.
    referenced: Sequence[str] = ()

    async def connect(
        self,
        patient: str,
        *,
        user_id: str,
        next_refresh_at: dt.datetime | None,
        next_sync_at: dt.datetime | None,
    ) -> str:
        """Connect ``patient`` for ``user_id``; returns the new connection's id."""
        config = smart_configuration(self.tenant)
        if config is None:
            raise RuntimeError("the tenant was not discovered")
        scopes = plan_scopes(
            self.tenant.configured_scopes,
            config,
            self.tenant.scope_syntax,
            referenced=self.referenced,
        )
        pkce = new_pkce()
        params = {
            "response_type": "code",
            "client_id": self.tenant.client_id,
            "redirect_uri": REDIRECT_URI,
            "scope": " ".join(scopes),
            "state": secrets.token_urlsafe(8),
            "aud": self.tenant.fhir_base,
            "code_challenge": pkce.challenge,
            "code_challenge_method": "S256",
        }
        code = await _authorization_code(self.http, self.authorize_url, params, patient)
        tokens = await exchange_code(
            self.http,
            token_endpoint=config.token_endpoint,
            code=code,
            redirect_uri=REDIRECT_URI,
            code_verifier=pkce.verifier,
            credentials=client_credentials(self.vault, self.tenant),
        )
        now = dt.datetime.now(dt.UTC)
        async with self.sessionmaker.begin() as session:
            connection = await repo.create_connection(
                session,
                tenant_id=self.tenant.id,
                user_id=user_id,
                patient_id=tokens.patient or patient,
                fhir_base=self.tenant.fhir_base,
                aud=self.tenant.fhir_base,
                issuer=self.tenant.issuer,
                token_endpoint=config.token_endpoint,
                client_id=self.tenant.client_id,
                requested_scopes=scopes,
                granted_scopes=list(tokens.scopes) if tokens.scope_returned else scopes,
                now=now,
                next_refresh_at=next_refresh_at,
                next_sync_at=next_sync_at,
            )
            await save_tokens(session, self.vault, connection.id, tokens, previous=None, now=now)
        return connection.id

    async def connect_many(
        self,
        patients: Sequence[str],
        *,
        user_prefix: str,
        next_refresh_at: dt.datetime | None,
        next_sync_at: dt.datetime | None,
    ) -> list[str]:
        """Connect each of ``patients`` (a distinct user each), a few flows at a time."""
        limit = asyncio.Semaphore(CONNECT_CONCURRENCY)

        async def one(index: int, patient: str) -> str:
            async with limit:
                return await self.connect(
                    patient,
                    user_id=f"{user_prefix}-{index}",
                    next_refresh_at=next_refresh_at,
                    next_sync_at=next_sync_at,
                )

        return list(await asyncio.gather(*(one(i, p) for i, p in enumerate(patients))))


async def make_due(
    sessionmaker: async_sessionmaker[AsyncSession],
    connection_ids: Sequence[str],
    *,
    sync: bool = True,
    refresh: bool = False,
) -> None:
    """Make connections due for a pull and/or a refresh now (and nothing else)."""
    now = dt.datetime.now(dt.UTC)
    later = now + dt.timedelta(days=1)
    async with sessionmaker.begin() as session:
        for chunk in chunks(connection_ids):
            await session.execute(
                update(Connection)
                .where(Connection.id.in_(chunk))
                .values(
                    next_sync_at=now if sync else later,
                    next_refresh_at=now if refresh else later,
                    backoff_until=None,
                    failure_count=0,
                )
                .execution_options(synchronize_session=False)
            )


#: What a benchmark round writes and its drop deletes (VACUUM takes no bound table name).
_CHURNED_TABLES = (
    "resources",
    "resource_history",
    "resource_cursors",
    "sync_states",
    "sync_runs",
    "events",
    "credentials",
    "connections",
)


async def drop_connections(
    sessionmaker: async_sessionmaker[AsyncSession], connection_ids: Sequence[str]
) -> None:
    """Delete connections and (by cascade) everything stored for them, then tidy up after them.

    Rounds are dropped between timed blocks, never inside one. On PostgreSQL the tables they
    were in are vacuumed: a service's database has autovacuum doing that, but a server run with
    it off (as test servers often are) would make each round pay for the rows of the ones before.
    """
    async with sessionmaker.begin() as session:
        for chunk in chunks(connection_ids):
            await session.execute(delete(Connection).where(Connection.id.in_(chunk)))
        postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        async with sessionmaker() as session:
            connection = await session.connection(
                execution_options={"isolation_level": "AUTOCOMMIT"}
            )
            for table in _CHURNED_TABLES:
                await connection.execute(text(f"VACUUM ANALYZE {table}"))


async def drop_tenants(
    sessionmaker: async_sessionmaker[AsyncSession], tenant_ids: Sequence[str]
) -> None:
    """Delete tenants with their connections (one statement each, not one per connection)."""
    async with sessionmaker.begin() as session:
        for tenant_id in tenant_ids:
            await session.execute(delete(Connection).where(Connection.tenant_id == tenant_id))
            await repo.delete_tenant(session, tenant_id)


async def set_due(
    sessionmaker: async_sessionmaker[AsyncSession], connection_ids: Sequence[str], due: bool
) -> None:
    """Make scheduler-only connections due (an hour ago) or not (tomorrow)."""
    now = dt.datetime.now(dt.UTC)
    moment = now - dt.timedelta(hours=1) if due else now + dt.timedelta(days=1)
    async with sessionmaker.begin() as session:
        for chunk in chunks(connection_ids):
            await session.execute(
                update(Connection)
                .where(Connection.id.in_(chunk))
                .values(next_sync_at=moment, lease_owner=None, lease_until=None)
                .execution_options(synchronize_session=False)
            )


def filler_rows(tenant: Tenant, count: int, *, due: int, now: dt.datetime) -> list[dict[str, Any]]:
    """``count`` connection rows of ``tenant`` for the scheduler scale, ``due`` of them due now."""
    rows: list[dict[str, Any]] = []
    later = now + dt.timedelta(days=1)
    for index in range(count):
        is_due = index < due
        rows.append(
            {
                "id": new_id(),
                "tenant_id": tenant.id,
                "user_id": f"bench-sched-{index}",
                "patient_id": f"bench-sched-{index}",
                "fhir_base": tenant.fhir_base,
                "aud": tenant.fhir_base,
                "token_endpoint": tenant.fhir_base,
                "client_id": tenant.client_id,
                "requested_scopes": [],
                "granted_scopes": [],
                "status": "active",
                "created_at": now,
                "updated_at": now,
                "next_refresh_at": None,
                # Spread over a day so the due ones are a small, ordered slice.
                "next_sync_at": now - dt.timedelta(seconds=1 + index)
                if is_due
                else later + dt.timedelta(seconds=index),
                "failure_count": 0,
            }
        )
    return rows


async def bulk_connections(
    sessionmaker: async_sessionmaker[AsyncSession],
    tenant: Tenant,
    count: int,
    *,
    due: int,
    first: int = 0,
) -> list[str]:
    """Insert ``count`` scheduler-only connections (numbered from ``first``); their ids."""
    now = dt.datetime.now(dt.UTC)
    ids: list[str] = []
    for start in range(0, count, BULK_BATCH):
        rows = filler_rows(tenant, min(BULK_BATCH, count - start), due=max(due - start, 0), now=now)
        for offset, row in enumerate(rows):
            row["user_id"] = f"bench-sched-{first + start + offset}"
            row["patient_id"] = row["user_id"]
        async with sessionmaker.begin() as session:
            if session.get_bind().dialect.name == "postgresql":
                await _copy_connections(session, rows)
            else:
                await session.execute(insert(Connection), rows)
        ids.extend(row["id"] for row in rows)
    return ids


async def _copy_connections(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """PostgreSQL ``COPY`` through asyncpg: the fastest way to load many rows."""
    columns = list(rows[0])
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver: Any = raw.driver_connection
    records = [tuple(_copy_value(row[name]) for name in columns) for row in rows]
    await driver.copy_records_to_table("connections", records=records, columns=columns)


def _copy_value(value: Any) -> Any:
    # JSON columns travel as text in COPY records.
    if isinstance(value, list):
        return orjson.dumps(value).decode()
    return value


async def vacuum_analyze(sessionmaker: async_sessionmaker[AsyncSession]) -> None:
    """Refresh planner statistics after a bulk load (a running database's autovacuum would)."""
    async with sessionmaker() as session:
        if session.get_bind().dialect.name == "postgresql":
            connection = await session.connection()
            await connection.execute(text("COMMIT"))
            await connection.execute(text("ANALYZE connections"))
        else:
            await session.execute(text("ANALYZE"))
            await session.commit()
