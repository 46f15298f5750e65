"""Read one connection's state from every surface a person or a program sees it on.

The patient's status page, ``syncsvc connections show`` (a real process, JSON and text), the
host API, the tenant health JSON, the metrics and the queued webhooks, all over real HTTP or
the real command line. Tests compare them with each other, not each with a copy of the words.
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from sqlalchemy import select

from syncsvc.db.models.activity import WebhookDelivery
from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.settings import Secret
from syncsvc.sync.context import SyncContext, utcnow
from syncsvc.sync.runner import WorkReport, run_due
from syncsvc.web.keys import SERVICES
from tests.integration.cli.runner import syncsvc
from tests.integration.web.flows import Flow, sync_context

#: Webhooks are queued for this address and read back from the outbox, never sent.
WEBHOOK_URL = "http://127.0.0.1:9/hooks"


def text(page: str) -> str:
    """A page's visible words: tags dropped, entities decoded, whitespace collapsed."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", page)).split())


class Clock:
    """Wall time plus an offset, moved together with the sandbox's clock."""

    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.offset = dt.timedelta()

    def now(self) -> dt.datetime:
        return utcnow() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += dt.timedelta(seconds=seconds)
        self.flow.sandbox.state.clock_offset += seconds


def hooked_context(flow: Flow, clock: Callable[[], dt.datetime] = utcnow) -> SyncContext:
    """A sync context whose webhooks are queued (and read back by :func:`read_surfaces`)."""
    ctx = sync_context(flow.service, clock=clock)
    settings = ctx.settings.replace(webhook_url=WEBHOOK_URL, webhook_secret=Secret("s" * 32))
    return SyncContext(
        settings=settings,
        sessionmaker=ctx.sessionmaker,
        vault=ctx.vault,
        http=ctx.http,
        clock=clock,
    )


async def sync(flow: Flow, clock: Callable[[], dt.datetime] = utcnow) -> WorkReport:
    """Refresh and pull what is due, as the scheduler's tick would (webhooks queued)."""
    return await run_due(hooked_context(flow, clock))


@dataclass(frozen=True)
class Surfaces:
    """One connection as every surface showed it."""

    status_page: str
    cli: dict[str, Any]
    cli_text: str
    api: dict[str, Any]
    health: dict[str, Any]
    health_page: str
    metrics: str
    webhooks: list[dict[str, Any]]

    @property
    def explanation(self) -> dict[str, Any]:
        """The API's explanation (the others are compared with it)."""
        explanation: dict[str, Any] = self.api["explanation"]
        return explanation

    def metric(self, name: str, **labels: str) -> float | None:
        """The value of one sample of the exposition, or None when it is absent."""
        for line in self.metrics.splitlines():
            if not line.startswith(name + "{") and line.split(" ")[0] != name:
                continue
            sample, _, value = line.rpartition(" ")
            found = dict(re.findall(r'(\w+)="([^"]*)"', sample))
            if sample.split("{")[0] == name and all(found.get(k) == v for k, v in labels.items()):
                return float(value)
        return None

    def assert_agree(self) -> None:
        """Every surface carries the same status and the same sentences, in the same words."""
        words = self.explanation
        status = self.api["status"]
        assert self.cli["status"] == status
        assert self.cli["explanation"] == words
        page = text(self.status_page)
        assert f"{words['title']}. {words['summary']}" in page
        assert f"{words['title']}. {words['summary']}" in text(self.cli_text)
        for sentence in words["sentences"]:
            assert sentence in page, sentence
            assert sentence in text(self.cli_text), sentence
        # What became of the shared resources the record names: one sentence, everywhere.
        untimed = [
            {k: v for k, v in (shown or {}).items() if k != "resolved_at"}
            for shown in (self.cli["references"], self.api["references"])
        ]
        assert untimed[0] == untimed[1]
        references = (self.api["references"] or {}).get("sentence")
        if references:
            assert references in page
            assert references in text(self.cli_text)
        api_types = {t["type"]: (t["status"], t["sentence"]) for t in self.api["types"]}
        cli_types = {t["type"]: (t["state"], t["sentence"]) for t in self.cli["types"]}
        assert api_types == cli_types
        assert self.metric("syncsvc_connections", tenant=self.health["tenant"], status=status) == 1
        assert self.health["connections"][status] == 1
        # The operator's page names the deciding rule the JSON names.
        assert self.health["rule"]["id"] in self.health_page
        # "Kept up to date" only where a refresh token and a readable type exist.
        kept = words["kept_up_to_date"]
        assert kept == (status == "active" and self.cli["tokens"]["refresh_token"] is True)
        assert ("kept up to date" in page) == kept
        for hook in self.webhooks:
            # Each webhook was worded when it was queued; the newest one matches now.
            assert set(hook["data"]["explanation"]) == set(words)
        if self.webhooks:
            assert self.webhooks[-1]["data"]["explanation"] == words


async def read_surfaces(
    flow: Flow, patient: ScriptedPatient, operator: aiohttp.ClientSession, connection_id: str
) -> Surfaces:
    """Every surface's view of ``connection_id`` now."""
    page = await patient.open(f"{flow.service.origin}/status")
    assert page.status == 200, page.body
    settings = flow.service.settings
    shown = await syncsvc(settings, "connections", "show", connection_id, "--json")
    assert shown.code == 0, shown.stderr
    human = await syncsvc(settings, "connections", "show", connection_id)
    assert human.code == 0, human.stderr
    async with flow.api.get(f"/api/v1/connections/{connection_id}") as response:
        assert response.status == 200, await response.text()
        api = await response.json()
    tenant = api["tenant"]["name"]
    async with operator.get(f"/tenants/{tenant}/health") as response:
        assert response.status == 200, await response.text()
        health = await response.json()
    async with operator.get(
        f"/tenants/{tenant}/health", headers={"Accept": "text/html"}
    ) as response:
        assert response.status == 200
        health_page = await response.text()
    async with operator.get("/metrics") as response:
        assert response.status == 200
        metrics = await response.text()
    async with flow.service.app[SERVICES].sessionmaker() as session:
        rows = await session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.connection_id == connection_id)
            .order_by(WebhookDelivery.created_at)
        )
        hooks = [orjson.loads(row.payload) for row in rows]
    cli = shown.json()
    assert isinstance(cli, dict)
    return Surfaces(page.body, cli, human.stdout, api, health, health_page, metrics, hooks)
