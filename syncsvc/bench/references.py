"""The whole-record figure: first syncs of records of every type, with what they reference.

The ingest figures time Observations alone. A patient's whole record is a dozen types of very
different sizes, and it names clinicians, organisations, places and medications that are read
after the types (:mod:`syncsvc.sync.references`): by ``_id`` search where the server lists it,
by id otherwise. This scenario connects each patient with the scopes a launch asks for (the
shared types included), times first syncs of whole records at a sandbox tenant of its own, and
counts every resource stored, the referenced ones included. Each round checks that every
reference under the base was resolved (none left waiting), so a fast figure cannot hide a
skipped step.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.bench import ingest, world
from syncsvc.bench.measure import Sample
from syncsvc.bench.report import Row
from syncsvc.db.models.records import Resource, ResourceReference
from syncsvc.fhir.references import REFERENCED_TYPES
from syncsvc.sandbox.config import PatientSpec, SandboxConfig, TenantConfig, vendor_policy
from syncsvc.smart.scopes import DEFAULT_RESOURCE_TYPES
from syncsvc.sync.context import SyncContext
from syncsvc.vault import Vault

RECORD_TENANT = "bench-record"
#: One record's resources per type: a few years of primary care (Observations dominate, as in
#: the Synthea records the issue measured).
RECORD_SIZES: dict[str, int] = {
    "Observation": 600,
    "Condition": 40,
    "MedicationRequest": 60,
    "AllergyIntolerance": 6,
    "Immunization": 20,
    "Encounter": 120,
    "Procedure": 40,
    "DiagnosticReport": 60,
    "DocumentReference": 40,
    "CarePlan": 6,
    "Goal": 6,
}


def tenant(patients: Sequence[str]) -> TenantConfig:
    """The sandbox tenant of the scenario: generic-shaped, ``_id`` search on every shared type."""
    return TenantConfig(
        id=RECORD_TENANT,
        name="Whole-record benchmark tenant",
        policy=vendor_policy("generic", max_count=1000),
        patients=[
            PatientSpec(id=p, given="Record", family=f"R{i}", sizes=dict(RECORD_SIZES))
            for i, p in enumerate(patients)
        ],
    )


@dataclass
class Place:
    """What the scenario runs with (the benchmark's service and sandbox)."""

    ctx: SyncContext
    sessionmaker: async_sessionmaker[AsyncSession]
    vault: Vault
    http: aiohttp.ClientSession
    origin: str
    config: SandboxConfig
    #: Connection and tenant ids made, for the benchmark's clean-up.
    created: list[str]
    tenant_ids: list[str]


async def measure(place: Place, patients: Sequence[str], rounds: int) -> list[Row]:
    """``rounds`` first syncs of ``patients``' whole records; the rows of the figure."""
    urls = world.urls(place.origin, place.config, RECORD_TENANT)
    registered = await world.register(
        place.sessionmaker,
        place.vault,
        place.http,
        urls.fhir_base,
        name=f"bench-record-{secrets.token_hex(3)}",
        resource_types=DEFAULT_RESOURCE_TYPES,
    )
    place.tenant_ids.append(registered.id)
    connector = world.Connector(
        place.sessionmaker,
        place.vault,
        place.http,
        registered,
        urls.authorize,
        referenced=REFERENCED_TYPES,
    )
    samples: list[Sample] = []
    shared: list[int] = []
    for number in range(1, rounds + 1):
        later = dt.datetime.now(dt.UTC) + dt.timedelta(days=1)
        ids = await connector.connect_many(
            patients,
            user_prefix=f"record{number}-{secrets.token_hex(4)}",
            next_refresh_at=later,
            next_sync_at=None,
        )
        place.created.extend(ids)
        fleet = ingest.Fleet(ids, list(patients))
        sample = await ingest.sync_round(place.ctx, fleet, expect=None)
        stored, referenced = await _check(place.sessionmaker, ids)
        if stored != sample.items:
            raise ingest.BenchError(f"a whole-record round stored {stored}, handled {sample.items}")
        samples.append(sample)
        shared.append(referenced)
        await world.drop_connections(place.sessionmaker, ids)
    row = Row.from_samples("record", "first sync, whole record", samples, unit="resources/s")
    row.extra["resources_per_patient"] = samples[0].items // max(len(patients), 1)
    row.extra["referenced_per_patient"] = shared[0] // max(len(patients), 1)
    return [row]


async def _check(
    sessionmaker: async_sessionmaker[AsyncSession], connection_ids: Sequence[str]
) -> tuple[int, int]:
    """Resources stored by the round and the shared ones among them; raises if a reference
    under the base was left unread."""
    async with sessionmaker() as session:
        stored = await session.scalar(
            select(func.count()).where(Resource.connection_id.in_(connection_ids))
        )
        referenced = await session.scalar(
            select(func.count()).where(
                Resource.connection_id.in_(connection_ids),
                Resource.resource_type.in_(REFERENCED_TYPES),
            )
        )
        waiting = await session.scalar(
            select(func.count()).where(
                ResourceReference.connection_id.in_(connection_ids),
                ResourceReference.state.in_(("pending", "failed", "not_granted")),
            )
        )
    if waiting:
        raise ingest.BenchError(f"{waiting} references were left unread")
    if not referenced:
        raise ingest.BenchError("no referenced resource was stored")
    return int(stored or 0), int(referenced or 0)
