"""The lifecycle work every scheduler tick does after its sync round, in the order it runs."""

from __future__ import annotations

from syncsvc.lifecycle.purge import purge_expired
from syncsvc.lifecycle.revocations import retry_pending
from syncsvc.lifecycle.webhooks import deliver_due
from syncsvc.sync.scheduler import Chore

#: How often one process purges expired rows: they are no hurry, ticks come every few seconds.
PURGE_INTERVAL_SECONDS = 60.0


def outbox_chores() -> tuple[Chore, ...]:
    """Deliver due webhooks and retry pending revocations every tick; purge once a minute."""
    return (
        Chore("webhooks", deliver_due),
        Chore("revocations", retry_pending),
        Chore("purge", purge_expired, every_seconds=PURGE_INTERVAL_SECONDS),
    )
