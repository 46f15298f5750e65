"""Webhook signatures and the webhook settings: pure functions, no I/O."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac

import pytest

from syncsvc.errors import ConfigError
from syncsvc.lifecycle.webhooks import sign, verify_signature, webhook_url_allowed
from syncsvc.settings import Secret, Settings

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
T = int(NOW.timestamp())
BODY = b'{"id":"d-1","type":"sync.completed"}'


def test_signature_is_hmac_sha256_over_timestamp_dot_body() -> None:
    header = sign("s3cret", BODY, T)
    expected = hmac.new(b"s3cret", f"{T}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert header == f"t={T},v1={expected}"
    assert verify_signature("s3cret", header, BODY, now=NOW)


@pytest.mark.parametrize(
    ("secret", "header_t", "body", "now_offset"),
    [
        ("wrong", T, BODY, 0),  # another secret
        ("s3cret", T, BODY + b" ", 0),  # a changed body
        ("s3cret", T, BODY, 301),  # too old
        ("s3cret", T, BODY, -301),  # from the future
    ],
)
def test_signature_rejects(secret: str, header_t: int, body: bytes, now_offset: int) -> None:
    header = sign("s3cret", BODY, header_t)
    now = NOW + dt.timedelta(seconds=now_offset)
    assert not verify_signature(secret, header, body, now=now)


def test_signature_header_parsing() -> None:
    good = sign("s3cret", BODY, T)
    assert not verify_signature("s3cret", "", BODY, now=NOW)
    assert not verify_signature("s3cret", "t=abc,v1=00", BODY, now=NOW)
    assert not verify_signature("s3cret", f"t={T}", BODY, now=NOW)
    # A rotated secret: either v1 may match.
    rotated = f"{good},v1={'0' * 64}"
    assert verify_signature("s3cret", rotated, BODY, now=NOW)
    valid_second = f"t={T},v1={'0' * 64},v1={good.split('v1=')[1]}"
    assert verify_signature("s3cret", valid_second, BODY, now=NOW)
    # The timestamp is signed: moving it breaks the signature.
    moved = good.replace(f"t={T}", f"t={T + 1}")
    assert not verify_signature("s3cret", moved, BODY, now=NOW)


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://hooks.example/syncsvc", True),
        ("http://127.0.0.1:9000/hooks", True),
        ("http://[::1]:9000/hooks", True),
        ("http://localhost/hooks", True),
        ("http://hooks.example/syncsvc", False),
        ("http://127.evil.example/hooks", False),
        ("ftp://hooks.example/", False),
        ("https:///nohost", False),
    ],
)
def test_webhook_urls(url: str, allowed: bool) -> None:
    assert webhook_url_allowed(url) is allowed
    if allowed:
        settings = Settings.for_tests(webhook_url=url, webhook_secret=Secret("x"))
        assert settings.webhook_url == url
    else:
        with pytest.raises(ConfigError, match="webhook_url"):
            Settings.for_tests(webhook_url=url, webhook_secret=Secret("x"))


def test_webhook_settings_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "SYNCSVC_WEBHOOK_URL": "https://hooks.example/syncsvc",
            "SYNCSVC_WEBHOOK_SECRET": "whsec-value",
        }
    )
    assert settings.webhook_url == "https://hooks.example/syncsvc"
    assert settings.webhook_secret is not None
    assert settings.webhook_secret.reveal() == "whsec-value"
    assert "whsec-value" not in repr(settings)
    with pytest.raises(ConfigError, match="webhook_secret"):
        Settings.from_env({"SYNCSVC_WEBHOOK_URL": "https://hooks.example/syncsvc"})
    assert Settings.from_env({}).webhook_url is None
