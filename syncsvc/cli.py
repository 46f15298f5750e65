"""The ``syncsvc`` command line: one sub-command per operator task, each in ``syncsvc.commands``.

:func:`main` is the one place where a failure becomes an exit code and a line on stderr: a
configuration problem exits 2, a database or network that is down exits 1, and a traceback is
shown only with ``--debug`` (or ``SYNCSVC_LOG_LEVEL=DEBUG``).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from syncsvc.commands import (
    bench,
    config,
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
from syncsvc.commands.common import CommandExit, Handler, Parser
from syncsvc.commands.failures import explain

COMMAND_GROUPS = (
    serve,
    sync,
    database,
    config,
    keys,
    tenants,
    connections,
    links,
    demo,
    sandbox,
    bench,
)
#: Exit code of a command stopped with Ctrl-C (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130

DESCRIPTION = """\
syncsvc keeps patients' health records in sync from their EHRs (SMART on FHIR): a patient
connects once, syncsvc refreshes the grant and pulls their FHIR resources in the background,
and host applications read them through its API.

First steps on an empty machine:
  syncsvc keys init       create the vault key and link-signing key in .syncsvc/ (owner-only)
  syncsvc config check    what is set, what is missing and how to make it
  syncsvc migrate         create or upgrade the database schema
  syncsvc serve           pages, API and background sync on http://127.0.0.1:8000
"""

EPILOG = """\
settings (environment variables; a TOML file named by SYNCSVC_CONFIG may hold the same
settings in lower case without the prefix; `syncsvc config check` shows them all):
  SYNCSVC_DATABASE_URL      postgresql://USER@HOST/NAME or sqlite:///PATH
                            (default: SQLite in SYNCSVC_DATA_DIR, .syncsvc/)
  SYNCSVC_PUBLIC_URL        the URL patients and EHRs reach syncsvc at
                            (default: http://HOST:PORT of `serve`)
  SYNCSVC_VAULT_KEY_FILE    key file made by `syncsvc keys init --file PATH`, or
  SYNCSVC_VAULT_KEYS        kid:KEY[,kid:KEY], KEY = 32 bytes in URL-safe base64
  SYNCSVC_LINK_SIGNING_KEY  a long random string (signs connect links and sessions)
  SYNCSVC_API_KEYS          host applications' API keys, comma-separated
  SYNCSVC_ADMIN_TOKEN       bearer token of the operator endpoints
  SYNCSVC_LOG_LEVEL         DEBUG, INFO (default), WARNING, ERROR
  SYNCSVC_LOG_FORMAT        json or console (default: console on a terminal, else json)

exit codes:
  0  done
  1  the work failed (the database or an EHR is unreachable, a sync failed, ...)
  2  wrong usage or configuration (a missing key, a malformed setting, a bad option)

Run `syncsvc COMMAND --help` for a command's options and an example.
"""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = Parser(prog="syncsvc", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument(
        "--debug",
        action="store_true",
        help="show the traceback when a command fails (also with SYNCSVC_LOG_LEVEL=DEBUG)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_to(commands)
    return parser


def _command_name(args: argparse.Namespace) -> str:
    """``tenants add`` for the tenants group's add action, ``serve`` for serve."""
    words = [str(args.command)]
    action = getattr(args, f"{str(args.command).replace('-', '_')}_command", None)
    if action:
        words.append(str(action))
    return " ".join(words)


def _wants_traceback(args: argparse.Namespace) -> bool:
    return bool(args.debug) or os.environ.get("SYNCSVC_LOG_LEVEL", "").upper() == "DEBUG"


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except CommandExit as exc:
        return exc.code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:
        if _wants_traceback(args):
            traceback.print_exc()
        message, code = explain(exc)
        print(f"syncsvc {_command_name(args)}: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
