"""Signed, expiring tokens for connect links and patient sessions (HMAC via itsdangerous).

Each purpose has its own salt, so a patient-session cookie can never be replayed as a connect link
or the other way round. Single use of connect links is enforced in the database, not here.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Literal

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from syncsvc.errors import LaunchError

Purpose = Literal["connect-link", "patient-session", "browser-binding"]


@dataclass(frozen=True)
class ConnectLinkClaims:
    """What a connect link names."""

    link_id: str
    user_id: str
    tenant: str | None


class Signer:
    """Signs and verifies small JSON payloads, one salt per purpose."""

    def __init__(self, key: str) -> None:
        self._key = key

    def _serializer(self, purpose: Purpose) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self._key, salt=f"syncsvc/{purpose}")

    def sign(self, purpose: Purpose, payload: dict[str, str | None]) -> str:
        """A URL-safe signed token carrying ``payload``."""
        token = self._serializer(purpose).dumps(payload)
        return token if isinstance(token, str) else token.decode("ascii")

    def verify(self, purpose: Purpose, token: str, max_age: int) -> dict[str, str | None]:
        """The payload of a valid token no older than ``max_age`` seconds, else LaunchError."""
        try:
            payload = self._serializer(purpose).loads(token, max_age=max_age)
        except SignatureExpired as exc:
            raise LaunchError(
                "This link has expired. Ask the application that sent it for a new one.",
                reason="link_expired",
            ) from exc
        except BadSignature as exc:
            raise LaunchError(
                "This link is not valid. Ask the application that sent it for a new one.",
                reason="link_invalid",
            ) from exc
        if not isinstance(payload, dict):
            raise LaunchError("This link is not valid.", reason="link_invalid")
        return payload

    def connect_link(self, user_id: str, tenant: str | None) -> tuple[str, str]:
        """A new connect-link token and its id (the id is what the database marks as used)."""
        link_id = secrets.token_urlsafe(16)
        token = self.sign("connect-link", {"lid": link_id, "uid": user_id, "tnt": tenant})
        return token, link_id

    def read_connect_link(self, token: str, max_age: int) -> ConnectLinkClaims:
        """The claims of a valid, unexpired connect link."""
        payload = self.verify("connect-link", token, max_age)
        link_id, user_id = payload.get("lid"), payload.get("uid")
        if not link_id or not user_id:
            raise LaunchError("This link is not valid.", reason="link_invalid")
        return ConnectLinkClaims(link_id=link_id, user_id=user_id, tenant=payload.get("tnt"))
