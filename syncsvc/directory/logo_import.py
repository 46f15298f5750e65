"""The logo step of ``tenants import``: fetch each brand's logo, store it, point tenants at it.

Runs after the tenants are registered, fetching outside any transaction (:mod:`.logos`), then
writes in one: new logos stored by digest, tenants pointed at theirs, logos no tenant shows any
more deleted. A re-import fetches again, so a logo the brand changed is replaced; when none of a
tenant's URLs gives a logo now, the logo it had from one of those URLs is kept (the failure is
reported), and a tenant whose directory no longer names a logo loses it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import logo_repo
from syncsvc.db.logo_repo import TenantLogo
from syncsvc.directory.endpoint_import import ImportedEndpoint
from syncsvc.directory.logos import Logo, LogoFetcher, Refused, source_of


@dataclass(frozen=True)
class LogoFailure:
    """Logo URLs that gave no logo, the tenants that would have shown it, and why."""

    tenants: tuple[str, ...]
    reason: str
    kept: bool


@dataclass
class LogoReport:
    """What the logo step did: tenants showing a logo, logos fetched, stored and deleted."""

    shown: int = 0
    fetched: int = 0
    stored: int = 0
    deleted: int = 0
    failures: list[LogoFailure] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        """The import summary's ``logos`` member."""
        return {
            "shown": self.shown,
            "fetched": self.fetched,
            "stored": self.stored,
            "deleted": self.deleted,
            "failed": [
                {"tenants": list(f.tenants), "reason": f.reason, "kept": f.kept}
                for f in self.failures
            ],
        }


async def import_logos(
    sessionmaker: async_sessionmaker[AsyncSession],
    fetcher: LogoFetcher,
    endpoints: Sequence[ImportedEndpoint],
    *,
    now: dt.datetime,
) -> LogoReport:
    """Fetch, store and assign the logos of ``endpoints`` (registered tenants, by name)."""
    results = await fetcher.fetch_all(url for e in endpoints for url in e.logo_urls)
    report = LogoReport(fetched=sum(isinstance(r, Logo) for r in results.values()))
    failed: dict[tuple[str, bool], list[str]] = {}
    async with sessionmaker.begin() as session:
        current = await logo_repo.tenant_logos(session)
        changes: list[TenantLogo] = []
        chosen: dict[str, Logo] = {}
        for endpoint in endpoints:
            had = current.get(endpoint.name)
            if had is None:
                continue  # not registered (its registration failed)
            found = [(url, results[url]) for url in endpoint.logo_urls]
            logo = next(((u, r) for u, r in found if isinstance(r, Logo)), None)
            if logo is not None:
                url, image = logo
                chosen[image.sha256] = image
                wanted = TenantLogo(had.tenant_id, image.sha256, source_of(url))
            else:
                sources = {source_of(url) for url, _ in found}
                kept = had.sha256 is not None and had.source in sources
                wanted = had if kept else TenantLogo(had.tenant_id, None, None)
                if found:
                    reason = "; ".join(str(r) for _, r in found if isinstance(r, Refused))
                    failed.setdefault((reason, kept), []).append(endpoint.name)
            if wanted.sha256 is not None:
                report.shown += 1
            if (wanted.sha256, wanted.source) != (had.sha256, had.source):
                changes.append(wanted)
        report.stored = await logo_repo.store_logos(
            session, ((i.sha256, i.content_type, i.content) for i in chosen.values()), now=now
        )
        await logo_repo.set_tenant_logos(session, changes, now=now)
        report.deleted = await logo_repo.prune_logos(session)
    report.failures = [
        LogoFailure(tuple(names), reason, kept) for (reason, kept), names in failed.items()
    ]
    return report
