"""The OAuth 2.0 exchanges of a SMART standalone launch: authorize URL, code, refresh, revoke.

Token responses are validated strictly before anything is stored, and token-endpoint failures are
split on the two axes the scheduler acts on: :class:`~syncsvc.errors.ReauthRequired` (the grant is
gone; stop) and :class:`~syncsvc.errors.Transient` (try again later, keep the old token). A
malformed answer is transient: an EHR having a bad minute must never cost a patient their grant.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from syncsvc.errors import ReauthRequired, Transient
from syncsvc.http import BodyTooLarge, describe_network_error, read_body

from .client_auth import ClientCredentials, apply_client_auth
from .scopes import split_scope_string
from .vendor_errors import OAuthError, ehr_text, parse_retry_after, safe_error_uri

MAX_TOKEN_RESPONSE_BYTES = 256 * 1024
#: Token errors after which the grant cannot be used again without the patient.
REAUTH_ERRORS = frozenset(
    {"invalid_grant", "invalid_client", "unauthorized_client", "invalid_scope", "access_denied"}
)


@dataclass(frozen=True)
class Pkce:
    """A PKCE verifier and its S256 challenge (RFC 7636)."""

    verifier: str = field(repr=False)
    challenge: str


def new_pkce() -> Pkce:
    """A fresh PKCE pair with a 43-character (256-bit) verifier."""
    verifier = secrets.token_urlsafe(32)
    return Pkce(verifier=verifier, challenge=create_s256_code_challenge(verifier))


def authorize_url(
    *,
    authorization_endpoint: str,
    client_id: str,
    redirect_uri: str,
    scopes: list[str],
    state: str,
    aud: str,
    code_challenge: str,
    nonce: str | None,
) -> str:
    """The URL to send the patient's browser to; ``aud`` is the FHIR base byte for byte."""
    extra: dict[str, str] = {
        "aud": aud,
        "code_challenge": code_challenge,
        "code_challenge_method": "S256",
    }
    if nonce:
        extra["nonce"] = nonce
    url: str = prepare_grant_uri(
        authorization_endpoint,
        client_id,
        "code",
        redirect_uri=redirect_uri,
        scope=" ".join(scopes),
        state=state,
        **extra,
    )
    return url


@dataclass(frozen=True)
class TokenResponse:
    """A validated token response. Secrets are excluded from ``repr``."""

    access_token: str = field(repr=False)
    expires_at: float
    scopes: tuple[str, ...]
    scope_returned: bool
    refresh_token: str | None = field(default=None, repr=False)
    id_token: str | None = field(default=None, repr=False)
    patient: str | None = None
    tenant: str | None = None
    encounter: str | None = None
    need_patient_banner: bool | None = None
    #: Any other fields, for diagnostics (tokens never land here).
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


def jwt_payload(token: str) -> dict[str, Any]:
    """The payload of a JWT, read without verification (diagnostics only); {} if not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        payload = orjson.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _jwt_expiry(token: str) -> float | None:
    """``exp`` of a readable JWT access token (diagnostic: used only when expires_in is absent)."""
    exp = jwt_payload(token).get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def parse_token_response(doc: Any, *, now: float | None = None) -> TokenResponse:
    """Validate a successful token response; anything unusable is :class:`Transient`."""
    now = time.time() if now is None else now
    if not isinstance(doc, dict):
        raise Transient("The token endpoint answered with something other than a JSON object")
    access_token = doc.get("access_token")
    if not isinstance(access_token, str) or not access_token:
        raise Transient("The token response has no access_token")
    token_type = doc.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise Transient("The token response's token_type is not Bearer")
    expires_in = doc.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool) and expires_in > 0:
        expires_at = now + float(expires_in)
    else:
        jwt_exp = _jwt_expiry(access_token)
        if jwt_exp is None:
            raise Transient("The token response gives no usable expiry (expires_in)")
        expires_at = jwt_exp
    refresh_token = doc.get("refresh_token")
    if refresh_token is not None and (not isinstance(refresh_token, str) or not refresh_token):
        raise Transient("The token response's refresh_token is not a string")
    scope = doc.get("scope")
    if scope is not None and not isinstance(scope, str):
        raise Transient("The token response's scope is not a string")
    id_token = doc.get("id_token")
    known = {
        "access_token",
        "token_type",
        "expires_in",
        "refresh_token",
        "scope",
        "id_token",
        "patient",
        "tenant",
        "encounter",
        "need_patient_banner",
    }
    return TokenResponse(
        access_token=access_token,
        expires_at=expires_at,
        scopes=tuple(split_scope_string(scope)),
        scope_returned=scope is not None,
        refresh_token=refresh_token,
        id_token=id_token if isinstance(id_token, str) else None,
        patient=str(doc["patient"]) if isinstance(doc.get("patient"), str | int) else None,
        tenant=str(doc["tenant"]) if isinstance(doc.get("tenant"), str) else None,
        encounter=str(doc["encounter"]) if isinstance(doc.get("encounter"), str) else None,
        need_patient_banner=doc.get("need_patient_banner")
        if isinstance(doc.get("need_patient_banner"), bool)
        else None,
        extra={k: v for k, v in doc.items() if k not in known and "token" not in k.lower()},
    )


def classify_token_error(
    status: int, body: bytes, retry_after: str | None
) -> ReauthRequired | Transient:
    """The error a failed token request stands for."""
    if status == 429 or status >= 500:
        return Transient(
            f"The token endpoint answered HTTP {status}", retry_after=parse_retry_after(retry_after)
        )
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("error"), str):
        # An HTML or empty 4xx (Epic's merged endpoint answers 400 HTML when overloaded) says
        # nothing about the grant; losing a grant over it would be our fault, not the patient's.
        return Transient(f"The token endpoint answered HTTP {status} without an OAuth error")
    description = doc.get("error_description")
    error = OAuthError(
        # The server's own text, kept short and redacted (it ends up stored with the connection).
        error=ehr_text(doc["error"])[:100],
        description=ehr_text(description) if isinstance(description, str) else None,
        error_uri=safe_error_uri(
            doc.get("error_uri") if isinstance(doc.get("error_uri"), str) else None
        ),
    )
    if error.reason == "throttled" or error.error in ("slow_down", "temporarily_unavailable"):
        return Transient(
            "The token endpoint is throttling refreshes", retry_after=parse_retry_after(retry_after)
        )
    if error.error in REAUTH_ERRORS or error.reason == "empty-scopes":
        return ReauthRequired(
            f"The EHR refused the grant ({error.reason})",
            reason=error.reason,
            error_uri=error.error_uri,
        )
    return Transient(f"The token endpoint answered {error.error}")


async def _token_request(
    http: aiohttp.ClientSession,
    token_endpoint: str,
    form: dict[str, str],
    credentials: ClientCredentials,
    clock: Callable[[], dt.datetime] | None = None,
) -> TokenResponse:
    headers = apply_client_auth(credentials, token_endpoint, form)
    headers["Accept"] = "application/json"
    try:
        async with http.post(
            token_endpoint, data=form, headers=headers, allow_redirects=False
        ) as response:
            try:
                body = await read_body(response.content, MAX_TOKEN_RESPONSE_BYTES)
            except BodyTooLarge as exc:
                raise Transient("The token endpoint answered with an oversized body") from exc
            if response.status != 200:
                raise classify_token_error(
                    response.status, body, response.headers.get("Retry-After")
                )
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise Transient("The token endpoint answered with malformed JSON") from exc
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Transient(
            f"The token endpoint could not be reached ({describe_network_error(exc)})"
        ) from exc
    # ``expires_in`` counts from the answer, on the caller's clock (the wall clock if none).
    return parse_token_response(doc, now=None if clock is None else clock().timestamp())


async def exchange_code(
    http: aiohttp.ClientSession,
    *,
    token_endpoint: str,
    code: str,
    redirect_uri: str,
    code_verifier: str,
    credentials: ClientCredentials,
) -> TokenResponse:
    """Exchange an authorization code (with its PKCE verifier) for tokens."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": code_verifier,
    }
    return await _token_request(http, token_endpoint, form, credentials)


async def refresh_tokens(
    http: aiohttp.ClientSession,
    *,
    token_endpoint: str,
    refresh_token: str,
    credentials: ClientCredentials,
    scope: str | None = None,
    clock: Callable[[], dt.datetime] | None = None,
) -> TokenResponse:
    """Use a refresh token. The caller persists the result before using the new access token.

    The expiry is placed in time by ``clock`` (the caller's; the wall clock when not given).
    """
    form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scope:
        form["scope"] = scope
    return await _token_request(http, token_endpoint, form, credentials, clock)


async def revoke_token(
    http: aiohttp.ClientSession,
    *,
    revocation_endpoint: str,
    token: str,
    token_type_hint: str,
    credentials: ClientCredentials,
) -> None:
    """Revoke a token (RFC 7009). Raises :class:`Transient` when the EHR did not confirm."""
    form = {"token": token, "token_type_hint": token_type_hint}
    headers = apply_client_auth(credentials, revocation_endpoint, form)
    try:
        async with http.post(
            revocation_endpoint, data=form, headers=headers, allow_redirects=False
        ) as response:
            with contextlib.suppress(BodyTooLarge):
                await read_body(response.content, 65536)
            # RFC 7009 section 2.2: 200 also for tokens that were already invalid.
            if response.status != 200:
                raise Transient(f"The revocation endpoint answered HTTP {response.status}")
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Transient(
            f"The revocation endpoint could not be reached ({describe_network_error(exc)})"
        ) from exc


def bound_revocation_endpoint(advertised: object, token_endpoint: str) -> str | None:
    """The revocation endpoint to send a grant's token to, or None.

    Only one on the same scheme and host as the token endpoint the grant came from: the
    discovery document may have changed since the launch, and a refresh token must not travel
    to a server that did not issue it.
    """
    if not isinstance(advertised, str) or not advertised:
        return None
    revoke, token = urlsplit(advertised), urlsplit(token_endpoint)
    if (revoke.scheme, revoke.netloc.lower()) != (token.scheme, token.netloc.lower()):
        return None
    return advertised
