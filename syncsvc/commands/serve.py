"""``syncsvc serve``: the web application (patient pages, host-app API, operator endpoints)."""

from __future__ import annotations

import argparse
import asyncio
import socket
from typing import TYPE_CHECKING

from syncsvc.commands.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    Commands,
    add_command,
    fail,
    load_settings,
)

if TYPE_CHECKING:
    from syncsvc.settings import Settings

#: Default of ``--wait-for-db``: check once, and stop at once when the database is not ready.
NO_WAIT = 0.0


def wait_for_database(settings: Settings, seconds: float) -> None:
    """Block until the database is ready; DatabaseUnavailable once ``seconds`` have passed.

    Ready means answering at the newest schema; each change of state is logged once.
    """
    from syncsvc.db.probe import wait_for_database as wait
    from syncsvc.logging import get_logger

    log = get_logger("syncsvc.startup")

    def on_change(problem: str | None) -> None:
        if problem is None:
            log.info("database ready", database=settings.database_url_censored)
        else:
            log.warning("waiting for the database", problem=problem, wait_seconds=seconds)

    asyncio.run(wait(settings.database_url, wait_seconds=seconds, on_change=on_change))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, bound before anything else starts (OSError if not)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=128)


def listen_failure(command: str, host: str, port: int, exc: OSError) -> int:
    """The operator's line for a socket that cannot be bound: which port, and why."""
    from syncsvc.http import describe_listen_error

    return fail(command, describe_listen_error(host, port, exc), EXIT_FAILED)


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from syncsvc.errors import ConfigError
    from syncsvc.logging import get_logger
    from syncsvc.netguard import is_loopback_host
    from syncsvc.services import Services
    from syncsvc.web.app import create_app, keys_on_hangup

    settings = load_settings("serve", configure_logs=True)
    if settings is None:
        return EXIT_USAGE
    log = get_logger("syncsvc")
    try:
        # Bound first: a port in use is said at once, before the database or the tick starts.
        sock = bind(args.host, args.port)
    except OSError as exc:
        return listen_failure("serve", args.host, args.port, exc)
    # The bound port, not the option: --port 0 picks a free one.
    port = sock.getsockname()[1]
    settings = settings.serving_at(args.host, port)
    if not settings.public_url_configured and not is_loopback_host(args.host):
        log.warning(
            "SYNCSVC_PUBLIC_URL is not set: connect links and redirect URIs use a plain-http URL "
            "built from --host and --port; set it to the https URL patients reach",
            public_url=settings.public_url,
        )
    try:
        app = create_app(Services(settings, background=not args.no_sync))
    except ConfigError as exc:
        sock.close()
        return fail("serve", exc.message, EXIT_USAGE)
    app.cleanup_ctx.append(keys_on_hangup)
    wait_for_database(settings, args.wait_for_db)
    log.info(
        "starting",
        host=args.host,
        port=port,
        public_url=settings.public_url,
        database=settings.database_url_censored,
    )
    web.run_app(app, sock=sock, print=None, shutdown_timeout=10)
    return 0


def add_wait_for_db(parser: argparse.ArgumentParser) -> None:
    """The ``--wait-for-db SECONDS`` option ``serve`` and ``worker`` share."""
    parser.add_argument(
        "--wait-for-db",
        type=float,
        default=NO_WAIT,
        metavar="SECONDS",
        help="wait up to SECONDS for the database to answer at the newest schema (e.g. while a "
        "migration job runs), logging each change once; default 0: check once and exit 1 when "
        "it is not ready",
    )


def add_to(commands: Commands) -> None:
    """Register ``serve``."""
    serve = add_command(
        commands,
        "serve",
        summary="run the web application (patient pages, host-app API, operator endpoints)",
        description=(
            "Serve the patient pages, the host-application API (/api/v1), the operator endpoints "
            "(/healthz, /readyz, /metrics, /tenants/health) and, unless --no-sync, the background "
            "sync tick. The database must answer and be at the newest schema (`syncsvc migrate`) "
            "at start; /readyz reports it when it is lost later. When SYNCSVC_PUBLIC_URL is unset, "
            "links and redirect URIs use http://HOST:PORT of this server. SIGTERM or Ctrl-C "
            "stops it after the running tick."
        ),
        examples=(
            "syncsvc serve --port 8000",
            "SYNCSVC_PUBLIC_URL=https://sync.example.org syncsvc serve --host 0.0.0.0 "
            "--wait-for-db 60",
        ),
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    serve.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    serve.add_argument(
        "--no-sync", action="store_true", help="serve only; leave background sync to workers"
    )
    add_wait_for_db(serve)
    serve.set_defaults(handler=_serve)
