"""The ``syncsvc`` command line: one sub-command per operator task.

Each sub-command parses its own arguments here and hands off to the package that does the work, so
this module stays a thin map from words to functions.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

Command = Callable[[argparse.Namespace], int]


def _cmd_sandbox(args: argparse.Namespace) -> int:
    from syncsvc.sandbox.banner import describe
    from syncsvc.sandbox.config import default_config, load_config
    from syncsvc.sandbox.server import running_sandbox

    try:
        config = load_config(args.config) if args.config else default_config(args.redirect_uri)
    except (OSError, ValueError, TypeError) as exc:
        # A bad file is an operator mistake: say which and why, without a traceback.
        print(f"syncsvc sandbox: cannot load {args.config}: {exc}", file=sys.stderr)
        return 2

    async def serve() -> None:
        async with running_sandbox(config, host="127.0.0.1", port=args.port) as sandbox:
            print(describe(sandbox), flush=True)
            await asyncio.Event().wait()

    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(serve())
    except OSError as exc:
        print(f"syncsvc sandbox: cannot listen on 127.0.0.1:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="syncsvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sandbox = commands.add_parser(
        "sandbox",
        help="run the sandbox EHR (Cerner-, Epic- and generic-shaped tenants) on loopback",
    )
    sandbox.add_argument("--port", type=int, default=8765, help="port on 127.0.0.1 (default 8765)")
    sandbox.add_argument("--config", type=Path, help="JSON configuration file (default: built-in)")
    sandbox.add_argument(
        "--redirect-uri",
        action="append",
        help="redirect URI to register for the built-in demo clients (repeatable)",
    )
    sandbox.set_defaults(handler=_cmd_sandbox)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
