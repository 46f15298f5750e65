"""``syncsvc config check``: the effective settings (secrets masked), what is missing, and how to
make it."""

from __future__ import annotations

import argparse
import asyncio
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from syncsvc.commands.common import EXIT_FAILED, EXIT_USAGE, Commands, add_command, fail, print_json

if TYPE_CHECKING:
    from syncsvc.settings import Settings

#: A command that prints a fresh random secret (the command, not a secret).
MAKE_SECRET = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"  # noqa: S105


@dataclass(frozen=True)
class Finding:
    """One setting an operator should look at: whether it blocks start-up, and the fix."""

    setting: str
    required: bool
    problem: str
    fix: str


#: Settings whose environment variable is not simply SYNCSVC_ + the name.
_VARIABLES = {"vault_keys": ("SYNCSVC_VAULT_KEYS", "SYNCSVC_VAULT_KEY_FILE")}


def _source(name: str, settings: Settings) -> str:
    """Where a setting's value came from, as far as the environment tells."""
    from syncsvc.settings import DEFAULT_KEY_FILE, DEFAULT_LINK_KEY_FILE

    variables = _VARIABLES.get(name, (f"SYNCSVC_{name.upper()}",))
    if any(os.environ.get(variable) for variable in variables):
        return "environment"
    if name == "vault_keys" and settings.vault_key_file == settings.data_dir / DEFAULT_KEY_FILE:
        return "data folder"
    if name == "link_signing_key" and (settings.data_dir / DEFAULT_LINK_KEY_FILE).is_file():
        return "data folder"
    if os.environ.get("SYNCSVC_CONFIG"):
        return f"{os.environ['SYNCSVC_CONFIG']} or default"
    return "default"


def effective(settings: Settings) -> dict[str, str]:
    """Each setting's effective value as shown to an operator (no secret value, ever)."""
    from syncsvc.settings import MASK

    if settings.vault_key_file is not None:
        vault = f"key file {settings.vault_key_file} ({len(settings.vault_keys)} keys)"
    elif settings.vault_keys:
        vault = f"SYNCSVC_VAULT_KEYS ({', '.join(k.kid for k in settings.vault_keys)})"
    else:
        vault = "(not set)"
    return {
        "data_dir": str(settings.data_dir),
        "database_url": settings.database_url_censored,
        "public_url": settings.public_url
        + ("" if settings.public_url_configured else "  (default: `serve` uses its host:port)"),
        "vault_keys": vault,
        "link_signing_key": MASK if settings.link_signing_key else "(not set)",
        "api_keys": f"{len(settings.api_keys)} keys" if settings.api_keys else "(not set)",
        "admin_token": MASK if settings.admin_token else "(not set)",
        "webhook_url": settings.webhook_url or "(not set)",
        "log_level": settings.log_level,
        "log_format": settings.log_format,
        "tick_seconds": f"{settings.tick_seconds:g}",
        "sync_interval_seconds": str(settings.sync_interval_seconds),
    }


def findings(settings: Settings) -> list[Finding]:
    """What is missing or doubtful, required things first."""
    found: list[Finding] = []
    if not settings.vault_keys:
        found.append(
            Finding(
                "vault key",
                True,
                "no vault key: tokens cannot be stored",
                "run `syncsvc keys init` (a file in the data folder), or "
                "`syncsvc keys init --file PATH` and set SYNCSVC_VAULT_KEY_FILE=PATH",
            )
        )
    if settings.link_signing_key is None:
        found.append(
            Finding(
                "SYNCSVC_LINK_SIGNING_KEY",
                True,
                "no link-signing key: connect links and patient sessions cannot be signed",
                f"run `syncsvc keys init`, or set it to a long random string: {MAKE_SECRET}",
            )
        )
    if not settings.api_keys:
        found.append(
            Finding(
                "SYNCSVC_API_KEYS",
                False,
                "no API key: host applications cannot call /api/v1",
                f"set one key per host application, comma-separated: {MAKE_SECRET}",
            )
        )
    if settings.admin_token is None:
        found.append(
            Finding(
                "SYNCSVC_ADMIN_TOKEN",
                False,
                "no operator token: /metrics and /tenants/health answer 401",
                f"set it to a long random string: {MAKE_SECRET}",
            )
        )
    if settings.public_url_configured and not settings.public_is_https:
        from urllib.parse import urlsplit

        from syncsvc.netguard import is_loopback_host

        if not is_loopback_host(urlsplit(settings.public_url).hostname):
            found.append(
                Finding(
                    "SYNCSVC_PUBLIC_URL",
                    False,
                    "the public URL is plain http on a non-loopback host: cookies are not Secure "
                    "and EHRs refuse such redirect URIs",
                    "serve syncsvc behind TLS and set the https URL",
                )
            )
    return found


async def _database_state(settings: Settings) -> str:
    from syncsvc.db.engine import create_engine
    from syncsvc.db.probe import schema_problem, schema_state

    engine = create_engine(settings.database_url)
    try:
        state = await schema_state(engine, settings.database_url)
    finally:
        await engine.dispose()
    problem = schema_problem(state, settings.database_url)
    return problem or f"reachable, at the newest schema ({state.head})"


def _check(args: argparse.Namespace) -> int:
    from syncsvc.db.engine import normalise_url
    from syncsvc.errors import ConfigError, DatabaseUnavailable
    from syncsvc.settings import Settings

    try:
        settings = Settings.from_env()
        normalise_url(settings.database_url)
    except ConfigError as exc:
        return fail("config check", exc.message, EXIT_USAGE)
    shown = effective(settings)
    problems = findings(settings)
    database_code = 0
    if args.no_database:
        database = "not checked (--no-database)"
    else:
        try:
            database = asyncio.run(_database_state(settings))
        except ConfigError as exc:
            return fail("config check", exc.message, EXIT_USAGE)
        except DatabaseUnavailable as exc:
            database, database_code = exc.message, EXIT_FAILED
    missing_required = any(f.required for f in problems)
    if args.json:
        print_json(
            {
                "settings": shown,
                "database": database,
                "findings": [f.__dict__ for f in problems],
                "ok": not missing_required and not database_code,
            }
        )
    else:
        width = max(len(name) for name in shown)
        print("effective settings (secrets masked):")
        for name, value in shown.items():
            print(f"  {name:<{width}}  {value}  [{_source(name, settings)}]")
        print(f"database: {database}")
        for finding in problems:
            label = "MISSING" if finding.required else "note"
            print(f"{label}: {finding.setting}: {finding.problem}")
            print(f"    how: {finding.fix}")
        if not problems:
            print("nothing is missing")
    if missing_required:
        return EXIT_USAGE
    return database_code


def add_to(commands: Commands) -> None:
    """Register ``config``."""
    config = commands.add_parser(
        "config",
        help="check the configuration: effective settings, what is missing, how to make it",
        description="Inspect syncsvc's configuration.",
    )
    actions = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    check = add_command(
        actions,
        "check",
        summary="print the effective settings (secrets masked) and what is missing",
        description=(
            "Read the settings as `serve` would (environment over the SYNCSVC_CONFIG file over "
            "defaults), print each one with secrets masked, connect to the database and say "
            "whether it is at the newest schema, then list what is missing with how to make "
            "it. Exit 2 when something required is missing or malformed (vault key, "
            "link-signing key, a bad setting), 1 when the database cannot be reached, else 0."
        ),
        examples=("syncsvc config check", "syncsvc config check --json"),
    )
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument("--no-database", action="store_true", help="do not connect to the database")
    check.set_defaults(handler=_check)
