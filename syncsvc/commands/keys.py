"""``syncsvc keys status|rotate``: the vault key ring and re-encryption under a new key."""

from __future__ import annotations

import argparse
import asyncio
import sys

from syncsvc.commands.common import EXIT_FAILED, EXIT_USAGE, database, fail, load_settings


def _status(args: argparse.Namespace) -> int:
    from syncsvc.db.rekey import count_by_key_id

    settings = load_settings("keys status")
    if settings is None:
        return EXIT_USAGE

    async def count() -> dict[str, int]:
        async with database(settings) as sessionmaker, sessionmaker() as session:
            return await count_by_key_id(session)

    counts = asyncio.run(count())
    configured = [key.kid for key in settings.vault_keys]
    source = str(settings.vault_key_file) if settings.vault_key_file else "SYNCSVC_VAULT_KEYS"
    print(f"key source: {source}")
    for index, kid in enumerate(configured):
        role = "primary" if index == 0 else "old"
        print(f"{kid}\t{role}\t{counts.get(kid, 0)} ciphertexts")
    for kid in sorted(set(counts) - set(configured)):
        print(f"{kid}\tMISSING\t{counts[kid]} ciphertexts (cannot be decrypted)")
    return EXIT_FAILED if set(counts) - set(configured) else 0


def _rotate(args: argparse.Namespace) -> int:
    from syncsvc.db.rekey import reencrypt_all
    from syncsvc.errors import SyncsvcError
    from syncsvc.vault import Vault, add_primary_key, format_key_ring, generate_key

    settings = load_settings("keys rotate")
    if settings is None:
        return EXIT_USAGE
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
        async with database(settings) as sessionmaker:
            return await reencrypt_all(
                sessionmaker, vault, batch_size=args.batch_size, progress=progress
            )

    try:
        vault = Vault.from_settings(settings)
        totals = asyncio.run(rotate(vault))
    except SyncsvcError as exc:
        return fail("keys rotate", exc.message)
    summary = ", ".join(f"{table} {count}" for table, count in totals.items())
    print(f"re-encrypted under {vault.primary_kid}: {summary}", file=sys.stderr)
    return 0


def add_to(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``keys``."""
    keys = commands.add_parser("keys", help="vault keys: status and rotation")
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    status = key_commands.add_parser("status", help="key ids, the primary, ciphertexts per key")
    status.set_defaults(handler=_status)
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
    rotate.set_defaults(handler=_rotate)
