"""Brand logos: stored once by digest, shown by tenants, deleted when none shows them."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import Table, bindparam, delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db.base import rowcount
from syncsvc.db.models.connections import Tenant
from syncsvc.db.models.directory import Logo


@dataclass(frozen=True)
class TenantLogo:
    """Which logo a tenant shows, and where it came from."""

    tenant_id: str
    sha256: str | None
    source: str | None


async def tenant_logos(session: AsyncSession) -> dict[str, TenantLogo]:
    """Every tenant's logo, by tenant name."""
    rows = await session.execute(
        select(Tenant.name, Tenant.id, Tenant.logo_sha256, Tenant.logo_url)
    )
    return {name: TenantLogo(tenant_id, sha, url) for name, tenant_id, sha, url in rows.tuples()}


async def store_logos(
    session: AsyncSession, logos: Iterable[tuple[str, str, bytes]], *, now: dt.datetime
) -> int:
    """Insert each ``(sha256, content_type, content)`` not stored yet; how many were new."""
    wanted = {sha: (kind, content) for sha, kind, content in logos}
    if not wanted:
        return 0
    stored = set(await session.scalars(select(Logo.sha256).where(Logo.sha256.in_(wanted))))
    new = [sha for sha in wanted if sha not in stored]
    session.add_all(
        Logo(sha256=sha, content_type=wanted[sha][0], content=wanted[sha][1], created_at=now)
        for sha in new
    )
    await session.flush()
    return len(new)


async def set_tenant_logos(
    session: AsyncSession, changes: Sequence[TenantLogo], *, now: dt.datetime
) -> None:
    """Point each tenant at its new logo (or none)."""
    if not changes:
        return
    table = cast("Table", Tenant.__table__)
    statement = (
        update(table)
        .where(table.c.id == bindparam("key"))
        .values(logo_sha256=bindparam("sha"), logo_url=bindparam("source"), updated_at=now)
    )
    params = [{"key": c.tenant_id, "sha": c.sha256, "source": c.source} for c in changes]
    await session.execute(statement, params)


async def prune_logos(session: AsyncSession) -> int:
    """Delete the logos no tenant shows; how many went."""
    shown = select(Tenant.logo_sha256).where(Tenant.logo_sha256.is_not(None))
    result = await session.execute(delete(Logo).where(Logo.sha256.not_in(shown)))
    return rowcount(result)


async def get_logo(session: AsyncSession, sha256: str) -> Logo | None:
    """The stored logo with this digest."""
    return await session.get(Logo, sha256)
