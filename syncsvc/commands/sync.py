"""``syncsvc sync --once`` and ``syncsvc worker``: background sync without, or as, a daemon."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import signal
import sys
from typing import TYPE_CHECKING

from syncsvc.commands.common import (
    EXIT_USAGE,
    Commands,
    add_command,
    fail,
    failing_as,
    load_settings,
    print_json,
)

#: What binding the metrics port fails with (anything else is not about the port).
LISTEN_ERRNOS = frozenset({errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL})

if TYPE_CHECKING:
    from syncsvc.services import Services
    from syncsvc.settings import Settings
    from syncsvc.sync.runner import WorkReport


async def _once(settings: Settings, args: argparse.Namespace) -> WorkReport:
    from syncsvc.db import repo
    from syncsvc.errors import NotFound
    from syncsvc.services import Services
    from syncsvc.sync.runner import run_due

    async with Services(settings, decode_in_workers=True, require_schema=True) as services:
        tenant_id = None
        if args.tenant:
            async with services.sessionmaker() as session:
                tenant = await repo.get_tenant_by_name(session, args.tenant)
            if tenant is None:
                raise NotFound(f"no tenant named '{args.tenant}'")
            tenant_id = tenant.id
        context = services.sync_context()
        report = await run_due(context, tenant_id=tenant_id, connection_ids=args.connection)
        if not args.tenant and not args.connection:
            # The outboxes are global: a run limited to one tenant or connection leaves them.
            from syncsvc.lifecycle.revocations import retry_pending
            from syncsvc.lifecycle.webhooks import deliver_due

            await deliver_due(context)
            await retry_pending(context)
        return report


def _sync(args: argparse.Namespace) -> int:

    if not args.once:
        return fail(
            "sync",
            "only --once is supported here; run `syncsvc worker` to keep syncing",
            EXIT_USAGE,
        )
    settings = load_settings("sync", configure_logs=True)
    if settings is None:
        return EXIT_USAGE
    with failing_as("sync"):
        report = asyncio.run(_once(settings, args))
    print_json(report.to_json())
    return 1 if report.failures else 0


async def _work_forever(services: Services, args: argparse.Namespace) -> None:
    from syncsvc.logging import get_logger
    from syncsvc.process import tune_gc
    from syncsvc.web.worker_app import create_worker_app, serving_worker_app

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with services, contextlib.AsyncExitStack() as serving:
        # SIGHUP re-reads the vault key file at once (it is also noticed when it changes).
        loop.add_signal_handler(signal.SIGHUP, services.vault.refresh)
        if args.metrics_port is not None:
            # Listening first: a port in use stops the worker before it claims any work.
            app = create_worker_app(services)
            port = await serving.enter_async_context(
                serving_worker_app(app, args.metrics_host, args.metrics_port)
            )
            get_logger("syncsvc.worker").info(
                "metrics served", url=f"http://{args.metrics_host}:{port}/metrics"
            )
        tune_gc()
        services.start_background()
        await stop.wait()
        await services.stop_background()


def _worker(args: argparse.Namespace) -> int:
    from syncsvc.commands.serve import wait_for_database
    from syncsvc.services import Services

    settings = load_settings("worker", configure_logs=True)
    if settings is None:
        return EXIT_USAGE
    # No vault key: a configuration error before anything starts.
    services = Services(settings, background=True, require_schema=True)
    wait_for_database(settings, args.wait_for_db)
    try:
        with failing_as("worker"), contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_work_forever(services, args))
    except OSError as exc:
        if args.metrics_port is not None and exc.errno in LISTEN_ERRNOS:
            from syncsvc.commands.serve import listen_failure

            return listen_failure("worker", args.metrics_host, args.metrics_port, exc)
        return fail("worker", exc.strerror or str(exc))
    print("worker stopped", file=sys.stderr)
    return 0


def add_to(commands: Commands) -> None:
    """Register ``sync`` and ``worker``."""
    from syncsvc.commands.serve import add_wait_for_db

    sync = add_command(
        commands,
        "sync",
        summary="refresh and pull everything due now, then exit with a JSON summary",
        description=(
            "Claim every connection whose refresh or sync is due, work it as `serve` and "
            "`worker` would, deliver due webhooks and retry pending revocations, then print "
            "one JSON summary. Exit 1 when a connection's work failed. Useful from cron or to "
            "try a configuration."
        ),
        examples=("syncsvc sync --once", "syncsvc sync --once --tenant clinic"),
    )
    sync.add_argument("--once", action="store_true", required=True, help="run once and exit")
    sync.add_argument("--tenant", help="only this tenant's connections (tenant name)")
    sync.add_argument(
        "--connection", action="append", metavar="ID", help="only this connection (repeatable)"
    )
    sync.set_defaults(handler=_sync)

    worker = add_command(
        commands,
        "worker",
        summary="run background sync without the web application (SIGTERM stops it)",
        description=(
            "Run the sync tick (refresh, pull, webhooks, revocations) until SIGTERM or Ctrl-C. "
            "Any number of workers and `serve` processes can share one PostgreSQL database: "
            "leases decide who works what. The database must answer and be at the newest "
            "schema at start. SIGHUP re-reads the vault key file."
        ),
        examples=("syncsvc worker", "syncsvc worker --wait-for-db 120"),
    )
    add_wait_for_db(worker)
    worker.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /metrics (operator token), /healthz and /readyz on this port (default: none)",
    )
    worker.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        metavar="HOST",
        help="interface of the metrics port (default: %(default)s, loopback only)",
    )
    worker.set_defaults(handler=_worker)
