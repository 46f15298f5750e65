"""Operator endpoints: liveness and readiness probes, tenant health, Prometheus metrics.

``/healthz`` and ``/readyz`` are for load balancers: no credential, no data beyond which check
failed. ``/tenants/health``, ``/tenants/{tenant}/health`` and ``/metrics`` need the operator token:
tenant names, error counts and scope grants describe the deployment's EHR relationships, and
Prometheus sends a bearer token with ``authorization: {credentials: ...}`` in its scrape config.
The health pages answer JSON by default and HTML to a browser (``Accept: text/html``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from sqlalchemy.exc import SQLAlchemyError

from syncsvc.db import repo
from syncsvc.errors import NotFound
from syncsvc.health.chart import outcome_chart
from syncsvc.health.readiness import readiness, snapshot
from syncsvc.health.report import TenantHealth, all_tenant_health, tenant_health
from syncsvc.health.rules import RULES, worst
from syncsvc.logging import get_logger
from syncsvc.web.auth import require_operator
from syncsvc.web.handlers.api import json_response
from syncsvc.web.keys import METRICS, SERVICES, SETTINGS
from syncsvc.web.metrics import CONTENT_TYPE

log = get_logger("syncsvc.web.operators")
#: A scrape gives up on the tenant reports after this long (Prometheus is waiting).
SCRAPE_TIMEOUT_SECONDS = 10.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _quality(accept: str, media_type: str) -> float:
    """The q-value ``accept`` gives ``media_type`` (exact, then ``type/*``, then ``*/*``)."""
    main = media_type.split("/", 1)[0]
    best: tuple[int, float] = (-1, 0.0)
    for item in accept.split(","):
        name, *params = (part.strip() for part in item.split(";"))
        specificity = {media_type: 2, f"{main}/*": 1, "*/*": 0}.get(name.lower())
        if specificity is None:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        best = max(best, (specificity, q))
    return best[1]


def wants_html(request: web.Request) -> bool:
    """Whether the client prefers HTML over JSON (JSON wins ties: it is the default)."""
    accept = request.headers.get("Accept", "")
    return _quality(accept, "text/html") > _quality(accept, "application/json")


def _age(moment: dt.datetime | None, now: dt.datetime) -> str:
    """A short age for people: ``42 s``, ``7 min``, ``3.5 h``, ``2.0 d`` (``never`` for None)."""
    if moment is None:
        return "never"
    return _duration((now - moment).total_seconds())


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 0:
        return f"in {_duration(-seconds)}"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def _negotiated(
    request: web.Request, body: dict[str, Any], template: str, context: dict[str, Any]
) -> web.Response:
    if wants_html(request):
        response = aiohttp_jinja2.render_template(
            template, request, {**context, "age": _age, "duration": _duration}
        )
    else:
        response = json_response(body)
    response.headers["Vary"] = "Accept, Authorization"
    return response


async def healthz(_request: web.Request) -> web.Response:
    """``GET /healthz``: the process answers."""
    return json_response({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    """``GET /readyz``: database reachable, schema at head, and the scheduler ticking (if any)."""
    scheduler = request.app[SERVICES].scheduler
    ready, checks = await readiness(
        request.app[SERVICES].sessionmaker, scheduler, request.app[SETTINGS].tick_seconds
    )
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": checks}
    if scheduler is not None:
        # When the tick last ran: what "stale" is judged on, for the operator who sees it.
        body["last_tick_at"] = scheduler.last_tick_at
    return json_response(body, status=200 if ready else 503)


def _summary(report: TenantHealth) -> dict[str, Any]:
    return {
        "tenant": report.name,
        "display_name": report.display_name,
        "status": report.status,
        "rule": {"id": report.verdict.rule, "reason": report.verdict.reason},
        "connections": {"total": sum(report.connections.values()), **report.connections},
        "last_successful_sync_at": report.last_sync_success_at,
        "sync_lag_p95_seconds": report.lag_p95_seconds,
        "errors_last_hour": report.errors_hour.total,
        "errors_last_day": report.errors_day.total,
        "href": f"/tenants/{report.name}/health",
    }


async def tenants_health(request: web.Request) -> web.Response:
    """``GET /tenants/health``: every tenant's status and the rule that decided it."""
    require_operator(request)
    now = _now()
    async with request.app[SERVICES].sessionmaker() as session:
        reports = await all_tenant_health(session, now)
    status = worst([r.verdict.status for r in reports])
    body = {
        "status": status,
        "generated_at": now,
        "tenants": [_summary(r) for r in reports],
        "rules": [
            {"id": rule.id, "status": rule.status, "description": rule.description}
            for rule in RULES
        ],
    }
    context = {"status": status, "now": now, "reports": reports}
    return _negotiated(request, body, "tenants_health.html", context)


async def one_tenant_health(request: web.Request) -> web.Response:
    """``GET /tenants/{tenant}/health``: one tenant's status, its reasons and its figures."""
    require_operator(request)
    name = request.match_info["tenant"]
    now = _now()
    async with request.app[SERVICES].sessionmaker() as session:
        tenant = await repo.get_tenant_by_name(session, name)
        if tenant is None:
            raise NotFound("No tenant has that name.", reason="tenant_not_found")
        report = await tenant_health(session, tenant, now)
    context = {"h": report, "chart": outcome_chart(report.outcomes), "rules": RULES}
    return _negotiated(request, report.to_json(), "tenant_health.html", context)


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus exposition; tenant gauges and readiness computed now.

    A database that cannot be read leaves the tenant gauges out and says ``syncsvc_ready 0``
    rather than failing the scrape: the process's own counters still come through.
    """
    require_operator(request)
    app = request.app
    reports: list[TenantHealth] = []
    try:
        async with asyncio.timeout(SCRAPE_TIMEOUT_SECONDS):
            async with app[SERVICES].sessionmaker() as session:
                reports = await all_tenant_health(session, _now())
    except (OSError, TimeoutError, SQLAlchemyError) as exc:
        log.warning("metrics: tenant health unreadable", error_class=type(exc).__name__)
    services = app[SERVICES]
    state = await snapshot(services.sessionmaker, services.scheduler, app[SETTINGS].tick_seconds)
    body = app[METRICS].exposition(reports, state)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


def setup_routes(app: web.Application) -> None:
    """Register the probes, the tenant health endpoints and the metrics endpoint."""
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/tenants/health", tenants_health)
    app.router.add_get("/tenants/{tenant}/health", one_tenant_health)
    app.router.add_get("/metrics", metrics)


__all__ = ["setup_routes", "wants_html"]
