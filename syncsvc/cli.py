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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncsvc.settings import Settings

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


def _load_settings(command: str) -> Settings | None:
    """The process settings, or None after telling the operator what is wrong."""
    from syncsvc.errors import ConfigError
    from syncsvc.settings import Settings

    try:
        return Settings.from_env()
    except ConfigError as exc:
        print(f"syncsvc {command}: {exc.message}", file=sys.stderr)
        return None


def _cmd_migrate(args: argparse.Namespace) -> int:
    from syncsvc.db.migrate import upgrade_to_head

    settings = _load_settings("migrate")
    if settings is None:
        return 2
    print(f"migrating {settings.database_url_censored}", file=sys.stderr)
    revision = asyncio.run(upgrade_to_head(settings.database_url))
    print(revision or "base")
    return 0


def _cmd_keys_status(args: argparse.Namespace) -> int:
    from syncsvc.db.engine import create_engine, create_sessionmaker
    from syncsvc.db.rekey import count_by_key_id

    settings = _load_settings("keys status")
    if settings is None:
        return 2

    async def count() -> dict[str, int]:
        engine = create_engine(settings.database_url)
        try:
            async with create_sessionmaker(engine)() as session:
                return await count_by_key_id(session)
        finally:
            await engine.dispose()

    counts = asyncio.run(count())
    configured = [key.kid for key in settings.vault_keys]
    source = str(settings.vault_key_file) if settings.vault_key_file else "SYNCSVC_VAULT_KEYS"
    print(f"key source: {source}")
    for index, kid in enumerate(configured):
        role = "primary" if index == 0 else "old"
        print(f"{kid}\t{role}\t{counts.get(kid, 0)} ciphertexts")
    for kid in sorted(set(counts) - set(configured)):
        print(f"{kid}\tMISSING\t{counts[kid]} ciphertexts (cannot be decrypted)")
    return 1 if set(counts) - set(configured) else 0


def _cmd_keys_rotate(args: argparse.Namespace) -> int:
    from syncsvc.db.engine import create_engine, create_sessionmaker
    from syncsvc.db.rekey import reencrypt_all
    from syncsvc.errors import SyncsvcError
    from syncsvc.vault import Vault, add_primary_key, format_key_ring, generate_key

    settings = _load_settings("keys rotate")
    if settings is None:
        return 2
    if not args.reencrypt_only:
        if settings.vault_key_file is None:
            # The environment cannot be changed from here: hand the operator the new ring, and
            # re-encrypt only once every process runs with it (else they could not read new rows).
            ring = (generate_key(), *settings.vault_keys)
            print(f"SYNCSVC_VAULT_KEYS={format_key_ring(ring)}")
            print(
                f"New primary key {ring[0].kid}. Deploy this SYNCSVC_VAULT_KEYS to every process, "
                "then run `syncsvc keys rotate --reencrypt-only`.",
                file=sys.stderr,
            )
            return 0
        new = add_primary_key(settings.vault_key_file)
        print(f"new primary key {new.kid} written to {settings.vault_key_file}", file=sys.stderr)
        settings = settings.replace(vault_keys=(new, *settings.vault_keys))

    def progress(table: str, done: int) -> None:
        print(f"  {table}: {done} rows re-encrypted", file=sys.stderr, flush=True)

    async def rotate(vault: Vault) -> dict[str, int]:
        engine = create_engine(settings.database_url)
        try:
            return await reencrypt_all(
                create_sessionmaker(engine), vault, batch_size=args.batch_size, progress=progress
            )
        finally:
            await engine.dispose()

    try:
        vault = Vault.from_settings(settings)
        totals = asyncio.run(rotate(vault))
    except SyncsvcError as exc:
        print(f"syncsvc keys rotate: {exc.message}", file=sys.stderr)
        return 1
    summary = ", ".join(f"{table} {count}" for table, count in totals.items())
    print(f"re-encrypted under {vault.primary_kid}: {summary}", file=sys.stderr)
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

    migrate = commands.add_parser("migrate", help="upgrade the database to the newest schema")
    migrate.set_defaults(handler=_cmd_migrate)

    keys = commands.add_parser("keys", help="vault keys: status and rotation")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    status = key_commands.add_parser("status", help="key ids, the primary, ciphertexts per key")
    status.set_defaults(handler=_cmd_keys_status)
    rotate = key_commands.add_parser(
        "rotate",
        help="add a new primary key (key file) and re-encrypt everything under it",
        description=(
            "With SYNCSVC_VAULT_KEY_FILE: write a new primary key into the file, then re-encrypt "
            "every stored ciphertext under it (running processes re-read the file when they meet "
            "the new key id). With SYNCSVC_VAULT_KEYS: print the new key ring to deploy, then run "
            "again with --reencrypt-only. Safe to re-run."
        ),
    )
    rotate.add_argument(
        "--reencrypt-only",
        action="store_true",
        help="do not add a key; re-encrypt what is not under the current primary",
    )
    rotate.add_argument(
        "--batch-size", type=int, default=200, help="rows per transaction (default 200)"
    )
    rotate.set_defaults(handler=_cmd_keys_rotate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handler: Command = args.handler
    return handler(args)


if __name__ == "__main__":
    sys.exit(main())
