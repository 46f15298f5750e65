"""``syncsvc sandbox``: the built-in emulated EHR for development."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path

from syncsvc.commands.common import EXIT_USAGE, Commands, add_command, fail


def _run(args: argparse.Namespace) -> int:
    from syncsvc.sandbox.banner import describe
    from syncsvc.sandbox.config import default_config, load_config
    from syncsvc.sandbox.server import running_sandbox

    try:
        config = load_config(args.config) if args.config else default_config(args.redirect_uri)
    except (OSError, ValueError, TypeError) as exc:
        # A bad file is an operator mistake: say which and why, without a traceback.
        return fail("sandbox", f"cannot load {args.config}: {exc}", EXIT_USAGE)

    async def serve() -> None:
        async with running_sandbox(config, host="127.0.0.1", port=args.port) as sandbox:
            print(describe(sandbox), flush=True)
            await asyncio.Event().wait()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve())
    except OSError as exc:
        from syncsvc.commands.serve import listen_failure

        return listen_failure("sandbox", "127.0.0.1", args.port, exc)
    return 0


def add_to(commands: Commands) -> None:
    """Register ``sandbox``."""
    sandbox = add_command(
        commands,
        "sandbox",
        summary="run the built-in sandbox EHR (Cerner-, Epic- and generic-shaped tenants)",
        description=(
            "Serve the sandbox EHR on 127.0.0.1 until interrupted. It prints its tenants' FHIR "
            "bases and endpoints, its client registrations with their secrets, and its test "
            "patients' logins. For development and tests only: never expose it."
        ),
        examples=(
            "syncsvc sandbox --port 8765",
            "syncsvc sandbox --redirect-uri http://127.0.0.1:8000/callback",
        ),
    )
    sandbox.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1")
    sandbox.add_argument(
        "--config", type=Path, help="JSON sandbox configuration file (default: built-in)"
    )
    sandbox.add_argument(
        "--redirect-uri",
        action="append",
        help="redirect URI to register for the built-in demo clients (repeatable)",
    )
    sandbox.set_defaults(handler=_run)
