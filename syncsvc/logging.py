"""Structured logging (structlog) with a redaction processor for tokens, secrets and PHI.

Both structlog events and records from the standard library (aiohttp's access log, asyncio,
SQLAlchemy) go through one chain ending in :func:`redact`, then a JSON or console renderer. The
access log matters most: the OAuth callback URL carries ``code`` and ``state`` in its query.

Redaction works on keys (a key named like a credential or a patient identifier has its value
masked, at any depth) and on string values (JWTs, ``Bearer``/``Basic`` credentials, credential
query parameters and JSON members inside free text are masked).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import IO, Any

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED = "[redacted]"
#: Key fragments that mark a credential anywhere in a key name (``x_refresh_token_enc`` too).
SECRET_KEY_PARTS = (
    "token",
    "secret",
    "password",
    "passwd",
    "authorization",
    "assertion",
    "verifier",
    "cookie",
    "api_key",
    "apikey",
    "private_key",
    "credential",
)
#: Credentials only when spelled exactly so (``code``, but not ``status_code``).
SECRET_KEYS = frozenset({"code", "auth_code", "authorization_code", "key", "signing_key", "dsn"})
#: Patient identifiers (PHI) masked wherever they appear as keys.
PHI_KEYS = frozenset(
    {
        "patient_name",
        "given_name",
        "family_name",
        "birth_date",
        "birthdate",
        "date_of_birth",
        "dob",
        "ssn",
        "mrn",
        "address",
        "phone",
        "telecom",
        "email",
    }
)
_PARAMS = (
    "access_token|refresh_token|id_token|code|code_verifier|client_secret|client_assertion"
    "|assertion|state|password|token|link"
)
_VALUE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # A JWT (JWS compact form): header and payload are base64url JSON, so both start with eyJ.
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), "[redacted-jwt]"),
    # Authorization header values written into text (RFC 6750 b64token alphabet).
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9\-._~+/]+=*"), r"\1 " + REDACTED),
    # Credentials in URL query strings and form bodies: ?code=...&state=...
    (re.compile(rf"(?i)([?&;\s]|^)({_PARAMS})=[^&\s#\"']*"), r"\1\2=" + REDACTED),
    # Credentials as JSON members inside text (an upstream body in an exception message), in
    # JSON's double quotes or a Python repr's single quotes.
    (
        re.compile(rf"(?i)(\"({_PARAMS}|client_secret)\"\s*:\s*)\"[^\"]*\""),
        r"\1" + f'"{REDACTED}"',
    ),
    (
        re.compile(rf"(?i)('({_PARAMS}|client_secret)'\s*:\s*)'[^']*'"),
        r"\1" + f"'{REDACTED}'",
    ),
    # ``access_token: value`` in free text (YAML-ish error bodies).
    (
        re.compile(r"(?i)\b(access_token|refresh_token|id_token|client_secret)(\s*:\s+)[^\s,;]+"),
        r"\1\2" + REDACTED,
    ),
)
#: Keys structlog itself uses; never masked even if a fragment matches.
_STRUCTURAL_KEYS = frozenset({"event", "level", "timestamp", "logger", "exception", "stack"})
#: Suffixes naming metadata about a credential rather than the credential (``token_endpoint``).
_SAFE_SUFFIXES = (
    "_endpoint",
    "_url",
    "_uri",
    "_type",
    "_types",
    "_count",
    "_at",
    "_seconds",
    "_status",
    "_method",
    "_key_id",
)
MAX_DEPTH = 8


def _is_sensitive_key(key: str) -> bool:
    name = key.lower().replace("-", "_")
    if name in _STRUCTURAL_KEYS:
        return False
    if name in SECRET_KEYS or name in PHI_KEYS:
        return True
    if name.endswith(_SAFE_SUFFIXES):
        return False
    return any(part in name for part in SECRET_KEY_PARTS)


def redact_text(text: str) -> str:
    """``text`` with JWTs, Bearer/Basic credentials and credential parameters masked."""
    for pattern, replacement in _VALUE_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_value(value: Any, depth: int = 0) -> Any:
    """A copy of ``value`` with sensitive keys masked and strings scrubbed, at any depth."""
    if depth > MAX_DEPTH:
        return REDACTED
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, Mapping):
        return {
            key: (
                REDACTED
                if isinstance(key, str) and _is_sensitive_key(key) and value[key] is not None
                else redact_value(value[key], depth + 1)
            )
            for key in value
        }
    if isinstance(value, list | tuple | set | frozenset):
        return [redact_value(item, depth + 1) for item in value]
    if isinstance(value, bytes | bytearray):
        return REDACTED
    return value


def redact(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask credentials and patient identifiers in every event."""
    redacted: EventDict = {}
    for key, value in event_dict.items():
        if _is_sensitive_key(key) and value is not None:
            redacted[key] = REDACTED
        else:
            redacted[key] = redact_value(value)
    return redacted


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        structlog.processors.StackInfoRenderer(),
    ]


class _SyncsvcHandler(logging.StreamHandler[IO[str]]):
    """Marks the handler this module installs, so reconfiguring replaces only ours."""


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or unusual stream is not a terminal
        return False


def configure_logging(
    *, log_format: str = "auto", log_level: str = "INFO", stream: IO[str] | None = None
) -> None:
    """Route structlog and standard-library logging through redaction to one renderer.

    ``auto`` renders readable console lines on a terminal and JSON lines anywhere else.
    """
    target = stream if stream is not None else sys.stderr
    if log_format == "auto":
        log_format = "console" if _is_terminal(target) else "json"
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            *_shared_processors()[:1],
            structlog.stdlib.filter_by_level,
            *_shared_processors()[1:],
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            # Tracebacks become text before redaction so exception messages are scrubbed too.
            structlog.processors.format_exc_info,
            redact,
            renderer,
        ],
    )
    handler = _SyncsvcHandler(target)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for existing in [h for h in root.handlers if isinstance(h, _SyncsvcHandler)]:
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(log_level.upper())
    # SQLAlchemy echoes bound parameters (ciphertexts, hashes) at INFO, and aiosqlite logs every
    # statement with its parameters (patient ids, resource bodies) at DEBUG: keep both at WARNING.
    for name in ("sqlalchemy", "aiosqlite"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # APScheduler says "Running job ..." and "executed successfully" at INFO on every tick: the
    # tick logs what it did itself. Its lines come back with DEBUG.
    quiet = logging.DEBUG if log_level.upper() == "DEBUG" else logging.WARNING
    logging.getLogger("apscheduler").setLevel(quiet)
    # Alembic announces its dialect ("Context impl ...") whenever the schema revision is read.
    logging.getLogger("alembic").setLevel(quiet)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A structlog logger; bind ``connection_id``, ``tenant``, ``request_id`` as context."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger
