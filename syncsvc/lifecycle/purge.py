"""The tick's clean-up: rows that only record something finished are deleted after a while.

Launch attempts and connect links are created by anyone holding a link or a session, so without
a purge their tables only grow. Each kind goes in batches of :data:`BATCH_SIZE` rows, each batch
its own short transaction, and at most :data:`BATCHES_PER_KIND` batches a round, so a backlog is
worked off over several ticks without holding locks for long. Rows are kept a while after they
stopped mattering, so a late click still gets the precise explanation ("this link was used",
"this sign-in expired") rather than "unknown".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import purge_repo
from syncsvc.logging import get_logger
from syncsvc.sync.context import SyncContext

log = get_logger("syncsvc.lifecycle.purge")

BATCH_SIZE = 500
BATCHES_PER_KIND = 4
#: Expired launch attempts and used or expired connect links are kept this long.
LAUNCH_GRACE = dt.timedelta(hours=1)
#: Finished webhook deliveries (delivered or given up) are kept this long, for inquiries.
WEBHOOK_RETENTION = dt.timedelta(days=30)

Purge = Callable[..., Awaitable[int]]


@dataclass
class PurgeReport:
    """Rows deleted in one round, by table."""

    deleted: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Rows deleted in all tables."""
        return sum(self.deleted.values())


async def purge_expired(
    ctx: SyncContext, *, batch_size: int = BATCH_SIZE, batches: int = BATCHES_PER_KIND
) -> PurgeReport:
    """Delete expired and finished rows, a few small batches of each kind."""
    now = ctx.now()
    kinds: tuple[tuple[str, Purge, dt.datetime], ...] = (
        ("launch_attempts", purge_repo.purge_launch_attempts, now - LAUNCH_GRACE),
        ("connect_links", purge_repo.purge_connect_links, now - LAUNCH_GRACE),
        ("webhook_deliveries", purge_repo.purge_webhook_deliveries, now - WEBHOOK_RETENTION),
    )
    report = PurgeReport()
    for table, purge, before in kinds:
        deleted = 0
        for _ in range(batches):
            session: AsyncSession
            async with ctx.sessionmaker.begin() as session:
                done = await purge(session, before=before, limit=batch_size)
            deleted += done
            if done < batch_size:
                break
        report.deleted[table] = deleted
    if report.total:
        log.info("purged", **report.deleted)
    return report
