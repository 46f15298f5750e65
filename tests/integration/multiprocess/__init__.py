"""Real ``syncsvc worker`` processes on one PostgreSQL database against the sandbox.

The sandbox runs in the test's own event loop on loopback; workers are ``python -m syncsvc
worker`` with the test's settings in their environment, scaled down (sub-second ticks, leases of
seconds, tokens that live seconds) so several refresh cycles pass in seconds. Their logs go to
files so a chatty worker can never block on a full pipe.

Every proof reads state the workers cannot fake: the sandbox's grants (refresh counts, current
refresh token, revocations) and request log, against syncsvc's credentials, runs and resources.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import aiohttp
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db.models.connections import Connection, Credential
from syncsvc.db.models.records import Resource, SyncRun
from syncsvc.sandbox.config import SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sandbox.state import Grant
from syncsvc.settings import Settings
from syncsvc.sync.credentials import load_tokens
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.cli.runner import ROOT, environment
from tests.integration.pull import SandboxAdmin
from tests.integration.scheduler import connect_many

Sessionmaker = async_sessionmaker[AsyncSession]
NANCY = "12724066"
#: A worker must exit within this after SIGTERM (in-flight work finishes first).
STOP_SECONDS = 30.0


def strict_rotation(
    config: SandboxConfig, *, access_token_lifetime: int, sizes: dict[str, int]
) -> SandboxConfig:
    """The generic tenant rotating strictly (reuse revokes the grant), with short-lived tokens.

    Nancy is auto-approved, a refresh sooner than two seconds after the last is throttled, and
    her record holds ``sizes`` resources per type.
    """
    tenant = next(t for t in config.tenants if t.id == GENERIC_TENANT)
    tenant.policy.auto_approve_patient = NANCY
    tenant.policy.refresh_mode = "strict_rotation"
    tenant.policy.access_token_lifetime = access_token_lifetime
    tenant.policy.refresh_min_interval = 2
    tenant.patients[0].sizes = sizes
    return config


async def nancys_record(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, types: tuple[str, ...]
) -> set[tuple[str, str]]:
    """(type, id) of all a complete pull of ``types`` stores for Nancy at the generic tenant."""
    admin = SandboxAdmin(sandbox, http)
    return {("Patient", NANCY)} | {
        (resource_type, rid)
        for resource_type in types
        if resource_type != "Patient"
        for rid in await admin.ids(GENERIC_TENANT, NANCY, resource_type)
    }


def worker_env(settings: Settings, **overrides: str | int | float) -> dict[str, str]:
    """The environment of a worker process: the test's settings plus scaled-down timings."""
    env = environment(settings)
    env["SYNCSVC_LOG_FORMAT"] = "json"
    for name, value in overrides.items():
        env[f"SYNCSVC_{name.upper()}"] = str(value)
    return env


@dataclass
class Worker:
    """One ``syncsvc worker`` process."""

    process: asyncio.subprocess.Process
    log_path: Path
    log_file: IO[bytes]

    @classmethod
    async def start(cls, env: dict[str, str], log_path: Path, *args: str) -> Worker:
        """Start a worker (with ``args``); its standard streams go to ``log_path``."""
        log_file = log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "syncsvc",
            "worker",
            *args,
            cwd=ROOT,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
        return cls(process, log_path, log_file)

    @property
    def alive(self) -> bool:
        """Whether the process has not exited."""
        return self.process.returncode is None

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind runs (a crash)."""
        if self.alive:
            self.process.send_signal(signal.SIGKILL)

    async def wait(self, within: float = STOP_SECONDS) -> int:
        """The exit code, waiting at most ``within`` seconds (then SIGKILL and fail)."""
        try:
            async with asyncio.timeout(within):
                code = await self.process.wait()
        except TimeoutError:
            self.kill()
            await self.process.wait()
            raise
        finally:
            self.log_file.close()
        return code

    async def terminate(self) -> int:
        """SIGTERM and wait for the graceful exit."""
        if self.alive:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait()

    def log(self) -> str:
        """What the worker wrote."""
        return self.log_path.read_text(errors="replace")


@dataclass
class Fleet:
    """Connections made at the sandbox and the sandbox grant behind each."""

    tenant_id: str
    grants: dict[str, str] = field(default_factory=dict)  # connection id → grant id

    @property
    def ids(self) -> list[str]:
        """Every connection id."""
        return list(self.grants)


async def make_fleet(
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    sandbox_tenant: str,
    count: int,
    types: tuple[str, ...],
) -> Fleet:
    """``count`` connections to Nancy through real authorization flows, each mapped to its grant."""
    tenant, ids = await connect_many(
        sessionmaker, vault, http, sandbox, sandbox_tenant, count, types=types
    )
    fleet = Fleet(tenant.id)
    async with sessionmaker() as session:
        for connection_id in ids:
            tokens = await load_tokens(session, vault, connection_id)
            assert tokens is not None
            assert tokens.refresh_token is not None
            fleet.grants[connection_id] = sandbox.state.refresh_index[tokens.refresh_token]
    return fleet


@dataclass(frozen=True)
class Snapshot:
    """syncsvc's side of every connection, read in one go."""

    connections: dict[str, Connection]
    versions: dict[str, int]
    refresh_tokens: dict[str, str | None]
    resources: dict[str, Counter[tuple[str, str]]]
    runs: list[SyncRun]


async def snapshot(sessionmaker: Sessionmaker, vault: Vault) -> Snapshot:
    """Connections, credential versions, stored refresh tokens, resource keys and runs."""
    async with sessionmaker() as session:
        connections = {row.id: row for row in await session.scalars(select(Connection))}
        versions = {
            row.connection_id: row.version for row in await session.scalars(select(Credential))
        }
        refresh_tokens = {}
        for connection_id in connections:
            tokens = await load_tokens(session, vault, connection_id)
            refresh_tokens[connection_id] = tokens.refresh_token if tokens else None
        resources: dict[str, Counter[tuple[str, str]]] = {}
        keys = await session.execute(
            select(Resource.connection_id, Resource.resource_type, Resource.resource_id)
        )
        for connection_id, resource_type, resource_id in keys:
            resources.setdefault(connection_id, Counter())[(resource_type, resource_id)] += 1
        runs = list(await session.scalars(select(SyncRun).order_by(SyncRun.started_at)))
    return Snapshot(connections, versions, refresh_tokens, resources, runs)


async def min_credential_version(sessionmaker: Sessionmaker) -> int:
    """The lowest credential version over every connection."""
    async with sessionmaker() as session:
        return int(await session.scalar(select(func.min(Credential.version))) or 0)


def grant_of(sandbox: RunningSandbox, fleet: Fleet, connection_id: str) -> Grant:
    """The sandbox's grant behind a connection."""
    return sandbox.state.grants[fleet.grants[connection_id]]


def token_requests(sandbox: RunningSandbox, token_url: str) -> list[tuple[int, float]]:
    """(status, time) of every request the sandbox's token endpoint saw."""
    return [
        (entry.status, entry.at)
        for entry in sandbox.state.request_log
        if entry.method == "POST" and entry.url == token_url
    ]


def busiest_second(times: list[float]) -> int:
    """The most requests within any one-second window."""
    ordered = sorted(times)
    best, start = 0, 0
    for end, moment in enumerate(ordered):
        while moment - ordered[start] >= 1.0:
            start += 1
        best = max(best, end - start + 1)
    return best


def utcnow() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)
