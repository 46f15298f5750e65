"""Service settings, read once from ``SYNCSVC_*`` environment variables and an optional TOML file.

Precedence: built-in defaults < the config file named by ``SYNCSVC_CONFIG`` < environment
variables. The environment wins because deployments inject per-instance values (database URL,
keys) on top of a shared file. File keys are the setting names in lower case without the prefix
(``database_url``, ``public_url``, ``api_keys`` ...); list-valued settings may be TOML arrays there
and comma-separated strings in the environment.

Secrets are wrapped in :class:`Secret`, which prints as ``**********`` and must be ``reveal()``-ed
to use; database URLs are shown through :func:`censor_dsn`. Invalid values raise
:class:`~syncsvc.errors.ConfigError` naming the setting, never its value.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hmac
import ipaddress
import json
import os
import re
import resource
import secrets
import socket
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Self, cast
from urllib.parse import urlsplit

from syncsvc.errors import ConfigError

PREFIX = "SYNCSVC_"
#: Files in the data folder used when the settings name no vault key and no link-signing key;
#: ``syncsvc keys init`` creates them (owner-only), so a first start needs no secret in the
#: environment.
DEFAULT_KEY_FILE = "vault-keys.json"
DEFAULT_LINK_KEY_FILE = "link-signing-key"
MASK = "**********"
#: Key ids appear inside ciphertext envelopes (``v1.<kid>.<data>``), so no dots.
KID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
VAULT_KEY_BYTES = 32
#: A link-signing key shorter than this is too easy to guess (``keys init`` makes 43).
MIN_LINK_KEY_LENGTH = 32
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
#: More page-decoding processes than this only add memory: the writer is the limit by then.
MAX_DECODE_WORKERS = 64
#: Outbound sockets one worked connection may hold at once: its resource types pulled side by
#: side (``syncsvc.sync.pull.TYPES_AT_ONCE``) and a token refresh.
SOCKETS_PER_CONNECTION = 4
#: File descriptors kept for everything but EHR sockets: database pool, listeners, logs, pipes.
RESERVED_DESCRIPTORS = 256
#: The most connections one process works at once by default. An incremental sync waits on
#: the EHR for nearly all its wall time (four requests of 100-1,000 ms against a few ms of CPU),
#: so a process keeps a core busy only with hundreds in flight; each costs well under 100 KiB
#: of memory while it waits (docs/scaling.md, "Caps fixed"), and the tenant limits, not this,
#: keep any one EHR from being flooded.
MAX_DEFAULT_SYNC_CONCURRENCY = 512
#: On SQLite: one writer at a time for the whole database, so hundreds of connections finishing
#: together queue for it past its busy timeout; this many keep it busy without that.
SQLITE_DEFAULT_SYNC_CONCURRENCY = 64


def default_sync_concurrency(descriptor_limit: int | None = None, *, sqlite: bool = False) -> int:
    """Connections worked at once by default: as many as the process's file descriptors allow
    sockets for (:data:`SOCKETS_PER_CONNECTION` each), up to
    :data:`MAX_DEFAULT_SYNC_CONCURRENCY` (:data:`SQLITE_DEFAULT_SYNC_CONCURRENCY` on SQLite)."""
    if descriptor_limit is None:
        descriptor_limit = _descriptor_limit()
    room = (descriptor_limit - RESERVED_DESCRIPTORS) // SOCKETS_PER_CONNECTION
    cap = SQLITE_DEFAULT_SYNC_CONCURRENCY if sqlite else MAX_DEFAULT_SYNC_CONCURRENCY
    return max(8, min(cap, room))


#: Database connections kept besides one per connection worked at once and one per write lane:
#: claims, lease renewals, chores (webhooks, revocations, purges) and web requests.
DB_POOL_RESERVE = 6
#: The most a process's pool keeps by default. A worked connection holds a database connection
#: only for its short transactions between EHR requests, so this many serve hundreds in flight;
#: more would only queue inside PostgreSQL, whose default ``max_connections`` (100) every
#: process of a deployment shares (many processes: PgBouncer, docs/scaling.md).
MAX_DEFAULT_DB_POOL_SIZE = 32
#: Write lanes on PostgreSQL when ``write_lanes`` is unset (``syncsvc.sync.pipeline.writer``).
DEFAULT_WRITE_LANES = 2


def default_db_pool_size(sync_concurrency: int, write_lanes: int | None = None) -> int:
    """Database connections a process keeps by default: one per connection worked at once and
    per write lane, :data:`DB_POOL_RESERVE` for the rest, at most
    :data:`MAX_DEFAULT_DB_POOL_SIZE`."""
    lanes = DEFAULT_WRITE_LANES if write_lanes is None else max(1, write_lanes)
    return min(MAX_DEFAULT_DB_POOL_SIZE, sync_concurrency + lanes + DB_POOL_RESERVE)


def _descriptor_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


MAX_WRITE_LANES = 16

#: ``auto``: readable console lines on a terminal, JSON lines otherwise (a service manager,
#: a container runtime or a log shipper reads them).
LogFormat = Literal["json", "console", "auto"]
DEFAULT_PUBLIC_URL = "http://127.0.0.1:8000"


class Secret:
    """A secret string that never shows itself in ``repr``, ``str``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        """The secret value itself: call only where it is used."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret('{MASK}')"

    def __str__(self) -> str:
        return MASK

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        # Constant-time, so comparing a presented API key leaks no prefix timing.
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(self._value.encode(), other._value.encode())

    def __hash__(self) -> int:
        return hash(("Secret", self._value))


@dataclass(frozen=True)
class VaultKey:
    """One key of the vault key ring: its id and 32 raw key bytes."""

    kid: str
    key: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not KID_PATTERN.match(self.kid):
            raise ConfigError(f"vault key id {self.kid!r} must match {KID_PATTERN.pattern}")
        if len(self.key) != VAULT_KEY_BYTES:
            raise ConfigError(f"vault key {self.kid!r} must be {VAULT_KEY_BYTES} bytes (AES-256)")

    def encoded(self) -> str:
        """The key as URL-safe base64, the form used in settings and key files."""
        return base64.urlsafe_b64encode(self.key).decode("ascii")


def decode_vault_key(kid: str, encoded: str) -> VaultKey:
    """A key ring entry from its id and base64 (standard or URL-safe, padding optional)."""
    text = encoded.strip()
    padded = text + "=" * (-len(text) % 4)
    try:
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ConfigError(f"vault key {kid!r} is not valid base64") from exc
    return VaultKey(kid=kid, key=raw)


def parse_vault_keys(value: str | list[Any]) -> tuple[VaultKey, ...]:
    """Parse ``kid1:base64,kid2:base64`` (or a list of ``kid:base64``); the first is primary."""
    items = value.split(",") if isinstance(value, str) else value
    keys: list[VaultKey] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError("vault_keys entries must be strings of the form kid:base64key")
        if not item.strip():
            continue
        kid, sep, encoded = item.strip().partition(":")
        if not sep:
            raise ConfigError("vault_keys entries must have the form kid:base64key")
        keys.append(decode_vault_key(kid.strip(), encoded))
    return _unique_kids(keys)


def read_key_file(path: Path) -> tuple[VaultKey, ...]:
    """The key ring of a JSON key file ``{"primary": kid, "keys": {kid: b64}}``, primary first."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read vault key file {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"vault key file {path} is not valid JSON") from exc
    if not isinstance(document, dict) or not isinstance(document.get("keys"), dict):
        raise ConfigError(f'vault key file {path} must hold {{"primary": ..., "keys": {{...}}}}')
    entries = cast("dict[str, Any]", document["keys"])
    primary = document.get("primary")
    if primary not in entries:
        raise ConfigError(f"vault key file {path}: primary key id is missing from keys")
    keys = [decode_vault_key(primary, str(entries[primary]))]
    keys += [decode_vault_key(kid, str(value)) for kid, value in entries.items() if kid != primary]
    return _unique_kids(keys)


def read_link_key_file(path: Path) -> Secret | None:
    """The link-signing key kept in ``path`` (its first line), or None if there is no file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read the link-signing key file {path}: {exc.strerror}") from exc
    value = text.strip().splitlines()[0].strip() if text.strip() else ""
    if len(value) < MIN_LINK_KEY_LENGTH:
        raise ConfigError(
            f"the link-signing key in {path} is shorter than {MIN_LINK_KEY_LENGTH} characters"
        )
    return Secret(value)


def _unique_kids(keys: list[VaultKey]) -> tuple[VaultKey, ...]:
    kids = [key.kid for key in keys]
    if len(set(kids)) != len(kids):
        raise ConfigError("vault key ids must be unique")
    return tuple(keys)


def censor_dsn(url: str) -> str:
    """``url`` with any password replaced by ``***``, safe to log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


@dataclass(frozen=True)
class Settings:
    """Everything configurable about one syncsvc process; build with :meth:`from_env`."""

    data_dir: Path = Path(".syncsvc")
    database_url: str = field(default="", repr=False)
    #: Where patients and EHRs reach this service; unset, ``serve`` uses its own host and port.
    public_url: str = DEFAULT_PUBLIC_URL
    #: Whether ``public_url`` was set (environment or file) rather than left at its default.
    public_url_configured: bool = False
    #: The key ring, primary first; empty means "not configured" (the vault refuses to start).
    vault_keys: tuple[VaultKey, ...] = ()
    #: Where the key ring came from, if a file: ``keys rotate`` writes the new key there.
    vault_key_file: Path | None = None
    #: HMAC key for connect links and browser-binding cookies.
    link_signing_key: Secret | None = None
    #: Host-application API keys accepted by ``/api/v1``.
    api_keys: tuple[Secret, ...] = ()
    #: Bearer token for the operator endpoints.
    admin_token: Secret | None = None
    log_format: LogFormat = "auto"
    log_level: str = "INFO"
    tick_seconds: float = 5.0
    refresh_margin_seconds: int = 120
    #: Never refresh one grant more often than this (Cerner throttles faster refreshes).
    min_refresh_interval_seconds: int = 60
    #: Refresh idle grants at least this often (Cerner revokes offline access unused ~90 days).
    keepalive_days: int = 30
    lease_seconds: int = 120
    #: How often each connection's resources are pulled when nothing failed.
    sync_interval_seconds: int = 6 * 3600
    #: Connections one process works at the same time (0, the default: derived from the file
    #: descriptors and the database, see default_sync_concurrency), and how many one claim takes.
    sync_concurrency: int = 0
    claim_batch_size: int = 100
    #: Database connections the process's pool keeps (0, the default: derived from
    #: ``sync_concurrency`` and ``write_lanes``, see default_db_pool_size).
    db_pool_size: int = 0
    #: Whether ``db_pool_size`` was derived (never set): :meth:`replace` derives it again.
    db_pool_size_derived: bool = False
    #: Worker processes that decode pulled pages (0: in the event loop's thread; unset: one per
    #: core beyond the first, at most 4).
    decode_workers: int | None = None
    #: Writers committing pulled pages on PostgreSQL, each in its own transaction (unset: 2);
    #: a connection's writes always take the same one. SQLite always has one.
    write_lanes: int | None = None
    #: Referenced resources (Practitioner, Organization ...): a stored one is read again once it
    #: is this old (a week: a clinician's or a clinic's details change rarely, and a record
    #: references hundreds of them); at most so many are read per run (the rest the next run);
    #: at most so many distinct references are recorded per connection.
    reference_max_age_seconds: int = 7 * 24 * 3600
    reference_reads_per_run: int = 500
    reference_max_per_connection: int = 20_000
    #: Caps on one EHR page (a tenant may have its own, in its plan overrides under ``"*"``).
    max_page_bytes: int = 16 * 1024 * 1024
    max_page_entries: int = 10_000
    #: Page bytes one process reads and decodes at once, over all its pulls (at least one page).
    page_budget_bytes: int = 64 * 1024 * 1024
    #: Caps on the attachments of clinical documents: one attachment's content, and all the
    #: stored contents of one connection together (deduplicated, uncompressed).
    max_attachment_bytes: int = 16 * 1024 * 1024
    max_connection_attachment_bytes: int = 1024 * 1024 * 1024
    #: ``POST /connect/start`` per patient session: this many at once, refilled per hour.
    connect_start_burst: int = 10
    connect_starts_per_hour: int = 30
    #: Connect links issued per API key: this many at once, refilled per minute.
    link_burst: int = 100
    links_per_minute: int = 600
    #: The picker's type-ahead searches per connect link or session: at once, per minute.
    picker_search_burst: int = 30
    picker_searches_per_minute: int = 120
    launch_ttl_seconds: int = 600
    connect_link_ttl_seconds: int = 86_400
    #: Where webhooks are POSTed (https, or http on loopback); None sends none.
    webhook_url: str | None = None
    #: HMAC-SHA256 key of the ``Syncsvc-Signature`` header; required with ``webhook_url``.
    webhook_secret: Secret | None = None

    def __post_init__(self) -> None:
        if not self.database_url:
            default = f"sqlite+aiosqlite:///{self.data_dir / 'syncsvc.db'}"
            object.__setattr__(self, "database_url", default)
        object.__setattr__(self, "public_url", _validate_public_url(self.public_url))
        if self.webhook_url is not None:
            object.__setattr__(self, "webhook_url", _validate_webhook_url(self.webhook_url))
            if not self.webhook_secret:
                raise ConfigError("webhook_url needs webhook_secret (webhooks are always signed)")
        if self.log_format not in ("json", "console", "auto"):
            raise ConfigError("log_format must be 'json', 'console' or 'auto'")
        level = self.log_level.upper()
        if level not in LOG_LEVELS:
            raise ConfigError(f"log_level must be one of {', '.join(LOG_LEVELS)}")
        object.__setattr__(self, "log_level", level)
        if self.tick_seconds <= 0:
            raise ConfigError("tick_seconds must be positive")
        if self.sync_concurrency == 0:
            sqlite = self.database_url.startswith("sqlite")
            object.__setattr__(self, "sync_concurrency", default_sync_concurrency(sqlite=sqlite))
        if self.db_pool_size == 0:
            pool = default_db_pool_size(self.sync_concurrency, self.write_lanes)
            object.__setattr__(self, "db_pool_size", pool)
            object.__setattr__(self, "db_pool_size_derived", True)
        for name in (
            "refresh_margin_seconds",
            "min_refresh_interval_seconds",
            "lease_seconds",
            "launch_ttl_seconds",
            "connect_link_ttl_seconds",
            "keepalive_days",
            "sync_interval_seconds",
            "sync_concurrency",
            "claim_batch_size",
            "db_pool_size",
            "reference_max_age_seconds",
            "reference_reads_per_run",
            "reference_max_per_connection",
            "max_page_bytes",
            "max_page_entries",
            "page_budget_bytes",
            "max_attachment_bytes",
            "max_connection_attachment_bytes",
            "connect_start_burst",
            "connect_starts_per_hour",
            "link_burst",
            "links_per_minute",
            "picker_search_burst",
            "picker_searches_per_minute",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be a positive integer")
        if self.page_budget_bytes < self.max_page_bytes:
            raise ConfigError("page_budget_bytes must be at least max_page_bytes")
        if self.decode_workers is not None and not 0 <= self.decode_workers <= MAX_DECODE_WORKERS:
            raise ConfigError(f"decode_workers must be between 0 and {MAX_DECODE_WORKERS}")
        if self.write_lanes is not None and not 1 <= self.write_lanes <= MAX_WRITE_LANES:
            raise ConfigError(f"write_lanes must be between 1 and {MAX_WRITE_LANES}")

    @property
    def database_url_censored(self) -> str:
        """The database URL with its password hidden, for logs and status output."""
        return censor_dsn(self.database_url)

    @property
    def public_is_https(self) -> bool:
        """Whether the public URL is https (cookies get ``Secure`` then)."""
        return self.public_url.startswith("https://")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Self:
        """Settings from ``environ`` (default ``os.environ``) over the ``SYNCSVC_CONFIG`` file."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        config_path = env.get(f"{PREFIX}CONFIG")
        if config_path:
            values.update(_read_config_file(Path(config_path)))
        for name in _FIELD_NAMES:
            raw = env.get(PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
        return cls._from_raw(values)

    @classmethod
    def for_tests(cls, data_dir: Path | None = None, **overrides: Any) -> Self:
        """Settings for a test: fresh random keys, console logs, and any overrides."""
        values: dict[str, Any] = {
            "data_dir": data_dir or Path(".syncsvc-test"),
            "vault_keys": (VaultKey("test1", secrets.token_bytes(VAULT_KEY_BYTES)),),
            "link_signing_key": Secret(secrets.token_urlsafe(32)),
            "api_keys": (Secret("test-api-key"),),
            "admin_token": Secret("test-admin-token"),
            "log_format": "console",
            "log_level": "DEBUG",
        }
        values.update(overrides)
        return cls(**values)

    def serving_at(self, host: str, port: int) -> Self:
        """These settings for a server on ``host:port``: an unset public URL becomes its URL."""
        if self.public_url_configured:
            return self
        return self.replace(public_url=f"http://{url_host(host)}:{port}")

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied (validated again).

        A pool size that was derived is derived again, from the copy's concurrency and lanes.
        """
        if "db_pool_size" not in changes and self.db_pool_size_derived:
            changes = {**changes, "db_pool_size": 0}
        # Set again from the copy's own pool size (0: derived).
        return dataclasses.replace(self, **changes, db_pool_size_derived=False)

    @classmethod
    def _from_raw(cls, raw: dict[str, Any]) -> Self:
        """Convert raw strings (environment) or TOML values into typed settings."""
        unknown = set(raw) - set(_FIELD_NAMES) - {"vault_key_file"}
        if unknown:
            raise ConfigError(f"unknown settings: {', '.join(sorted(unknown))}")
        kwargs: dict[str, Any] = {}
        for name, value in raw.items():
            kwargs[name] = _convert(name, value)
        if kwargs.get("vault_keys") and kwargs.get("vault_key_file"):
            raise ConfigError("set either vault_keys or vault_key_file, not both")
        data_dir = kwargs.get("data_dir", Path(".syncsvc"))
        if not kwargs.get("vault_keys") and kwargs.get("vault_key_file") is None:
            default_key_file = data_dir / DEFAULT_KEY_FILE
            if default_key_file.is_file():
                kwargs["vault_key_file"] = default_key_file
        key_file = kwargs.get("vault_key_file")
        if key_file is not None:
            kwargs["vault_keys"] = read_key_file(key_file)
        if "link_signing_key" not in kwargs:
            link_key = read_link_key_file(data_dir / DEFAULT_LINK_KEY_FILE)
            if link_key is not None:
                kwargs["link_signing_key"] = link_key
        kwargs["public_url_configured"] = "public_url" in kwargs
        return cls(**kwargs)


#: Settings read from the environment and the file (the flag is derived, never set).
_FIELD_NAMES = tuple(
    f.name
    for f in dataclasses.fields(Settings)
    if f.name not in ("public_url_configured", "db_pool_size_derived")
)
_INT_FIELDS = {
    "refresh_margin_seconds",
    "min_refresh_interval_seconds",
    "keepalive_days",
    "lease_seconds",
    "launch_ttl_seconds",
    "connect_link_ttl_seconds",
    "sync_interval_seconds",
    "sync_concurrency",
    "claim_batch_size",
    "db_pool_size",
    "reference_max_age_seconds",
    "reference_reads_per_run",
    "reference_max_per_connection",
    "decode_workers",
    "write_lanes",
    "max_page_bytes",
    "max_page_entries",
    "page_budget_bytes",
    "max_attachment_bytes",
    "max_connection_attachment_bytes",
    "connect_start_burst",
    "connect_starts_per_hour",
    "link_burst",
    "links_per_minute",
    "picker_search_burst",
    "picker_searches_per_minute",
}


def _convert(name: str, value: Any) -> Any:
    """One raw setting to its typed form; ConfigError names the setting, never the value."""
    if name == "vault_keys":
        if not isinstance(value, str | list):
            raise ConfigError("vault_keys must be a string or a list")
        return parse_vault_keys(value)
    if name == "api_keys":
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list):
            raise ConfigError("api_keys must be a comma-separated string or a list")
        return tuple(Secret(str(item).strip()) for item in items if str(item).strip())
    if name in ("link_signing_key", "admin_token", "webhook_secret"):
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{name} must be a non-empty string")
        return Secret(value)
    if name in ("data_dir", "vault_key_file"):
        return Path(str(value)).expanduser()
    if name in _INT_FIELDS:
        try:
            return int(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} must be an integer") from exc
    if name == "tick_seconds":
        try:
            return float(value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} must be a number") from exc
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string")
    return value.strip()


def _read_config_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc


def url_host(host: str) -> str:
    """``host`` as it goes into a URL a browser can open.

    A wildcard address (``0.0.0.0``, ``::``) is where the server listens, not where anyone can
    reach it: the machine's name stands in for it. IPv6 addresses get brackets.
    """
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - recognising the wildcard, not binding it
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


def _validate_public_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError("public_url must be an absolute http(s) URL")
    if parts.query or parts.fragment:
        raise ConfigError("public_url must not have a query or fragment")
    return url.rstrip("/")


def _validate_webhook_url(url: str) -> str:
    # A webhook carries connection ids and statuses: https, or plain http to loopback only.
    parts = urlsplit(url)
    try:
        loopback = ipaddress.ip_address(parts.hostname or "").is_loopback
    except ValueError:
        loopback = parts.hostname == "localhost"
    if not parts.netloc or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise ConfigError("webhook_url must be an https URL (http only on a loopback address)")
    if parts.fragment:
        raise ConfigError("webhook_url must not have a fragment")
    return url
