"""The demo: syncsvc and the sandbox EHR on this machine, one patient connected and synced.

Everything lives in one data folder (default ``.syncsvc-demo``): the SQLite database, a generated
vault key file and the demo's own secrets (link-signing key, API key, operator token), created on
first run with owner-only permissions and reused afterwards. The database starts fresh on every
run: the sandbox EHR keeps its grants in memory, so the previous run's connections could only
fail to refresh (and say so, loudly) against the new one.
The demo patient connects headlessly through the real pages (a scripted browser fills the
sandbox's login form); a person can then open the printed link to connect another.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

from syncsvc.connect.links import issue_connect_link
from syncsvc.db import repo
from syncsvc.db.migrate import upgrade_to_head
from syncsvc.db.stats_repo import count_resources
from syncsvc.directory.tenants import TenantSpec, register_tenant
from syncsvc.errors import SyncsvcError
from syncsvc.http import describe_listen_error
from syncsvc.sandbox.config import default_config
from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.sandbox.server import RunningSandbox, running_sandbox
from syncsvc.services import Services
from syncsvc.settings import Secret, Settings
from syncsvc.smart.mixup import tenant_callback_uri
from syncsvc.smart.scopes import grant_report
from syncsvc.sync.runner import WorkReport, run_due
from syncsvc.vault import ensure_key_file
from syncsvc.web.app import create_app
from syncsvc.web.keys import SERVICES, SIGNER

DEMO_USER = "demo-user"
DEMO_PATIENT_LOGIN = "nancysmart"
SANDBOX_SECRET = "sandbox-secret"  # noqa: S105 - the sandbox's documented demo credential
#: The sandbox tenants the demo registers: (sandbox tenant id, syncsvc name, confidential?).
DEMO_TENANTS = (
    ("ec2458f2-1e24-41c8-b71b-0e701af7583d", "cerner", True),
    ("epic-sandbox", "epic", False),
    ("generic", "generic", False),
)
SYNC_ROUNDS = 5


@dataclass
class DemoSummary:
    """What the demo did, printed as one JSON line by ``demo --once``."""

    connections: list[dict[str, Any]] = field(default_factory=list)
    resources_stored: int = 0
    sync: dict[str, Any] = field(default_factory=dict)
    connect_url: str | None = None
    syncsvc_url: str | None = None
    sandbox_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict."""
        return {
            "ok": bool(self.connections) and self.resources_stored > 0,
            "connections_made": len(self.connections),
            "connections": self.connections,
            "resources_stored": self.resources_stored,
            "sync": self.sync,
            "syncsvc_url": self.syncsvc_url,
            "sandbox_url": self.sandbox_url,
        }


def _demo_secrets(data_dir: Path) -> dict[str, str]:
    """The demo's link-signing key, API key and operator token, created once."""
    path = data_dir / "demo-secrets.json"
    if path.exists():
        loaded: dict[str, str] = json.loads(path.read_text(encoding="utf-8"))
        return loaded
    values = {
        "link_signing_key": secrets.token_urlsafe(32),
        "api_key": secrets.token_urlsafe(24),
        "admin_token": secrets.token_urlsafe(24),
    }
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(values, handle, indent=2)
    return values


def fresh_database(data_dir: Path, say: Callable[[str], None]) -> None:
    """Remove the previous run's SQLite database (its grants died with that run's sandbox)."""
    database = data_dir / "syncsvc.db"
    if database.exists():
        say("starting from a fresh demo database (the sandbox EHR forgot the last run's grants)")
    for suffix in ("", "-wal", "-shm"):
        database.with_name(database.name + suffix).unlink(missing_ok=True)


def demo_settings(data_dir: Path, public_url: str, say: Callable[[str], None]) -> Settings:
    """Settings for the demo's data folder (keys generated on the first run)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    # The folder holds the database, the vault key and the demo's secrets: owner only.
    data_dir.chmod(0o700)
    key_file = data_dir / "vault-keys.json"
    if not key_file.exists():
        say(f"generated a vault key in {key_file} (keep it: the stored tokens need it)")
    keys = ensure_key_file(key_file)
    values = _demo_secrets(data_dir)
    return Settings(
        data_dir=data_dir,
        database_url=f"sqlite+aiosqlite:///{data_dir / 'syncsvc.db'}",
        public_url=public_url,
        vault_keys=keys,
        vault_key_file=key_file,
        link_signing_key=Secret(values["link_signing_key"]),
        api_keys=(Secret(values["api_key"]),),
        admin_token=Secret(values["admin_token"]),
        log_format="console",
        log_level="WARNING",
    )


def bind_loopback(port: int) -> socket.socket:
    """A socket on 127.0.0.1:``port`` (0: any free port), bound before the server starts."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except OSError as exc:
        sock.close()
        raise SyncsvcError(describe_listen_error("127.0.0.1", port, exc)) from exc
    return sock


@asynccontextmanager
async def serving(app: web.Application, sock: socket.socket) -> AsyncIterator[None]:
    """Serve ``app`` on ``sock`` until the block exits."""
    runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.SockSite(runner, sock).start()
        yield
    finally:
        await runner.cleanup()


async def _register_sandbox_tenants(
    app: web.Application, sandbox: RunningSandbox, public_url: str
) -> None:
    now = dt.datetime.now(dt.UTC)
    for sandbox_id, name, confidential in DEMO_TENANTS:
        config = sandbox.tenant(sandbox_id)
        spec = TenantSpec(
            name=name,
            display_name=config.name,
            vendor=config.vendor,
            fhir_base=sandbox.urls(sandbox_id).fhir_base,
            client_id="syncsvc-confidential" if confidential else "syncsvc-public",
            auth_method="client_secret_basic" if confidential else "public",
            client_secret=SANDBOX_SECRET if confidential else None,
            redirect_uri=tenant_callback_uri(public_url, name),
        )
        services = app[SERVICES]
        await register_tenant(services.sessionmaker, services.vault, services.http, spec, now=now)


async def run_demo(
    *,
    data_dir: Path,
    once: bool,
    port: int,
    sandbox_port: int,
    say: Callable[[str], None],
) -> DemoSummary:
    """Run the demo; with ``once``, return after the first sync, else serve until cancelled."""
    app_socket = bind_loopback(port)
    sandbox_socket = bind_loopback(sandbox_port)
    public_url = f"http://127.0.0.1:{app_socket.getsockname()[1]}"
    settings = demo_settings(data_dir, public_url, say)
    fresh_database(data_dir, say)
    await upgrade_to_head(settings.database_url)
    # Each tenant has its own redirect URI (the mix-up defence), registered at the sandbox.
    sandbox_config = default_config(
        redirect_uris=[tenant_callback_uri(public_url, name) for _, name, _ in DEMO_TENANTS]
    )
    summary = DemoSummary(syncsvc_url=public_url)
    async with AsyncExitStack() as stack:
        sandbox = await stack.enter_async_context(
            running_sandbox(sandbox_config, sock=sandbox_socket)
        )
        summary.sandbox_url = sandbox.origin
        # Interactive: keep syncing in the background, as `syncsvc serve` does.
        app = create_app(Services(settings, background=not once))
        await stack.enter_async_context(serving(app, app_socket))
        await _connect_and_sync(app, settings, sandbox, summary, say)
        summary.connect_url = await _fresh_link(app, settings)
        if once:
            return summary
        say(f"syncsvc is running at {public_url}; the sandbox EHR at {sandbox.origin}")
        say(f"connect another patient in a browser: {summary.connect_url}")
        say("  sandbox logins: nancysmart, wilmasmart, timmysmart; password: portal")
        say(
            f"  sandbox clients: syncsvc-public (public), syncsvc-confidential (secret "
            f"'{SANDBOX_SECRET}')"
        )
        say(f"host-app API key and operator token: {data_dir / 'demo-secrets.json'}")
        say("press Ctrl-C to stop")
        await asyncio.Event().wait()
    return summary


async def _fresh_link(
    app: web.Application, settings: Settings, tenant_name: str | None = None
) -> str:
    async with app[SERVICES].sessionmaker.begin() as session:
        link = await issue_connect_link(
            session,
            app[SIGNER],
            settings,
            user_id=DEMO_USER,
            tenant_name=tenant_name,
            now=dt.datetime.now(dt.UTC),
        )
    return link.url


async def _connect_and_sync(
    app: web.Application,
    settings: Settings,
    sandbox: RunningSandbox,
    summary: DemoSummary,
    say: Callable[[str], None],
) -> None:
    await _register_sandbox_tenants(app, sandbox, settings.public_url)
    link_url = await _fresh_link(app, settings, "cerner")
    say("connecting the demo patient (Nancy Smart) at the Cerner-shaped sandbox tenant ...")
    async with ScriptedPatient(username=DEMO_PATIENT_LOGIN) as patient:
        page = await patient.connect(link_url)
    if page.status != 200:
        raise SyncsvcError(f"the demo patient could not connect (HTTP {page.status})")
    context = app[SERVICES].sync_context()
    totals = WorkReport()
    for _ in range(SYNC_ROUNDS):
        report = await run_due(context)
        totals.add(report)
        if report.connections_worked == 0:
            break
    summary.sync = totals.to_json()
    await _describe_connections(app, summary)
    # What this sync stored, from its own report (not a count of what the database holds).
    stored = totals.resources["new"] + totals.resources["changed"]
    say(f"first sync done: {stored} resources stored")


async def _describe_connections(app: web.Application, summary: DemoSummary) -> None:
    async with app[SERVICES].sessionmaker() as session:
        for connection in await repo.list_connections(session, user_id=DEMO_USER):
            report = grant_report(
                connection.requested_scopes, connection.granted_scopes, has_refresh_token=True
            )
            stored = await count_resources(session, connection.id)
            summary.resources_stored += sum(stored.values())
            summary.connections.append(
                {
                    "id": connection.id,
                    "status": connection.status,
                    "patient_id": connection.patient_id,
                    "granted_scopes": list(report.granted),
                    "trimmed_scopes": list(report.trimmed),
                    "resources": stored,
                }
            )
