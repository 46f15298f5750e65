"""The provider search at directory scale: p95 of a patient's query over N listed tenants.

Tenants are bulk-loaded from the generated directory of Oracle Health's shape
(:mod:`syncsvc.bench.directories`, the one the tests import; no discovery, no client), their
search rows written as ``tenants import`` writes them, and a mix of what patients type (name
prefixes, two-word names, cities, ZIP codes, a miss) is timed through the picker's own service
function.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.bench.directories import organisation_at
from syncsvc.bench.measure import Spread
from syncsvc.bench.report import Row
from syncsvc.db.columns import new_id
from syncsvc.db.models.connections import Tenant
from syncsvc.db.models.directory import TenantSearch
from syncsvc.db.search_repo import search_columns
from syncsvc.directory.picker import find_providers
from syncsvc.health.figures import percentile

BATCH = 2_000
#: What patients type: prefixes, fuller names, places, ZIP codes, and one that finds nothing
#: (each but the last finds organisations of :mod:`syncsvc.bench.directories`).
QUERIES = (
    "abbev",
    "lakev",
    "lakeview gen",
    "cedar reg",
    "maple child",
    "salina",
    "omaha ne",
    "7051",
    "20035",
    "summit ortho",
    "harbor",
    "pine bluff",
    "heart",
    "zzyzx",
)
#: The first one or two letters a patient types: as word prefixes each would match a large part
#: of the directory; the search reads them as the start of a name (each starts some names here).
SHORT_QUERIES = ("l", "s", "m", "c", "h", "la", "ma", "pi", "su", "ce")


def _rows(first: int, count: int, now: dt.datetime) -> list[dict[str, Any]]:
    rows = []
    for i in range(first, first + count):
        org = organisation_at(i)
        rows.append(
            {
                "id": new_id(),
                "name": f"bench-search-{i}",
                "display_name": org.name,
                "vendor": "cerner",
                "fhir_base": org.fhir_base,
                "endpoints": {},
                "capabilities": [],
                "client_id": "bench",
                "auth_method": "public",
                "redirect_uri": "/callback/bench",
                "configured_scopes": [],
                "aliases": [],
                "street": org.street,
                "city": org.city,
                "state": org.state,
                "postal_code": org.postal_code,
                "directory": "bench-search",
                "created_at": now,
                "updated_at": now,
            }
        )
    return rows


async def load(sessionmaker: async_sessionmaker[AsyncSession], first: int, count: int) -> list[str]:
    """Insert ``count`` listed tenants with their search rows; their ids."""
    now = dt.datetime.now(dt.UTC)
    ids: list[str] = []
    for start in range(first, first + count, BATCH):
        rows = _rows(start, min(BATCH, first + count - start), now)
        terms = [
            {
                "tenant_id": row["id"],
                **search_columns(
                    display_name=row["display_name"],
                    street=row["street"],
                    city=row["city"],
                    state=row["state"],
                    postal_code=row["postal_code"],
                ),
            }
            for row in rows
        ]
        async with sessionmaker.begin() as session:
            await session.execute(insert(Tenant), rows)
            await session.execute(insert(TenantSearch), terms)
        ids.extend(row["id"] for row in rows)
    return ids


@dataclass(frozen=True)
class Timings:
    """Milliseconds of each query, and the queries that found nothing (a miss is fast too)."""

    times: list[float]
    misses: list[str]


async def query_times(
    sessionmaker: async_sessionmaker[AsyncSession],
    rounds: int,
    queries: Sequence[str] = QUERIES,
) -> Timings:
    """Each of ``queries`` timed ``rounds`` times over (first page)."""
    times = []
    misses: set[str] = set()
    for _ in range(rounds):
        for query in queries:
            started = time.perf_counter()
            found = await find_providers(sessionmaker, query)
            times.append((time.perf_counter() - started) * 1000)
            if not found.tenants:
                misses.add(query)
    return Timings(times, sorted(misses))


def row_for(size: int, timings: Timings, *, label: str = "") -> Row:
    """The report row of one directory size: the spread of query times, p95 beside it."""
    row = Row("search", f"{size:,} tenants{label}", "ms", Spread.of(timings.times))
    row.extra["p95_ms"] = round(percentile(timings.times, 95) or 0.0, 2)
    row.extra["misses"] = timings.misses
    return row


async def drop(sessionmaker: async_sessionmaker[AsyncSession], ids: Sequence[str]) -> None:
    """Delete the loaded tenants (their search rows go with them)."""
    for start in range(0, len(ids), BATCH):
        async with sessionmaker.begin() as session:
            await session.execute(delete(Tenant).where(Tenant.id.in_(ids[start : start + BATCH])))
