"""id_token validation: signature, issuer, audience (and authorized party), nonce, expiry."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet, RSAKey

from syncsvc.errors import LaunchError
from syncsvc.smart.id_token import validate_id_token

ISSUER = "https://auth.example/tenants/t"
CLIENT = "syncsvc-public"
KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
OTHER_KEY = RSAKey.generate_key(2048, parameters={"kid": "k1"})
KEYS = KeySet([KEY])


def _token(key: RSAKey = KEY, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": CLIENT,
        "sub": "12724066",
        "exp": now + 300,
        "iat": now,
        "nonce": "n-1",
        "fhirUser": "https://fhir.example/Patient/12724066",
    }
    claims.update(changes)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt.encode({"alg": "RS256", "kid": "k1"}, claims, key)


def test_a_valid_token_gives_its_subject_and_fhir_user() -> None:
    claims = validate_id_token(_token(), KEYS, issuer=ISSUER, client_id=CLIENT, nonce="n-1")
    assert claims.subject == "12724066"
    assert claims.fhir_user == "https://fhir.example/Patient/12724066"


@pytest.mark.parametrize(
    ("make_token", "reason"),
    [
        (lambda: _token(OTHER_KEY), "id_token_signature"),
        (lambda: _token(iss="https://evil.example"), "id_token_iss"),
        (lambda: _token(nonce="another"), "id_token_nonce"),
        (lambda: _token(exp=int(time.time()) - 3600), "id_token_exp"),
        (lambda: _token(aud="someone-else"), "id_token_aud"),
        (lambda: _token(aud=[CLIENT, "someone-else"]), "id_token_azp"),  # no azp
        (lambda: _token(aud=[CLIENT, "someone-else"], azp="someone-else"), "id_token_azp"),
    ],
)
def test_tokens_that_do_not_match_this_launch_are_refused(
    make_token: Callable[[], str], reason: str
) -> None:
    # Minted when the test runs, not when it is collected: a token made at collection expires
    # (five minutes) before a long suite reaches it, and would be refused for that instead.
    token = make_token()
    with pytest.raises(LaunchError) as refused:
        validate_id_token(token, KEYS, issuer=ISSUER, client_id=CLIENT, nonce="n-1")
    assert refused.value.reason == reason


def test_several_audiences_with_us_as_authorized_party_are_accepted() -> None:
    token = _token(aud=[CLIENT, "another-resource"], azp=CLIENT)
    assert validate_id_token(token, KEYS, issuer=ISSUER, client_id=CLIENT, nonce="n-1")
