"""The running syncsvc service as the web tests see it, and the private_key_jwt client's names.

Kept apart from ``conftest.py`` so the shared steps in ``flows.py`` can name these without
importing the fixtures module they are themselves used by.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from syncsvc.settings import Settings
from syncsvc.smart.mixup import tenant_callback_uri
from syncsvc.vault import Vault

PKJWT_CLIENT = "syncsvc-pkjwt"
PKJWT_KEY_ID = "syncsvc-test-key"
#: Tenant names the tests register; the sandbox's clients hold each one's own redirect URI.
TEST_TENANT_NAMES = ("cerner", "epic", "generic", "abbeville-general-hospital")


@dataclass(frozen=True)
class RunningService:
    """syncsvc serving on loopback."""

    app: web.Application
    origin: str
    settings: Settings
    vault: Vault

    @property
    def callback(self) -> str:
        """The shared redirect URI of earlier releases (``{origin}/callback``)."""
        return f"{self.origin}/callback"

    def callback_for(self, tenant_name: str) -> str:
        """A tenant's own redirect URI (``{origin}/callback/{tenant}``)."""
        return tenant_callback_uri(self.origin, tenant_name)
