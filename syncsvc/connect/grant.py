"""What a launch works with and produces: the process's services, the exchanged grant, the
outcome."""

from __future__ import annotations

from dataclasses import dataclass

import aiohttp
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db.models import Connection, LaunchAttempt, Tenant
from syncsvc.settings import Settings
from syncsvc.smart import oauth
from syncsvc.smart.discovery import SmartConfiguration
from syncsvc.smart.scopes import GrantReport
from syncsvc.vault import Vault


@dataclass(frozen=True)
class LaunchServices:
    """What the launch needs from the process."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    vault: Vault
    http: aiohttp.ClientSession


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
