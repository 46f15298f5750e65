"""``syncsvc keys init|status|rotate|retire``: the vault key ring, re-encryption, retiring."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from syncsvc.commands.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    Commands,
    add_command,
    database,
    fail,
    failing_as,
    load_settings,
)

#: What a vault key looks like, for the operator who writes one by hand.
KEY_FORMAT = (
    "KID:KEY, KID up to 32 letters, digits, '_' or '-', KEY 32 random bytes in URL-safe base64"
)


def _write_secret_file(path: Path, value: str) -> None:
    """Create ``path`` holding ``value``, owner-only from the first byte (never overwrites)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(value + "\n")


def _init(args: argparse.Namespace) -> int:
    import secrets

    from syncsvc.settings import DEFAULT_KEY_FILE, DEFAULT_LINK_KEY_FILE
    from syncsvc.vault import format_key_ring, generate_key, write_key_file

    settings = load_settings("keys init")
    if settings is None:
        return EXIT_USAGE
    if args.print:
        print(f"SYNCSVC_VAULT_KEYS={format_key_ring((generate_key(),))}")
        print(f"(a vault key is {KEY_FORMAT}; keep it secret and safe)", file=sys.stderr)
        return 0
    in_data_dir = args.file is None
    path = args.file or settings.data_dir / DEFAULT_KEY_FILE
    if path.exists():
        return fail(
            "keys init",
            f"{path} already exists: it holds keys the stored tokens need; "
            "`syncsvc keys rotate` adds a new one",
            EXIT_USAGE,
        )
    if settings.vault_keys and in_data_dir:
        return fail("keys init", "a vault key is already configured", EXIT_USAGE)
    if in_data_dir:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        settings.data_dir.chmod(0o700)  # it holds the database and the keys: owner only
    key = generate_key()
    write_key_file(path, (key,))
    print(f"created vault key file {path} (key {key.kid}, owner-only)", file=sys.stderr)
    if in_data_dir:
        link_file = settings.data_dir / DEFAULT_LINK_KEY_FILE
        if settings.link_signing_key is None and not link_file.exists():
            _write_secret_file(link_file, secrets.token_urlsafe(32))
            print(f"created link-signing key file {link_file} (owner-only)", file=sys.stderr)
        print(
            f"both are used from {settings.data_dir} while SYNCSVC_VAULT_KEY_FILE, "
            "SYNCSVC_VAULT_KEYS and SYNCSVC_LINK_SIGNING_KEY are unset; keep a copy of the "
            "vault key file: the stored tokens cannot be read without it",
            file=sys.stderr,
        )
    else:
        print(f"SYNCSVC_VAULT_KEY_FILE={path.resolve()}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from syncsvc.db.rekey import Sample, count_by_key_id, samples_by_key_id
    from syncsvc.vault import KeyProof, Vault, prove_key

    settings = load_settings("keys status")
    if settings is None:
        return EXIT_USAGE

    async def survey() -> tuple[dict[str, int], dict[str, list[Sample]]]:
        async with database(settings) as sessionmaker, sessionmaker() as session:
            return await count_by_key_id(session), await samples_by_key_id(session)

    with failing_as("keys status"):
        vault = Vault(settings.vault_keys)
        counts, samples = asyncio.run(survey())
    configured = [key.kid for key in settings.vault_keys]
    source = str(settings.vault_key_file) if settings.vault_key_file else "SYNCSVC_VAULT_KEYS"
    print(f"key source: {source}")
    healthy = True
    for index, kid in enumerate(configured):
        role = "primary" if index == 0 else "old"
        taken = [(s.ciphertext, s.purpose, s.row) for s in samples.get(kid, [])]
        proof, bad = prove_key(vault, taken)
        if proof is KeyProof.PROVEN:
            verdict = f"proven: {len(taken)} of {len(taken)} sample ciphertexts decrypt"
        elif proof is KeyProof.UNPROVEN:
            verdict = "unproven: no ciphertext under it"
        elif proof is KeyProof.WRONG_BYTES:
            healthy = False
            verdict = (
                f"WRONG KEY BYTES: none of {len(taken)} sample ciphertexts decrypts; the "
                f"configured bytes of {kid} are not the ones they were written with"
            )
        else:
            healthy = False
            verdict = (
                f"{bad} of {len(taken)} sample ciphertexts do not decrypt (the key is "
                "right: those rows were altered or copied from another row)"
            )
        print(f"{kid}\t{role}\t{counts.get(kid, 0)} ciphertexts\t{verdict}")
    missing = sorted(set(counts) - set(configured))
    for kid in missing:
        print(f"{kid}\tMISSING\t{counts[kid]} ciphertexts (cannot be decrypted)")
    return EXIT_FAILED if missing or not healthy else 0


def _retire(args: argparse.Namespace) -> int:
    from syncsvc.db.rekey import count_by_key_id
    from syncsvc.vault import format_key_ring, remove_key

    settings = load_settings("keys retire")
    if settings is None:
        return EXIT_USAGE
    kid = args.kid
    configured = [key.kid for key in settings.vault_keys]
    if kid not in configured:
        return fail("keys retire", f"no key {kid!r} is configured", EXIT_USAGE)
    if configured[0] == kid:
        return fail(
            "keys retire",
            f"{kid} is the primary key; `syncsvc keys rotate` to a new primary first",
            EXIT_USAGE,
        )

    async def count() -> int:
        async with database(settings) as sessionmaker, sessionmaker() as session:
            return (await count_by_key_id(session)).get(kid, 0)

    with failing_as("keys retire"):
        remaining = asyncio.run(count())
    if remaining:
        return fail(
            "keys retire",
            f"{remaining} stored ciphertexts are still under {kid}; nothing was changed. Run "
            "`syncsvc keys rotate --reencrypt-only` first",
        )
    if settings.vault_key_file is None:
        ring = tuple(key for key in settings.vault_keys if key.kid != kid)
        print(f"SYNCSVC_VAULT_KEYS={format_key_ring(ring)}")
        print(
            f"No ciphertext is under {kid}. Deploy this SYNCSVC_VAULT_KEYS (without it) to every "
            "process.",
            file=sys.stderr,
        )
        return 0
    with failing_as("keys retire"):
        remove_key(settings.vault_key_file, kid)
    print(f"retired key {kid}: removed from {settings.vault_key_file}", file=sys.stderr)
    return 0


def _rotate(args: argparse.Namespace) -> int:
    from syncsvc.db.rekey import reencrypt_all
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

    with failing_as("keys rotate"):
        vault = Vault.from_settings(settings)
        totals = asyncio.run(rotate(vault))
    summary = ", ".join(f"{table} {count}" for table, count in totals.items())
    print(f"re-encrypted under {vault.primary_kid}: {summary}", file=sys.stderr)
    return 0


def add_to(commands: Commands) -> None:
    """Register ``keys``."""
    keys = commands.add_parser(
        "keys",
        help="vault keys: init, status, rotation, retiring",
        description=(
            "The vault encrypts tokens, client secrets and private keys at rest (AES-256-GCM) "
            f"under a key ring whose first key is the primary. A key is {KEY_FORMAT}."
        ),
    )
    key_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    init = add_command(
        key_commands,
        "init",
        summary="create the first vault key (and a link-signing key)",
        description=(
            "Without options: create the vault key file and a link-signing key file in the data "
            "folder (SYNCSVC_DATA_DIR, default .syncsvc/), owner-only; syncsvc uses them while "
            "no key is set in the environment. --file PATH: create a vault key file there and "
            "print the SYNCSVC_VAULT_KEY_FILE line to set. --print: write nothing, print a "
            "SYNCSVC_VAULT_KEYS value (for a secret store). Never overwrites a key file."
        ),
        examples=(
            "syncsvc keys init",
            "syncsvc keys init --file /etc/syncsvc/vault-keys.json",
            "syncsvc keys init --print",
        ),
    )
    where = init.add_mutually_exclusive_group()
    where.add_argument("--file", type=Path, metavar="PATH", help="create the key file here")
    where.add_argument(
        "--print", action="store_true", help="print a SYNCSVC_VAULT_KEYS value instead"
    )
    init.set_defaults(handler=_init)
    status = add_command(
        key_commands,
        "status",
        summary="key ids, the primary, ciphertexts per key",
        description=(
            "List the configured keys (primary first) with how many stored ciphertexts each "
            "one encrypts, and any key id the database uses that is not configured (exit 1)."
        ),
        examples=("syncsvc keys status",),
    )
    status.set_defaults(handler=_status)
    rotate = add_command(
        key_commands,
        "rotate",
        summary="add a new primary key (key file) and re-encrypt everything under it",
        description=(
            "With a key file: write a new primary key into the file, then re-encrypt "
            "every stored ciphertext under it (running processes re-read the file when they meet "
            "the new key id). With SYNCSVC_VAULT_KEYS: print the new key ring to deploy, then run "
            "again with --reencrypt-only. Safe to re-run."
        ),
        examples=("syncsvc keys rotate", "syncsvc keys rotate --reencrypt-only"),
    )
    rotate.add_argument(
        "--reencrypt-only",
        action="store_true",
        help="do not add a key; re-encrypt what is not under the current primary",
    )
    rotate.add_argument("--batch-size", type=int, default=200, help="rows per transaction")
    rotate.set_defaults(handler=_rotate)
    retire = add_command(
        key_commands,
        "retire",
        summary="remove an old key once no stored ciphertext needs it",
        description=(
            "Refuses (exit 1, nothing changed) while any stored ciphertext is under KID, and "
            "for the primary key (exit 2). With SYNCSVC_VAULT_KEY_FILE: removes KID from the "
            "file (running processes notice). With SYNCSVC_VAULT_KEYS: prints the ring to deploy."
        ),
        examples=("syncsvc keys rotate --reencrypt-only", "syncsvc keys retire k20260101ab12"),
    )
    retire.add_argument("kid", metavar="KID", help="the key id to retire")
    retire.set_defaults(handler=_retire)
