"""private_key_jwt client authentication (RFC 7523, SMART asymmetric) over real HTTP."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey, KeySet, OctKey, RSAKey

from syncsvc.sandbox.client_auth import ASSERTION_TYPE
from syncsvc.sandbox.config import ClientRegistration
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import GENERIC_TENANT, TEST_REDIRECT_URI

from .authflow import authorize, authorize_params, new_pkce, token_request

RSA_KEY = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
EC_KEY = ECKey.generate_key("P-384", parameters={"kid": "ec-1"})


@pytest.fixture
async def jwks_server() -> AsyncIterator[str]:
    """A loopback HTTP server publishing the EC client's public JWKS; yields its URL."""
    app = web.Application()

    async def jwks(_request: web.Request) -> web.Response:
        return web.json_response(KeySet([EC_KEY]).as_dict(private=False))

    app.router.add_get("/jwks.json", jwks)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}/jwks.json"
    finally:
        await runner.cleanup()


@pytest.fixture
def clients(sandbox: RunningSandbox, jwks_server: str) -> None:
    """Register an RS384 client with an inline JWKS and an ES384 client with a JWKS URL."""
    sandbox.tenant(GENERIC_TENANT).policy.auto_approve_patient = "12724066"
    sandbox.state.config.clients += [
        ClientRegistration(
            client_id="rsa-client",
            auth="private_key_jwt",
            redirect_uris=[TEST_REDIRECT_URI],
            jwks=KeySet([RSA_KEY]).as_dict(private=False),  # type: ignore[arg-type]
        ),
        ClientRegistration(
            client_id="ec-client",
            auth="private_key_jwt",
            redirect_uris=[TEST_REDIRECT_URI],
            jwks_url=jwks_server,
        ),
        ClientRegistration(
            client_id="remote-client",
            auth="private_key_jwt",
            redirect_uris=[TEST_REDIRECT_URI],
            jwks_url="https://jwks.example.com/jwks.json",
        ),
    ]


def _assertion(
    client_id: str,
    aud: str,
    *,
    key: Any = RSA_KEY,
    alg: str = "RS384",
    lifetime: int = 240,
    jti: str | None = None,
) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": now + lifetime,
        "iat": now,
        "jti": jti or uuid.uuid4().hex,
    }
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])


async def _exchange(
    http: aiohttp.ClientSession, sandbox: RunningSandbox, client_id: str, assertion: str
) -> tuple[int, Any]:
    pkce = new_pkce()
    params = authorize_params(sandbox, GENERIC_TENANT, client_id=client_id, pkce=pkce)
    code = (await authorize(http, sandbox, GENERIC_TENANT, params)).code
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": TEST_REDIRECT_URI,
        "code_verifier": pkce.verifier,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
    }
    status, body, _ = await token_request(http, sandbox.urls(GENERIC_TENANT).token, form)
    return status, body


@pytest.mark.usefixtures("clients")
async def test_rs384_with_inline_jwks(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    token_url = sandbox.urls(GENERIC_TENANT).token

    status, body = await _exchange(http, sandbox, "rsa-client", _assertion("rsa-client", token_url))

    assert status == 200, body
    assert body["refresh_token"]


@pytest.mark.usefixtures("clients")
async def test_es384_with_jwks_url(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    token_url = sandbox.urls(GENERIC_TENANT).token
    assertion = _assertion("ec-client", token_url, key=EC_KEY, alg="ES384")

    status, body = await _exchange(http, sandbox, "ec-client", assertion)

    assert status == 200, body


@pytest.mark.usefixtures("clients")
async def test_replayed_assertion_is_refused(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    assertion = _assertion("rsa-client", sandbox.urls(GENERIC_TENANT).token)

    first, _ = await _exchange(http, sandbox, "rsa-client", assertion)
    second, body = await _exchange(http, sandbox, "rsa-client", assertion)

    assert first == 200
    assert second == 401
    assert body["error"] == "invalid_client"
    assert "jti" in body["error_description"]


@pytest.mark.usefixtures("clients")
@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("wrong-aud", "aud"),
        ("too-long", "five minutes"),
        ("expired", "expired"),
        ("rs256", "verify"),
        ("hs256", "verify"),
        ("wrong-key", "verify"),
    ],
)
async def test_bad_assertions_are_refused(
    sandbox: RunningSandbox, http: aiohttp.ClientSession, case: str, detail: str
) -> None:
    token_url = sandbox.urls(GENERIC_TENANT).token
    other_rsa = RSAKey.generate_key(2048, parameters={"kid": "rsa-1"})
    assertions = {
        "wrong-aud": lambda: _assertion("rsa-client", sandbox.urls(GENERIC_TENANT).fhir_base),
        "too-long": lambda: _assertion("rsa-client", token_url, lifetime=3600),
        "expired": lambda: _assertion("rsa-client", token_url, lifetime=-120),
        "rs256": lambda: _assertion("rsa-client", token_url, alg="RS256"),
        "hs256": lambda: _assertion(
            "rsa-client",
            token_url,
            key=OctKey.import_key("k" * 32, parameters={"kid": "rsa-1"}),
            alg="HS256",
        ),
        "wrong-key": lambda: _assertion("rsa-client", token_url, key=other_rsa),
    }

    status, body = await _exchange(http, sandbox, "rsa-client", assertions[case]())

    assert status == 401
    assert body["error"] == "invalid_client"
    assert detail in body["error_description"]


@pytest.mark.usefixtures("clients")
async def test_iss_must_be_the_client(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
    token_url = sandbox.urls(GENERIC_TENANT).token
    now = int(time.time())
    claims = {"iss": "rsa-client", "sub": "someone", "aud": token_url, "exp": now + 60, "jti": "j"}
    assertion = jwt.encode({"alg": "RS384"}, claims, RSA_KEY, algorithms=["RS384"])

    status, body = await _exchange(http, sandbox, "rsa-client", assertion)

    assert status == 401
    assert "iss and sub" in body["error_description"]


@pytest.mark.usefixtures("clients")
async def test_jwks_url_off_loopback_is_never_fetched(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token_url = sandbox.urls(GENERIC_TENANT).token
    assertion = _assertion("remote-client", token_url)

    status, body = await _exchange(http, sandbox, "remote-client", assertion)

    assert status == 401
    assert "loopback" in body["error_description"]


@pytest.mark.usefixtures("clients")
async def test_secret_based_client_cannot_use_an_assertion(
    sandbox: RunningSandbox, http: aiohttp.ClientSession
) -> None:
    token_url = sandbox.urls(GENERIC_TENANT).token
    assertion = _assertion("syncsvc-confidential", token_url)

    status, body = await _exchange(http, sandbox, "syncsvc-confidential", assertion)

    assert status == 401
    assert "private_key_jwt" in body["error_description"]
