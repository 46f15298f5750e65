"""Helpers that drive the sandbox's authorization server over real HTTP.

``obtain_tokens`` is the one most tests need: it authorizes (auto-approved, or by submitting the
login form as the chosen patient), exchanges the code and returns the token response JSON.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import aiohttp

from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import TEST_REDIRECT_URI

DEFAULT_SCOPE = (
    "launch/patient openid fhirUser offline_access patient/Patient.read patient/Observation.read"
)
DEFAULT_PATIENT = "12724066"


@dataclass(frozen=True)
class Pkce:
    """A PKCE verifier and its S256 challenge."""

    verifier: str
    challenge: str


def new_pkce() -> Pkce:
    """A fresh PKCE pair (RFC 7636, S256)."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return Pkce(verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii"))


@dataclass
class AuthorizeResult:
    """What an authorize request answered: a redirect's query, or a page."""

    status: int
    location: str | None = None
    query: dict[str, str] = field(default_factory=dict)
    body: str = ""

    @property
    def code(self) -> str:
        """The authorization code of a successful redirect (fails the test otherwise)."""
        assert "code" in self.query, f"no code: {self.status} {self.query or self.body[:300]}"
        return self.query["code"]


def authorize_params(
    sandbox: RunningSandbox,
    tenant_id: str,
    *,
    client_id: str = "syncsvc-public",
    scope: str = DEFAULT_SCOPE,
    redirect_uri: str = TEST_REDIRECT_URI,
    state: str | None = "xyz-state",
    pkce: Pkce | None = None,
    nonce: str | None = None,
    extra: Mapping[str, str | None] | None = None,
) -> dict[str, str]:
    """Query parameters of a standalone patient authorize request (``extra`` None values drop)."""
    params: dict[str, str | None] = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "aud": sandbox.urls(tenant_id).fhir_base,
        "nonce": nonce,
    }
    if pkce is not None:
        params |= {"code_challenge": pkce.challenge, "code_challenge_method": "S256"}
    params |= dict(extra or {})
    return {k: v for k, v in params.items() if v is not None}


def _result(response: aiohttp.ClientResponse, body: str) -> AuthorizeResult:
    location = response.headers.get("Location")
    query = dict(parse_qsl(urlsplit(location).query)) if location else {}
    return AuthorizeResult(response.status, location, query, body)


async def authorize(
    http: aiohttp.ClientSession, sandbox: RunningSandbox, tenant_id: str, params: dict[str, str]
) -> AuthorizeResult:
    """GET the authorize endpoint without following the redirect."""
    url = sandbox.urls(tenant_id).authorize
    async with http.get(url, params=params, allow_redirects=False) as response:
        return _result(response, await response.text())


async def submit_login(
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tenant_id: str,
    params: dict[str, str],
    *,
    username: str,
    password: str = "portal",  # noqa: S107 - the sandbox's documented demo password
    decision: str = "approve",
) -> AuthorizeResult:
    """POST the login + consent form as a person would."""
    url = sandbox.urls(tenant_id).authorize
    form = {**params, "username": username, "password": password, "decision": decision}
    async with http.post(url, data=form, allow_redirects=False) as response:
        return _result(response, await response.text())


def basic_auth(client_id: str, secret: str) -> dict[str, str]:
    """An RFC 6749 §2.3.1 Basic Authorization header."""
    raw = f"{quote(client_id, safe='')}:{quote(secret, safe='')}".encode()
    return {"Authorization": "Basic " + base64.b64encode(raw).decode("ascii")}


async def token_request(
    http: aiohttp.ClientSession,
    url: str,
    form: Mapping[str, str],
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """POST a form; returns status, JSON body (or text when not JSON) and the response."""
    async with http.post(url, data=dict(form), headers=dict(headers or {})) as response:
        text = await response.text()
        try:
            body: Any = await response.json(content_type=None) if text else None
        except ValueError:
            body = text
        return response.status, body, response


def client_form(client_id: str, client_secret: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """Form fields and headers authenticating a public client or a client_secret_basic one."""
    if client_secret is None:
        return {"client_id": client_id}, {}
    return {}, basic_auth(client_id, client_secret)


async def exchange_code(
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tenant_id: str,
    code: str,
    *,
    client_id: str = "syncsvc-public",
    client_secret: str | None = None,
    redirect_uri: str = TEST_REDIRECT_URI,
    verifier: str | None = None,
) -> tuple[int, Any]:
    """Exchange an authorization code; returns status and body."""
    form, headers = client_form(client_id, client_secret)
    form |= {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
    if verifier is not None:
        form["code_verifier"] = verifier
    status, body, _ = await token_request(http, sandbox.urls(tenant_id).token, form, headers)
    return status, body


async def refresh(
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tenant_id: str,
    refresh_token: str,
    *,
    client_id: str = "syncsvc-public",
    client_secret: str | None = None,
    scope: str | None = None,
) -> tuple[int, Any, aiohttp.ClientResponse]:
    """A refresh_token grant; returns status, body and the response (for headers)."""
    form, headers = client_form(client_id, client_secret)
    form |= {"grant_type": "refresh_token", "refresh_token": refresh_token}
    if scope is not None:
        form["scope"] = scope
    return await token_request(http, sandbox.urls(tenant_id).token, form, headers)


async def obtain_code(
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tenant_id: str,
    params: dict[str, str],
    *,
    patient_id: str = DEFAULT_PATIENT,
) -> str:
    """An authorization code: auto-approved, or by logging in as ``patient_id`` on the form."""
    result = await authorize(http, sandbox, tenant_id, params)
    if result.status == 200:
        patient = next(p for p in sandbox.tenant(tenant_id).patients if p.id == patient_id)
        result = await submit_login(
            http,
            sandbox,
            tenant_id,
            params,
            username=patient.username or patient.id,
            password=patient.password,
        )
    return result.code


async def obtain_tokens(
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    tenant_id: str,
    *,
    client_id: str = "syncsvc-public",
    client_secret: str | None = None,
    scope: str = DEFAULT_SCOPE,
    patient_id: str = DEFAULT_PATIENT,
    nonce: str | None = None,
) -> dict[str, Any]:
    """Authorize as ``patient_id`` and exchange the code: the token response JSON.

    Uses PKCE S256 and the test redirect URI. A confidential client passes ``client_secret``
    (client_secret_basic). Fails the test unless the token endpoint answers 200.
    """
    pkce = new_pkce()
    params = authorize_params(
        sandbox, tenant_id, client_id=client_id, scope=scope, pkce=pkce, nonce=nonce
    )
    code = await obtain_code(http, sandbox, tenant_id, params, patient_id=patient_id)
    status, body = await exchange_code(
        http,
        sandbox,
        tenant_id,
        code,
        client_id=client_id,
        client_secret=client_secret,
        verifier=pkce.verifier,
    )
    assert status == 200, f"token endpoint answered {status}: {body}"
    assert isinstance(body, dict)
    return body
