"""Run-time state of the sandbox EHR, shared by its authorization server, FHIR server and admin API.

The sandbox is a test double, so state lives in memory of its one process. Time comes from
:meth:`SandboxState.now`, which the admin API can move forward so tests can reach idle limits and
expiries without sleeping.
"""

from __future__ import annotations

import random
import secrets
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from .config import FaultSpec, SandboxConfig, TenantConfig
from .profiles import TenantUrls, tenant_urls
from .tokens import TokenSigner


@dataclass
class AuthCode:
    """A pending authorization code (single use, short-lived)."""

    code: str
    tenant_id: str
    client_id: str
    redirect_uri: str
    patient_id: str
    scopes: list[str]
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    expires_at: float
    used: bool = False


@dataclass
class Grant:
    """One patient's authorization of one client at one tenant (what refresh tokens stand for)."""

    grant_id: str
    tenant_id: str
    client_id: str
    patient_id: str
    scopes: list[str]
    created_at: float
    last_used_at: float
    refresh_token: str | None = None
    #: What the patient approved at the launch (the grant never widens past it).
    approved: list[str] = field(default_factory=list)
    #: Refresh tokens this grant has rotated away from; presenting one is a replay.
    retired_refresh_tokens: set[str] = field(default_factory=set)
    #: Absolute expiry of the refresh token (``None``: none).
    refresh_expires_at: float | None = None
    last_refresh_at: float | None = None
    refresh_count: int = 0
    revoked: bool = False
    revoked_reason: str | None = None


@dataclass
class RequestLogEntry:
    """One request as the sandbox saw it; tests use this to prove where a token was sent."""

    at: float
    method: str
    url: str
    #: The tenant whose endpoint was addressed (``None`` for admin and foreign paths).
    tenant_id: str | None
    #: Tenant and host named by the presented bearer token, if a readable one was presented.
    token_tenant: str | None
    token_host: str | None
    status: int
    #: The presented bearer token's id (``jti``), so a test can trace one token's travels.
    token_id: str | None = None
    #: Requests the sandbox was serving when this one arrived, this one included: the most
    #: over a stretch of the log is how many a client had in flight at once.
    in_flight: int = 1


@dataclass
class FaultCounter:
    """How often a count-limited fault has fired."""

    fired: int = 0


class SandboxState:
    """Everything that changes while the sandbox runs."""

    def __init__(self, config: SandboxConfig, origin: str = "http://127.0.0.1:0") -> None:
        self.config = config
        self.origin = origin
        self.signer = TokenSigner(private_key_pem=config.signing_key_pem)
        self.codes: dict[str, AuthCode] = {}
        self.grants: dict[str, Grant] = {}
        #: Current refresh token → grant id.
        self.refresh_index: dict[str, str] = {}
        #: Retired (rotated away) refresh token → grant id, for reuse detection.
        self.retired_index: dict[str, str] = {}
        #: Access-token ids revoked individually (RFC 7009 on an access token).
        self.revoked_access_tokens: set[str] = set()
        self.request_log: deque[RequestLogEntry] = deque(maxlen=config.request_log_size)
        #: Requests being served now (see ``RequestLogEntry.in_flight``).
        self.in_flight = 0
        self.fault_counters: dict[int, FaultCounter] = {}
        self.clock_offset: float = 0.0
        self.rng = random.Random(config.seed)  # noqa: S311 - fault sampling, not security
        #: Pages of search results by page context id (see the FHIR server).
        self.page_contexts: dict[str, Any] = {}
        #: Opaque access tokens (tenants with ``opaque_tokens``) → their claims. Nothing outside
        #: the sandbox can read them: like a reference token, only its issuer knows what it means.
        self.opaque_access_tokens: dict[str, dict[str, Any]] = {}

    def read_access_token(self, token: str) -> dict[str, Any] | None:
        """The claims of an access token this sandbox issued (opaque or JWT), else ``None``."""
        claims = self.opaque_access_tokens.get(token)
        if claims is not None:
            return dict(claims)
        return self.signer.verify(token)

    def now(self) -> float:
        """Current sandbox time (wall clock plus the admin-set offset), in epoch seconds."""
        return time.time() + self.clock_offset

    def tenant(self, tenant_id: str) -> TenantConfig | None:
        """The tenant with this id, or ``None``."""
        return self.config.tenant(tenant_id)

    def urls(self, tenant: TenantConfig) -> TenantUrls:
        """Absolute URLs of ``tenant`` at this sandbox's origin."""
        return tenant_urls(self.origin, tenant)

    def should_fire(self, fault: FaultSpec) -> bool:
        """Decide whether ``fault`` applies to this request, counting count-limited ones."""
        if fault.count is not None:
            counter = self.fault_counters.setdefault(id(fault), FaultCounter())
            if counter.fired >= fault.count:
                return False
            counter.fired += 1
            return True
        if fault.rate is not None:
            return self.rng.random() < fault.rate
        return True

    @staticmethod
    def new_secret(nbytes: int = 32) -> str:
        """An unguessable token string."""
        return secrets.token_urlsafe(nbytes)
