"""Steps the patient-page tests share: a connected and synced patient, the disconnect form,
sandbox grants, rows."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from urllib.parse import urlsplit

from sqlalchemy import func, select

from syncsvc.db.models.activity import Event, PendingRevocation
from syncsvc.db.models.connections import Connection, Credential
from syncsvc.db.models.records import Resource
from syncsvc.sandbox.patient import Form, PageResult, ScriptedPatient, parse_forms
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sandbox.state import Grant
from syncsvc.sync.context import SyncContext, utcnow
from syncsvc.sync.runner import run_due
from syncsvc.web.keys import SERVICES
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.web.flows import Flow, sync_context
from tests.integration.web.service import RunningService

NANCY = "12724066"
#: What :func:`counts` finds once a connection's data and tokens are gone and nothing is queued.
NOTHING_LEFT = {"resources": 0, "credentials": 0, "pending": 0}


def context(flow: Flow, clock: Callable[[], dt.datetime] = utcnow) -> SyncContext:
    """A sync context on the running service's database and vault, with the test's client."""
    return sync_context(flow.service, flow.http, clock)


async def connect_and_sync(
    flow: Flow, patient: ScriptedPatient, *, user_id: str = "user-7"
) -> Connection:
    """Register the generic tenant, connect ``patient`` through the pages, then sync once."""
    await flow.register(GENERIC_TENANT, name="generic")
    page = await patient.connect(await flow.link(user_id, tenant="generic"))
    assert page.status == 200, page.body
    report = await run_due(context(flow))
    assert report.sync == {"ok": 1}, report.to_json()
    return await flow.only_connection()


def disconnect_url(service: RunningService, connection_id: str) -> str:
    """The patient's disconnect page of a connection."""
    return f"{service.origin}/status/connections/{connection_id}/disconnect"


async def open_disconnect(patient: ScriptedPatient, url: str) -> tuple[PageResult, Form]:
    """Open the disconnect page at ``url``; the page and its form (posting back to ``url``)."""
    confirm = await patient.open(url)
    return confirm, form_posting_to(confirm.body, url)


async def connection(service: RunningService, connection_id: str) -> Connection:
    """One connection row, read fresh."""
    async with service.app[SERVICES].sessionmaker() as session:
        row = await session.get(Connection, connection_id)
    assert row is not None
    return row


async def counts(service: RunningService, connection_id: str) -> dict[str, int]:
    """How many resources, credentials and pending revocations the connection has."""
    async with service.app[SERVICES].sessionmaker() as session:
        resources = await session.scalar(
            select(func.count()).where(Resource.connection_id == connection_id)
        )
        credentials = await session.scalar(
            select(func.count()).where(Credential.connection_id == connection_id)
        )
        queued = await session.scalar(
            select(func.count()).where(PendingRevocation.connection_id == connection_id)
        )
    return {"resources": resources or 0, "credentials": credentials or 0, "pending": queued or 0}


async def pending(service: RunningService) -> list[PendingRevocation]:
    """Every pending revocation row."""
    async with service.app[SERVICES].sessionmaker() as session:
        return list(await session.scalars(select(PendingRevocation)))


async def events(service: RunningService, kind: str) -> list[Event]:
    """Events of ``kind``, oldest first."""
    async with service.app[SERVICES].sessionmaker() as session:
        return list(
            await session.scalars(select(Event).where(Event.kind == kind).order_by(Event.id))
        )


def grant_of(sandbox: RunningSandbox, patient_id: str = NANCY) -> Grant:
    """The sandbox's (single) grant for ``patient_id`` at the generic tenant."""
    [grant] = [
        g
        for g in sandbox.state.grants.values()
        if g.patient_id == patient_id and g.tenant_id == GENERIC_TENANT
    ]
    return grant


def form_posting_to(html: str, fragment: str) -> Form:
    """The one form on a page whose action contains ``fragment`` (a URL's path counts)."""
    needle = urlsplit(fragment).path or fragment
    [form] = [f for f in parse_forms(html) if needle in f.action]
    return form


def words(html: str) -> str:
    """A page's text with runs of whitespace collapsed, for matching sentences across lines."""
    return " ".join(html.split())
