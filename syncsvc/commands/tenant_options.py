"""The options ``tenants add``, ``set`` and ``import`` share: client authentication, vendor, scope
syntax, the client secret and the public URL new tenants' redirect URIs start with."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from syncsvc.settings import Settings

AUTH_METHODS = ("public", "client_secret_basic", "client_secret_post", "private_key_jwt")
VENDORS = ("cerner", "epic", "generic")
#: How a tenant's launches spell SMART scopes (see ``syncsvc.smart.scopes.preferred_syntax``).
SCOPE_SYNTAX_CHOICES = ("auto", "v1", "v2")


def tenant_name(value: str) -> str:
    """argparse type of ``--name``: a valid tenant name, else a usage error saying why."""
    from syncsvc.directory.tenants import check_tenant_name
    from syncsvc.errors import ConfigError

    try:
        return check_tenant_name(value)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def public_url_of(settings: Settings) -> str | None:
    """The public URL new tenants' redirect URIs start with; None (the path alone, resolved by
    the process that launches) while SYNCSVC_PUBLIC_URL is not set."""
    return settings.public_url if settings.public_url_configured else None


def client_secret_of(args: argparse.Namespace) -> str | None:
    """The client secret from ``--client-secret`` or ``--client-secret-file`` (first line)."""
    if getattr(args, "client_secret_file", None) is not None:
        # A file keeps the secret out of the process list and the shell's history.
        lines = args.client_secret_file.read_text(encoding="utf-8").splitlines()
        return lines[0].strip() if lines and lines[0].strip() else None
    secret: str | None = args.client_secret
    return secret
