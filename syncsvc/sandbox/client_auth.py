"""Client authentication at the sandbox's token, revocation and introspection endpoints.

Each registration names exactly one method and a request using another is refused, as the real
authorization servers do: public (``client_id`` only), ``client_secret_basic``,
``client_secret_post`` and ``private_key_jwt`` (RFC 7523 assertions, RS384 or ES384 as SMART
requires, key from the registration's inline JWKS or its JWKS URL on loopback).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any
from urllib.parse import unquote_plus, urlsplit

import aiohttp
from aiohttp import web
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from .config import ClientRegistration, SandboxConfig

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: SMART App Launch 2.x, "asymmetric" client authentication: exactly these two.
ASSERTION_ALGORITHMS = ("RS384", "ES384")
#: SMART: the assertion's ``exp`` is no more than five minutes in the future.
MAX_ASSERTION_LIFETIME = 300
CLOCK_SKEW = 30
JWKS_FETCH_TIMEOUT = aiohttp.ClientTimeout(total=5)
MAX_JWKS_BYTES = 256 * 1024


class ClientAuthError(Exception):
    """Client authentication failed; answered as ``invalid_client`` (HTTP 401)."""

    def __init__(self, description: str, *, basic_attempted: bool = False) -> None:
        super().__init__(description)
        self.description = description
        self.basic_attempted = basic_attempted


class ClientAuthenticator:
    """Checks client credentials; remembers assertion ids to refuse replays."""

    def __init__(self, config: SandboxConfig) -> None:
        self._config = config
        #: Assertion ``jti`` → its ``exp``; entries are dropped once expired.
        self._seen_jti: dict[str, float] = {}
        self._http: aiohttp.ClientSession | None = None

    async def http_ctx(self, _app: web.Application) -> AsyncIterator[None]:
        """``cleanup_ctx`` generator owning the session used to fetch client JWKS documents."""
        self._http = aiohttp.ClientSession(
            cookie_jar=aiohttp.DummyCookieJar(), timeout=JWKS_FETCH_TIMEOUT
        )
        try:
            yield
        finally:
            await self._http.close()
            self._http = None

    async def authenticate(
        self,
        headers: Mapping[str, str],
        form: Mapping[str, str],
        audiences: tuple[str, ...],
    ) -> ClientRegistration:
        """The registration the request authenticates as, or :class:`ClientAuthError`.

        ``audiences`` are the URLs an assertion may name as ``aud`` (the token endpoint first).
        """
        basic = _basic_credentials(headers)
        if basic is not None:
            return self._check_basic(*basic, form)
        if form.get("client_assertion") or form.get("client_assertion_type"):
            return await self._check_assertion(form, audiences)
        client = self._registration(form.get("client_id"))
        if client.auth == "client_secret_post":
            if not _same(form.get("client_secret"), client.secret):
                raise ClientAuthError("The client secret is wrong")
            return client
        if form.get("client_secret"):
            raise ClientAuthError(f"Client {client.client_id} does not use client_secret_post")
        if client.auth != "public":
            raise ClientAuthError(f"Client {client.client_id} must authenticate ({client.auth})")
        return client

    def _registration(self, client_id: str | None) -> ClientRegistration:
        client = self._config.client(client_id) if client_id else None
        if client is None:
            raise ClientAuthError("Unknown client")
        return client

    def _check_basic(
        self, client_id: str, secret: str, form: Mapping[str, str]
    ) -> ClientRegistration:
        client = self._registration(client_id)
        if client.auth != "client_secret_basic":
            raise ClientAuthError(
                f"Client {client_id} does not use client_secret_basic", basic_attempted=True
            )
        if form.get("client_id") not in (None, client_id):
            raise ClientAuthError("client_id disagrees with the credentials", basic_attempted=True)
        if not _same(secret, client.secret):
            raise ClientAuthError("The client secret is wrong", basic_attempted=True)
        return client

    async def _check_assertion(
        self, form: Mapping[str, str], audiences: tuple[str, ...]
    ) -> ClientRegistration:
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise ClientAuthError("Unsupported client_assertion_type")
        assertion = form.get("client_assertion", "")
        claims = _unverified_claims(assertion)
        client = self._registration(str(claims.get("iss") or form.get("client_id") or ""))
        if client.auth != "private_key_jwt":
            raise ClientAuthError(f"Client {client.client_id} does not use private_key_jwt")
        keys = await self._client_keys(client)
        try:
            verified = dict(jwt.decode(assertion, keys, algorithms=ASSERTION_ALGORITHMS).claims)
        except (JoseError, ValueError) as exc:
            raise ClientAuthError(f"The client assertion does not verify: {exc}") from exc
        self._check_assertion_claims(client, verified, form, audiences)
        return client

    def _check_assertion_claims(
        self,
        client: ClientRegistration,
        claims: dict[str, Any],
        form: Mapping[str, str],
        audiences: tuple[str, ...],
    ) -> None:
        if claims.get("iss") != client.client_id or claims.get("sub") != client.client_id:
            raise ClientAuthError("The assertion's iss and sub must both be the client_id")
        if form.get("client_id") not in (None, client.client_id):
            raise ClientAuthError("client_id disagrees with the assertion")
        aud = claims.get("aud")
        named = aud if isinstance(aud, list) else [aud]
        if not any(a in audiences for a in named):
            raise ClientAuthError("The assertion's aud is not this token endpoint")
        # Clients sign with their own clock, so assertions are checked against the wall clock,
        # not the sandbox clock that tests move forward.
        now = time.time()
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise ClientAuthError("The assertion has no exp")
        if exp < now - CLOCK_SKEW:
            raise ClientAuthError("The assertion has expired")
        if exp > now + MAX_ASSERTION_LIFETIME + CLOCK_SKEW:
            raise ClientAuthError("The assertion's exp is more than five minutes ahead")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise ClientAuthError("The assertion has no jti")
        self._seen_jti = {k: v for k, v in self._seen_jti.items() if v >= now - CLOCK_SKEW}
        key = f"{client.client_id}\x00{jti}"
        if key in self._seen_jti:
            raise ClientAuthError("The assertion's jti was already used")
        self._seen_jti[key] = float(exp)

    async def _client_keys(self, client: ClientRegistration) -> KeySet:
        document = client.jwks if client.jwks is not None else await self._fetch_jwks(client)
        try:
            return KeySet.import_key_set(document)  # type: ignore[arg-type]
        except (JoseError, ValueError, KeyError, TypeError) as exc:
            raise ClientAuthError(f"The client's JWKS is unusable: {exc}") from exc

    async def _fetch_jwks(self, client: ClientRegistration) -> Any:
        url = client.jwks_url
        if not url or not _is_loopback_url(url):
            raise ClientAuthError(
                "The client has no JWKS URL the sandbox may fetch (loopback only)"
            )
        if self._http is None:
            raise ClientAuthError("The sandbox is not running")
        try:
            async with self._http.get(url, allow_redirects=False) as response:
                body = await response.content.read(MAX_JWKS_BYTES + 1)
                if response.status != 200 or len(body) > MAX_JWKS_BYTES:
                    raise ClientAuthError(f"The client's JWKS URL answered {response.status}")
            return json.loads(body)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise ClientAuthError(f"The client's JWKS could not be fetched: {exc!r}") from exc


def _basic_credentials(headers: Mapping[str, str]) -> tuple[str, str] | None:
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise ClientAuthError("Malformed Basic credentials", basic_attempted=True) from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise ClientAuthError("Malformed Basic credentials", basic_attempted=True)
    # RFC 6749 §2.3.1: both halves are form-urlencoded before base64.
    return unquote_plus(client_id), unquote_plus(secret)


def _unverified_claims(assertion: str) -> dict[str, Any]:
    """The claims of an assertion before verification, only to find which client's keys to use."""
    try:
        claims = json.loads(jws.extract_compact(assertion.encode("ascii")).payload)
    except (JoseError, ValueError, UnicodeError):
        claims = None
    if not isinstance(claims, dict):
        raise ClientAuthError("The client assertion is not a readable JWT")
    return claims


def _same(given: str | None, expected: str | None) -> bool:
    if given is None or expected is None:
        return False
    return hmac.compare_digest(given.encode(), expected.encode())


def _is_loopback_url(url: str) -> bool:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme not in ("http", "https"):
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
