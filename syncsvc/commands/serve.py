"""``syncsvc serve``: the web application (patient pages, host-app API, operator endpoints)."""

from __future__ import annotations

import argparse

from syncsvc.commands.common import EXIT_USAGE, fail, load_settings


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from syncsvc.app import create_app
    from syncsvc.errors import ConfigError
    from syncsvc.logging import get_logger

    settings = load_settings("serve", configure_logs=True)
    if settings is None:
        return EXIT_USAGE
    try:
        app = create_app(settings, background=not args.no_sync)
    except ConfigError as exc:
        return fail("serve", exc.message, EXIT_USAGE)
    get_logger("syncsvc").info(
        "starting",
        host=args.host,
        port=args.port,
        public_url=settings.public_url,
        database=settings.database_url_censored,
    )
    try:
        web.run_app(app, host=args.host, port=args.port, print=None, shutdown_timeout=10)
    except OSError as exc:
        return fail("serve", f"cannot listen on {args.host}:{args.port}: {exc.strerror}")
    return 0


def add_to(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``serve``."""
    serve = commands.add_parser("serve", help="run the web application")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument(
        "--no-sync", action="store_true", help="serve only; leave background sync to workers"
    )
    serve.set_defaults(handler=_serve)
