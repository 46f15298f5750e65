"""A connection and its tenant as a transaction just before left them, for the next to start from.

A refresh reads the connection and its tenant, and writes the connection; the pull that follows
at once starts from what the refresh left (:class:`ConnectionRead`) rather than reading both
again. What a pull reads of the connection (status, grant, base, patient, next sync) changes only
with a refresh, which the lease keeps to this process, or with a disconnect, which the run's first
write checks for itself (:func:`syncsvc.db.run_repo.start_run`).
"""

from __future__ import annotations

from dataclasses import dataclass

from syncsvc.db.models.connections import Connection, Tenant


@dataclass(frozen=True)
class ConnectionRead:
    """The connection (detached, as last written or read) and its tenant."""

    connection: Connection
    tenant: Tenant
