"""The ``syncsvc`` command line: one sub-command per operator task.

This module only assembles the parser; each command lives in ``syncsvc.commands``. Exit codes:
0 done, 1 the work failed, 2 wrong usage or configuration.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from syncsvc.commands import (
    bench,
    connections,
    database,
    demo,
    keys,
    links,
    sandbox,
    serve,
    sync,
    tenants,
)
from syncsvc.commands.common import Handler

COMMAND_GROUPS = (serve, sync, demo, sandbox, database, tenants, connections, links, keys, bench)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="syncsvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_to(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
