"""``syncsvc connections list|show|sync|disconnect``: the patients' connections, for operators.

Nothing printed here is a secret: tokens appear only as whether they are stored and when they
expire. Exit codes follow the other commands: 0 done, 1 the work failed (an unknown id, a
connection that cannot sync), 2 wrong usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from syncsvc.commands.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    Commands,
    add_command,
    database,
    fail,
    failing_as,
    load_settings,
    print_json,
)
from syncsvc.vocabulary import CONNECTION_STATUSES, SUCCESSFUL_RUN_OUTCOMES

if TYPE_CHECKING:
    import datetime as dt

    from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

    from syncsvc.db.models.connections import Connection
    from syncsvc.lifecycle.disconnect import DisconnectResult
    from syncsvc.settings import Settings
    from syncsvc.sync.run_records import TypeResult
    from syncsvc.sync.runner import WorkReport

STATUSES = CONNECTION_STATUSES
#: Sync outcomes after which ``sync --now`` reports success.
GOOD_OUTCOMES = SUCCESSFUL_RUN_OUTCOMES


class CommandFailed(Exception):
    """The command cannot do what was asked; the message says why."""


async def _summary(
    session: AsyncSession, connection: Connection, tenant_name: str
) -> dict[str, Any]:
    from syncsvc.db.stats_repo import count_resources

    counts = await count_resources(session, connection.id)
    return {
        "id": connection.id,
        "tenant": tenant_name,
        "user": connection.user_id,
        "patient": connection.patient_id,
        "status": connection.status,
        "reason": connection.status_reason,
        "granted_scopes": list(connection.granted_scopes),
        "last_sync_at": connection.last_sync_at,
        "last_success_at": connection.last_success_at,
        "resource_counts": counts,
        "resources": sum(counts.values()),
    }


async def _tenant_names(session: AsyncSession) -> dict[str, str]:
    from syncsvc.db import repo

    return {tenant.id: tenant.name for tenant in await repo.list_tenants(session)}


async def _list(settings: Settings, args: argparse.Namespace) -> list[dict[str, Any]]:
    from syncsvc.db import repo

    async with database(settings) as sessionmaker, sessionmaker() as session:
        names = await _tenant_names(session)
        tenant_id = None
        if args.tenant is not None:
            tenant_id = next((i for i, name in names.items() if name == args.tenant), None)
            if tenant_id is None:
                raise CommandFailed(f"no tenant named '{args.tenant}'")
        connections = await repo.list_connections(
            session, user_id=args.user, tenant_id=tenant_id, status=args.status
        )
        return [await _summary(session, c, names.get(c.tenant_id, "?")) for c in connections]


def _when(value: Any) -> str:
    return "never" if value is None else f"{value:%Y-%m-%d %H:%M}Z"


def _list_cmd(args: argparse.Namespace) -> int:
    settings = load_settings("connections list")
    if settings is None:
        return EXIT_USAGE
    with failing_as("connections list", CommandFailed):
        rows = asyncio.run(_list(settings, args))
    if args.json:
        print_json(rows)
        return 0
    if not rows:
        print("no connections match", file=sys.stderr)
    for row in rows:
        status = row["status"] + (f" ({row['reason']})" if row["reason"] else "")
        print(
            f"{row['id']}\t{row['tenant']}\t{row['user']}\t{status}\t"
            f"last sync {_when(row['last_success_at'])}\t{row['resources']} resources"
        )
    return 0


async def _show(settings: Settings, connection_id: str) -> dict[str, Any]:
    from sqlalchemy import select

    from syncsvc.db import attachment_repo, disconnect_repo, repo
    from syncsvc.db.models.records import SyncState
    from syncsvc.smart.scopes import explain_trimmed, grant_report
    from syncsvc.sync.attachment_words import attachment_view
    from syncsvc.sync.explain import explain
    from syncsvc.sync.grant_states import load_grant_facts
    from syncsvc.sync.type_words import type_sentence

    async with database(settings) as sessionmaker, sessionmaker() as session:
        connection = await repo.get_connection(session, connection_id)
        if connection is None:
            raise CommandFailed(f"no connection with id '{connection_id}'")
        tenant = await repo.get_tenant(session, connection.tenant_id)
        detail = await _summary(session, connection, tenant.name if tenant else "?")
        credentials = await repo.get_credentials(session, connection_id)
        has_refresh = credentials is not None and credentials.refresh_token_enc is not None
        report = grant_report(
            connection.requested_scopes, connection.granted_scopes, has_refresh_token=has_refresh
        )
        states = await session.scalars(
            select(SyncState)
            .where(SyncState.connection_id == connection_id)
            .order_by(SyncState.resource_type)
        )
        pending = await disconnect_repo.pending_revocations_of(session, connection_id)
        attachments = (await attachment_repo.summaries(session, [connection_id])).get(connection_id)
        facts = await load_grant_facts(session, connection, tenant)
        explanation = explain(facts)
        detail |= {
            "explanation": explanation.to_json(),
            "types": [
                {
                    "type": line.type,
                    "state": line.state,
                    "granted": line.granted,
                    "resources": line.resources,
                    "last_success_at": line.last_success_at,
                    "sentence": line.sentence,
                    "parts": None if line.parts is None else list(line.parts),
                    "shared": line.shared,
                    "unsearchable": list(line.unsearchable),
                }
                for line in explanation.types
            ],
            "references": None
            if facts.references is None
            else facts.references.to_json() | {"sentence": explanation.references},
            "status_message": connection.status_message,
            "error_uri": connection.error_uri,
            "requested_scopes": list(connection.requested_scopes),
            "trimmed": explain_trimmed(report),
            "ignored_scopes": list(report.malformed),
            "offline": report.offline,
            "connected_at": connection.connected_at,
            "last_refresh_at": connection.last_refresh_at,
            "next_refresh_at": connection.next_refresh_at,
            "next_sync_at": connection.next_sync_at,
            "backoff_until": connection.backoff_until,
            "failure_count": connection.failure_count,
            "tokens": None
            if credentials is None
            else {
                "refresh_token": has_refresh,
                "access_expires_at": credentials.access_expires_at,
                "refresh_expires_at": credentials.refresh_expires_at,
                "key_id": credentials.key_id,
            },
            "sync_states": {
                row.resource_type: {
                    "status": row.status,
                    "last_success_at": row.last_success_at,
                    "error_class": row.error_class,
                    "failure_count": row.failure_count,
                    "failing_since": row.failing_since,
                    "next_attempt_at": row.next_attempt_at,
                    "explanation": type_sentence(row),
                }
                for row in states
            },
            "attachments": attachment_view(attachments),
            "pending_revocations": [
                {
                    "token_type_hint": row.token_type_hint,
                    "attempts": row.attempts,
                    "next_attempt_at": row.next_attempt_at,
                    "last_error": row.last_error,
                }
                for row in pending
            ],
        }
    return detail


def _print_detail(detail: dict[str, Any]) -> None:
    print(f"{detail['id']}: {detail['tenant']}, user {detail['user']}, patient {detail['patient']}")
    status = detail["status"] + (f" ({detail['reason']})" if detail["reason"] else "")
    print(f"  status          {status}")
    explanation = detail["explanation"]
    print(f"  in words        {explanation['title']}. {explanation['summary']}")
    for sentence in explanation["sentences"]:
        print(f"                  {sentence}")
    if detail["error_uri"]:
        print(f"  EHR's link      {detail['error_uri']}")
    print(f"  connected       {_when(detail['connected_at'])}")
    print(f"  last sync       {_when(detail['last_success_at'])}")
    print(f"  next refresh    {_when(detail['next_refresh_at'])}")
    print(f"  next sync       {_when(detail['next_sync_at'])}")
    tokens = detail["tokens"]
    if tokens is None:
        print("  tokens          none stored")
    else:
        kind = "refresh and access" if tokens["refresh_token"] else "access only"
        print(f"  tokens          {kind}, access expires {_when(tokens['access_expires_at'])}")
    print(f"  granted         {' '.join(detail['granted_scopes']) or '(nothing)'}")
    if detail.get("ignored_scopes"):
        print(f"  ignored         {' '.join(detail['ignored_scopes'])} (malformed: grant nothing)")
    for line in detail["types"]:
        print(f"  {line['type']:<15} {line['state'] or '-':<11} {line['sentence']}")
    if detail["references"] and detail["references"]["sentence"]:
        print(f"  references      {detail['references']['sentence']}")
    for resource_type, state in detail["sync_states"].items():
        if state["status"] in ("transient_error", "failing"):
            print(
                f"  {resource_type:<15} {state['status']} ({state['error_class']}) after "
                f"{state['failure_count']} attempt(s), next {_when(state['next_attempt_at'])}"
            )
            print(f"  {'':<15} {state['explanation']}")
    print(f"  attachments     {detail['attachments']['sentence']}")
    for pending in detail["pending_revocations"]:
        print(
            f"  revocation      pending after {pending['attempts']} attempt(s), next "
            f"{_when(pending['next_attempt_at'])}: {pending['last_error'] or 'not tried yet'}"
        )


def _show_cmd(args: argparse.Namespace) -> int:
    settings = load_settings("connections show")
    if settings is None:
        return EXIT_USAGE
    with failing_as("connections show", CommandFailed):
        detail = asyncio.run(_show(settings, args.id))
    if args.json:
        print_json(detail)
    else:
        _print_detail(detail)
    return 0


def _show_type(connection_id: str, result: TypeResult) -> None:
    counts = result.counts.as_dict()
    changes = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "nothing new"
    problem = f" ({result.error_class})" if result.error_class else ""
    print(
        f"  {result.resource_type}: {result.status}{problem}, {changes}",
        file=sys.stderr,
        flush=True,
    )


async def _mark_due(
    sessionmaker: async_sessionmaker[AsyncSession], connection_id: str
) -> dt.datetime | None:
    """Make the connection due now (CommandFailed unless it is active); its backoff, if any."""
    from syncsvc.db import repo
    from syncsvc.sync.context import utcnow

    async with sessionmaker.begin() as session:
        connection = await repo.get_connection(session, connection_id)
        if connection is None:
            raise CommandFailed(f"no connection with id '{connection_id}'")
        if connection.status != "active":
            reason = f" ({connection.status_reason})" if connection.status_reason else ""
            raise CommandFailed(
                f"connection {connection_id} is {connection.status}{reason}; it cannot sync "
                "until the patient reconnects"
            )
        connection.next_sync_at = utcnow()
        return connection.backoff_until


async def _sync(
    settings: Settings, connection_id: str, *, now: bool, full: bool = False
) -> WorkReport | None:
    from syncsvc.services import Services
    from syncsvc.sync.context import utcnow
    from syncsvc.sync.runner import PullOptions, run_due

    if not now:
        async with database(settings) as sessionmaker:
            await _mark_due(sessionmaker, connection_id)
        return None
    async with Services(settings, require_schema=True) as services:
        backoff = await _mark_due(services.sessionmaker, connection_id)
        if backoff is not None and backoff > utcnow():
            raise CommandFailed(
                f"connection {connection_id} is backing off until {_when(backoff)} after EHR "
                "errors; it will sync then"
            )
        print(f"syncing connection {connection_id} ...", file=sys.stderr, flush=True)
        report = await run_due(
            services.sync_context(),
            connection_ids=[connection_id],
            max_batches=1,
            pull=PullOptions(full=full, on_type=_show_type),
        )
        print("sync finished", file=sys.stderr, flush=True)
        return report


def _sync_cmd(args: argparse.Namespace) -> int:
    from syncsvc.errors import SyncsvcError

    settings = load_settings("connections sync", configure_logs=True)
    if settings is None:
        return EXIT_USAGE
    with failing_as("connections sync", CommandFailed, SyncsvcError):
        if args.full and not args.now:
            return fail("connections sync", "--full needs --now", EXIT_USAGE)
        report = asyncio.run(_sync(settings, args.id, now=args.now, full=args.full))
    if report is None:
        print(f"connection {args.id} is due now; a running worker or `serve` syncs it next tick")
        return 0
    print_json(report.to_json())
    if not report.claimed:
        return fail("connections sync", "the connection was not claimed: another worker holds it")
    ok = not report.failures and set(report.sync) <= GOOD_OUTCOMES
    return 0 if ok else EXIT_FAILED


async def _disconnect(settings: Settings, connection_id: str, *, erase: bool) -> DisconnectResult:
    from syncsvc.errors import NotFound
    from syncsvc.lifecycle.disconnect import disconnect_connection
    from syncsvc.services import Services

    async with Services(settings, require_schema=True) as services:
        ctx = services.sync_context()
        try:
            return await disconnect_connection(ctx, connection_id, by="operator", erase=erase)
        except NotFound as exc:
            raise CommandFailed(f"no connection with id '{connection_id}'") from exc


_REVOCATION_WORDS = {
    "revoked": "revoked at the EHR",
    "pending": "revocation pending (the EHR did not confirm; retried in the background)",
    "not_offered": "the EHR offers no revocation",
    "refused": "not revoked: the EHR's revocation endpoint is refused (not public https)",
    "nothing_to_revoke": "no token left to revoke",
}


def _disconnect_cmd(args: argparse.Namespace) -> int:
    from syncsvc.errors import SyncsvcError

    settings = load_settings("connections disconnect", configure_logs=True)
    if settings is None:
        return EXIT_USAGE
    with failing_as("connections disconnect", CommandFailed, SyncsvcError):
        result = asyncio.run(_disconnect(settings, args.id, erase=not args.keep_data))
    if args.json:
        print_json(result.to_json())
        return 0
    parts = [
        "tokens deleted" if result.tokens_deleted else "no tokens were stored",
        _REVOCATION_WORDS[result.revocation],
        f"data erased ({result.resources_erased} resources)"
        if result.data_erased
        else f"data kept ({result.resources_kept} resources)",
    ]
    already = " (it was already disconnected)" if result.already_disconnected else ""
    print(
        f"disconnected {result.connection_id} at {result.tenant_name}{already}: {'; '.join(parts)}"
    )
    return 0


def add_to(commands: Commands) -> None:
    """Register ``connections``."""
    connections = commands.add_parser(
        "connections",
        help="patients' connections: list, show, sync, disconnect",
        description="A connection is one patient's grant at one tenant, with its synced data.",
    )
    actions = connections.add_subparsers(
        dest="connections_command", required=True, metavar="ACTION"
    )

    listing = add_command(
        actions,
        "list",
        summary="connections with status, last sync and resource counts",
        description="List connections, oldest first, optionally filtered.",
        examples=(
            "syncsvc connections list --tenant clinic --status needs_reauth",
            "syncsvc connections list --user USER --json",
        ),
    )
    listing.add_argument("--user", help="only this host-application user's connections")
    listing.add_argument("--tenant", help="only this tenant's connections (tenant name)")
    listing.add_argument("--status", choices=STATUSES, help="only connections in this status")
    listing.add_argument("--json", action="store_true", help="print the result as JSON")
    listing.set_defaults(handler=_list_cmd)

    show = add_command(
        actions,
        "show",
        summary="one connection in detail (never its tokens)",
        description=(
            "Show a connection's status and its reason, granted and trimmed scopes, token "
            "expiry (never the tokens), schedule, per-type sync state, resource counts and "
            "pending revocations."
        ),
        examples=("syncsvc connections show CONNECTION_ID",),
    )
    show.add_argument("id", help="the connection id")
    show.add_argument("--json", action="store_true", help="print the result as JSON")
    show.set_defaults(handler=_show_cmd)

    sync = add_command(
        actions,
        "sync",
        summary="make a connection due for sync now",
        examples=(
            "syncsvc connections sync CONNECTION_ID",
            "syncsvc connections sync CONNECTION_ID --now --full",
        ),
        description=(
            "Set the connection's next sync to now, so the running worker or `serve` syncs it at "
            "its next tick. With --now, sync it here and print the JSON report."
        ),
    )
    sync.add_argument("id", help="the connection id")
    sync.add_argument("--now", action="store_true", help="sync it in this process, now")
    sync.add_argument(
        "--full",
        action="store_true",
        help="with --now: pull every type in full (and flag what vanished upstream), "
        "showing each type as it finishes",
    )
    sync.set_defaults(handler=_sync_cmd)

    disconnect = add_command(
        actions,
        "disconnect",
        summary="disconnect: delete tokens, revoke at the EHR, erase the synced data",
        examples=("syncsvc connections disconnect CONNECTION_ID --keep-data",),
        description=(
            "Mark the connection revoked, delete its tokens at once, revoke the grant at the EHR "
            "(retried in the background if the EHR is down) and erase its synced data unless "
            "--keep-data. Running it again is harmless."
        ),
    )
    disconnect.add_argument("id", help="the connection id")
    disconnect.add_argument(
        "--keep-data", action="store_true", help="keep the synced resources (default: erase)"
    )
    disconnect.add_argument("--json", action="store_true", help="print the result as JSON")
    disconnect.set_defaults(handler=_disconnect_cmd)
