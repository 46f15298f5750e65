"""What a launch produces: the exchanged grant and the outcome.

The launch works with the process's sync context (``syncsvc.sync.context.SyncContext``), the
same one every request gets from the composition root.
"""

from __future__ import annotations

from dataclasses import dataclass

from syncsvc.db.models.connections import Connection, LaunchAttempt, Tenant
from syncsvc.smart import oauth
from syncsvc.smart.discovery import SmartConfiguration
from syncsvc.smart.scopes import GrantReport


@dataclass(frozen=True)
class Exchange:
    """Everything known once the code has been exchanged."""

    attempt: LaunchAttempt
    tenant: Tenant
    config: SmartConfiguration
    tokens: oauth.TokenResponse
    requested: list[str]
    granted: list[str]


@dataclass(frozen=True)
class LaunchOutcome:
    """A finished launch: the stored connection and what the EHR granted."""

    connection: Connection
    tenant: Tenant
    report: GrantReport
    patient_name: str | None
