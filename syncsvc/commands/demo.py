"""``syncsvc demo [--once]``: the sandbox EHR and syncsvc together, one patient connected."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from pathlib import Path

from syncsvc.commands.common import EXIT_FAILED, Commands, add_command, failing_as, print_json


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _demo(args: argparse.Namespace) -> int:
    from syncsvc.commands.demo_run import run_demo
    from syncsvc.logging import configure_logging

    configure_logging(log_format="console", log_level="WARNING")
    port, sandbox_port = (0, 0) if args.once and args.port is None else (args.port or 8000, 8765)
    with failing_as("demo"), contextlib.suppress(KeyboardInterrupt):
        summary = asyncio.run(
            run_demo(
                data_dir=args.data_dir,
                once=args.once,
                port=port,
                sandbox_port=args.sandbox_port or sandbox_port,
                say=_say,
            )
        )
        if args.once:
            print_json(summary.to_json())
            return 0 if summary.to_json()["ok"] else EXIT_FAILED
    return 0


def add_to(commands: Commands) -> None:
    """Register ``demo``."""
    demo = add_command(
        commands,
        "demo",
        summary="run the sandbox EHR and syncsvc, connect and sync a demo patient",
        examples=("syncsvc demo", "syncsvc demo --once --data-dir /tmp/demo"),
        description=(
            "Starts the sandbox EHR and syncsvc on 127.0.0.1 with a SQLite database in the data "
            "folder, connects a demo patient headlessly through the real pages, syncs, and "
            "leaves both running with a link to connect another patient in a browser. "
            "--once exits after the first sync with one JSON summary line."
        ),
    )
    demo.add_argument("--once", action="store_true", help="exit after the first sync (JSON)")
    demo.add_argument(
        "--data-dir", type=Path, default=Path(".syncsvc-demo"), help="database and keys folder"
    )
    demo.add_argument("--port", type=int, help="syncsvc port (default 8000; --once: any free)")
    demo.add_argument("--sandbox-port", type=int, help="sandbox port (default 8765)")
    demo.set_defaults(handler=_demo)
