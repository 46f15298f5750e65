"""The attachments figure: a first sync of patients' clinical documents, contents included.

A Cerner-shaped tenant of the bench sandbox gives each patient DocumentReferences whose PDF and
HTML renderings are Binaries of about :data:`DOCUMENT_BYTES` each; a round connects the patients
afresh and syncs them once through the real engine (claim, refresh, pull, attachments). The
figures are documents (stored attachments) per second and their content in MB per second, over
the whole run: searches, Binary reads, hashing, compression and writes.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from typing import Any

from sqlalchemy import func, select

from syncsvc.bench import world
from syncsvc.bench.ingest import BenchError, unlimited
from syncsvc.bench.measure import Sample, Spread, timed
from syncsvc.bench.report import Row
from syncsvc.db.models.attachments import Attachment
from syncsvc.sandbox.config import COMPARTMENT_TYPES, PatientSpec, TenantConfig, vendor_policy
from syncsvc.sync.context import SyncContext
from syncsvc.sync.runner import run_due

DOCS_TENANT = "bench-docs"
PATIENTS = 4
DOCUMENTS = 40
#: About this many characters per rendering (a long note or a short report with images).
DOCUMENT_BYTES = 64 * 1024
RESOURCE_TYPES = ("Patient", "DocumentReference")


def _patient(index: int) -> str:
    return f"bench-doc{index:03d}"


def tenant_config() -> TenantConfig:
    """The Cerner-shaped tenant the figure is measured against."""
    sizes = {name: (DOCUMENTS if name == "DocumentReference" else 0) for name in COMPARTMENT_TYPES}
    return TenantConfig(
        id=DOCS_TENANT,
        name="Benchmark documents",
        vendor="cerner",
        policy=vendor_policy("cerner", document_bytes=DOCUMENT_BYTES, access_token_lifetime=3600),
        patients=[
            PatientSpec(id=_patient(i), given="Bench", family=f"Doc{i}", sizes=dict(sizes))
            for i in range(PATIENTS)
        ],
    )


async def _stored(ctx: SyncContext, connection_ids: list[str]) -> tuple[int, int]:
    async with ctx.sessionmaker() as session:
        row = (
            await session.execute(
                select(func.count(), func.coalesce(func.sum(Attachment.size), 0)).where(
                    Attachment.connection_id.in_(connection_ids), Attachment.status == "stored"
                )
            )
        ).one()
    count, total = row
    return int(count or 0), int(total or 0)


async def measure(
    ctx: SyncContext,
    *,
    origin: str,
    config: Any,
    rounds: int,
    created: list[str],
    say: Callable[[str], None],
) -> list[Row]:
    """Rounds of first syncs with attachments; the documents/s row (MB/s beside it)."""
    urls = world.urls(origin, config, DOCS_TENANT)
    tenant = await world.register(
        ctx.sessionmaker,
        ctx.vault,
        ctx.http,
        urls.fhir_base,
        name=f"bench-docs-{secrets.token_hex(3)}",
        resource_types=RESOURCE_TYPES,
    )
    connector = world.Connector(ctx.sessionmaker, ctx.vault, ctx.http, tenant, urls.authorize)
    patients = [_patient(i) for i in range(PATIENTS)]
    # The sandbox renders the documents on first access: outside the timed rounds.
    for patient in patients:
        async with ctx.http.get(
            f"{origin}/admin/tenants/{DOCS_TENANT}/patients/{patient}/DocumentReference"
        ) as response:
            await response.read()
    expected = PATIENTS * DOCUMENTS * 2  # a PDF and an HTML rendering each
    samples: list[Sample] = []
    rates: list[float] = []
    for number in range(1, rounds + 1):
        ids = await connector.connect_many(
            patients,
            user_prefix=f"docs{number}-{secrets.token_hex(4)}",
            next_refresh_at=dt.datetime.now(dt.UTC) + dt.timedelta(days=1),
            next_sync_at=None,
        )
        created.extend(ids)
        await world.make_due(ctx.sessionmaker, ids)
        with timed(ctx.decoder.worker_pids) as sample:
            report = await run_due(ctx, connection_ids=ids, limiter=unlimited())
        if report.failures or set(report.sync) != {"ok"}:
            raise BenchError(f"a documents round did not succeed: {report.to_json()}")
        documents, content = await _stored(ctx, ids)
        if documents != expected:
            raise BenchError(f"a documents round stored {documents} attachments, not {expected}")
        sample.items = documents
        samples.append(sample)
        rates.append(content / (1024 * 1024) / sample.seconds)
        say(f"round {number}: {sample.rate:,.0f} documents/s, {rates[-1]:,.1f} MB/s")
        await world.drop_connections(ctx.sessionmaker, ids)
    per_document = content // max(documents, 1)
    row = Row.from_samples("documents", "first sync, attachments", samples, unit="documents/s")
    row.extra["document_bytes"] = per_document
    volume = Row("documents", "first sync, content", "MB/s", Spread.of(rates))
    volume.extra["document_bytes"] = per_document
    return [row, volume]
