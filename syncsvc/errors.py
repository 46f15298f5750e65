"""The exception tree of syncsvc.

Every error the service raises on purpose is a :class:`SyncsvcError` with a short ``reason`` code
(stable, for metrics and the API) and a ``message`` that is safe to show to a person: it never
contains a token, a secret or an upstream body. Sync work acts on two axes:
:class:`ReauthRequired` (the grant is gone; stop and ask the patient) and :class:`Transient` (try
again later, keep every token).

``reason`` is also available as ``code``. Launch failures share :class:`LaunchError` and differ by
reason: ``state_unknown``, ``state_expired``, ``state_replayed``, ``state_browser_mismatch``,
``link_invalid``, ``link_expired``, ``link_used``, ``ehr_error`` (the EHR redirected back with an
``error``; ``error_uri`` carries its link), ``id_token_*`` (identity token rejected).
"""

from __future__ import annotations


class SyncsvcError(Exception):
    """Base of every deliberate syncsvc error."""

    status: int = 500
    default_reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason

    @property
    def code(self) -> str:
        """The stable reason code (an alias of ``reason``)."""
        return self.reason

    def __str__(self) -> str:
        return self.message


class ConfigError(SyncsvcError):
    """Settings or a configuration file are invalid."""

    default_reason = "config_invalid"


class DatabaseUnavailable(SyncsvcError):
    """The configured database does not answer, or does not hold the schema this code needs."""

    status = 503
    default_reason = "database_unavailable"


class VaultError(SyncsvcError):
    """A ciphertext could not be decrypted (wrong key, tampered, or bound to another row)."""

    default_reason = "vault_error"


class DiscoveryError(SyncsvcError):
    """A FHIR base's SMART configuration could not be discovered or is unusable."""

    status = 502
    default_reason = "discovery_failed"


class LaunchError(SyncsvcError):
    """The connect flow cannot continue; the message tells the patient what to do."""

    status = 400
    default_reason = "launch_failed"

    def __init__(
        self, message: str, *, reason: str | None = None, error_uri: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.error_uri = error_uri


class ReauthRequired(SyncsvcError):
    """The grant can no longer be used (invalid_grant, revoked, scopes withdrawn)."""

    status = 409
    default_reason = "reauth_required"

    def __init__(
        self, message: str, *, reason: str | None = None, error_uri: str | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.error_uri = error_uri


class Transient(SyncsvcError):
    """A temporary failure (network, 5xx, 429, malformed answer): retry later, lose nothing."""

    status = 503
    default_reason = "transient"

    def __init__(
        self, message: str, *, reason: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after


class Misbound(SyncsvcError):
    """A token is not valid for the tenant it is bound to (Cerner's tenant-mismatch)."""

    status = 409
    default_reason = "tenant_mismatch"


class ScopeDenied(SyncsvcError):
    """The grant does not cover one resource type (403 insufficient_scope)."""

    status = 403
    default_reason = "insufficient_scope"


class BadRequest(SyncsvcError):
    """The caller sent something malformed."""

    status = 400
    default_reason = "bad_request"


class Unauthorized(SyncsvcError):
    """Missing or wrong credentials."""

    status = 401
    default_reason = "unauthorized"


class Conflict(SyncsvcError):
    """A compare-and-swap write lost to a concurrent writer; re-read and decide again."""

    status = 409
    default_reason = "conflict"


class NotFound(SyncsvcError):
    """No such thing, or not this caller's to see (the two are deliberately indistinguishable)."""

    status = 404
    default_reason = "not_found"


class RateLimited(SyncsvcError):
    """Too many requests of one kind from one session or API key; retry after a while."""

    status = 429
    default_reason = "rate_limited"

    def __init__(self, message: str, *, retry_after: int, reason: str | None = None) -> None:
        super().__init__(message, reason=reason)
        self.retry_after = retry_after
