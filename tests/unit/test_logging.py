"""Logging: the redaction processor, and the configured pipeline for structlog and stdlib."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from syncsvc.logging import REDACTED, configure_logging, get_logger, redact, redact_text

JWT = (
    "eyJhbGciOiJSUzM4NCIsImtpZCI6IjEifQ."
    "eyJzdWIiOiJwYXRpZW50LTEiLCJ0ZW5hbnQiOiJ4In0."
    "c2lnbmF0dXJlLWJ5dGVzLWhlcmU"
)
OPAQUE = "ZmFrZS1yZWZyZXNoLXRva2VuLTEyMzQ1Njc4OQ"


def test_sensitive_keys_are_masked_at_any_depth() -> None:
    event = redact(
        None,
        "info",
        {
            "event": "token refreshed",
            "refresh_token": OPAQUE,
            "access_token": OPAQUE,
            "id_token": JWT,
            "code_verifier": OPAQUE,
            "client_secret": "s3cr3t",
            "client_assertion": JWT,
            "code": "auth-code-123",
            "password": "portal",
            "Authorization": f"Bearer {OPAQUE}",
            "headers": {"Authorization": f"Basic {OPAQUE}", "Accept": "application/json"},
            "response": {"body": [{"access_token": OPAQUE, "expires_in": 570}]},
            "patient_name": "Jane Doe",
            "birth_date": "1970-01-01",
            "token_endpoint": "https://ehr.example/token",
            "status_code": 200,
            "connection_id": "c-1",
        },
    )
    dumped = json.dumps(event)
    assert OPAQUE not in dumped
    assert JWT not in dumped
    for secret in ("s3cr3t", "auth-code-123", "portal", "Jane Doe", "1970-01-01"):
        assert secret not in dumped
    assert event["headers"]["Accept"] == "application/json"
    assert event["response"]["body"][0]["expires_in"] == 570
    # Metadata about credentials stays readable.
    assert event["token_endpoint"] == "https://ehr.example/token"
    assert event["status_code"] == 200
    assert event["connection_id"] == "c-1"
    assert event["event"] == "token refreshed"


@pytest.mark.parametrize(
    "text",
    [
        f"upstream said Authorization: Bearer {OPAQUE}",
        f"got {JWT} back",
        f"GET /callback?code={OPAQUE}&state={OPAQUE} HTTP/1.1",
        f"grant_type=refresh_token&refresh_token={OPAQUE}",
        f'body {{"access_token": "{OPAQUE}", "token_type": "Bearer"}}',
        f"client_secret={OPAQUE}",
    ],
)
def test_secrets_inside_strings_are_masked(text: str) -> None:
    scrubbed = redact_text(text)
    assert OPAQUE not in scrubbed
    assert JWT not in scrubbed
    assert "[redacted" in scrubbed


def test_ordinary_text_is_untouched() -> None:
    text = "refreshed connection c-1 for tenant cerner: 3 types, next at 12:00 (code path ok)"
    assert redact_text(text) == text


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_structlog_events_are_json_with_context_and_redacted(captured_logs: io.StringIO) -> None:
    structlog.contextvars.bind_contextvars(request_id="r-1")
    get_logger("syncsvc.test").info("exchanged code", code=OPAQUE, tenant="cerner")
    (line,) = _lines(captured_logs)
    assert line["event"] == "exchanged code"
    assert line["request_id"] == "r-1"
    assert line["tenant"] == "cerner"
    assert line["code"] == REDACTED
    assert line["level"] == "info"
    assert OPAQUE not in captured_logs.getvalue()


def test_stdlib_records_are_redacted_too(captured_logs: io.StringIO) -> None:
    # The shape of aiohttp's access log line for an OAuth callback.
    logging.getLogger("aiohttp.access").info(
        '127.0.0.1 "GET /callback?code=%s&state=%s HTTP/1.1" 302', OPAQUE, OPAQUE
    )
    (line,) = _lines(captured_logs)
    assert OPAQUE not in captured_logs.getvalue()
    assert line["logger"] == "aiohttp.access"


def test_exception_text_is_redacted(captured_logs: io.StringIO) -> None:
    try:
        raise RuntimeError(f'token endpoint answered {{"refresh_token": "{OPAQUE}"}}')
    except RuntimeError:
        get_logger("syncsvc.test").exception("refresh failed")
    assert OPAQUE not in captured_logs.getvalue()
    assert "RuntimeError" in captured_logs.getvalue()


def test_console_format_renders_and_redacts() -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    stream = io.StringIO()
    try:
        configure_logging(log_format="console", log_level="INFO", stream=stream)
        get_logger("syncsvc.test").debug("hidden")
        get_logger("syncsvc.test").info("hello", access_token=OPAQUE)
    finally:
        structlog.reset_defaults()
        root.handlers[:] = handlers
        root.setLevel(level)
    output = stream.getvalue()
    assert "hello" in output
    assert "hidden" not in output
    assert OPAQUE not in output


@pytest.mark.parametrize(
    "text",
    [
        "{'access_token': 'opaque-123', 'expires_in': 570}",  # a dict's repr
        "access_token: opaque-123",
        'answered {"refresh_token": "opaque-123"}',
    ],
)
def test_tokens_inside_other_text_shapes_are_masked(text: str) -> None:
    assert "opaque-123" not in redact_text(text)
