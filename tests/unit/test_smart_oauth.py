"""Token responses and token errors: strict validation, and the reauth/transient split."""

from __future__ import annotations

import base64

import orjson
import pytest

from syncsvc.errors import ReauthRequired, Transient
from syncsvc.smart.oauth import (
    authorize_url,
    bound_revocation_endpoint,
    classify_token_error,
    new_pkce,
    parse_token_response,
)
from syncsvc.smart.vendor_errors import OAuthError, classify_fhir_failure, urn_from_error_uri

CERNER_ERROR_URI = (
    "https://authorization.example/errors/"
    "urn%3Acerner%3Aerror%3Aauthorization-server%3Aoauth2%3Agrant%3Amissing-patient"
    "/instances/047e9272?persona=patient&client=c&tenant=t"
)


def test_token_response_is_parsed_with_a_computed_expiry() -> None:
    response = parse_token_response(
        {
            "access_token": "secret-access-value",
            "token_type": "bearer",
            "expires_in": 570,
            "scope": "openid patient/Observation.read",
            "refresh_token": "secret-refresh-value",
            "patient": "12724066",
            "tenant": "t1",
        },
        now=1000.0,
    )
    assert response.expires_at == 1570.0
    assert response.scopes == ("openid", "patient/Observation.read")
    assert response.patient == "12724066"
    assert "secret-" not in repr(response)


def test_expiry_falls_back_to_the_jwt_exp_claim() -> None:
    payload = base64.urlsafe_b64encode(orjson.dumps({"exp": 4242})).rstrip(b"=").decode()
    token = f"eyJhbGciOiJub25lIn0.{payload}.sig"
    response = parse_token_response({"access_token": token, "token_type": "Bearer"})
    assert response.expires_at == 4242.0


@pytest.mark.parametrize(
    "doc",
    [
        None,
        [],
        {"token_type": "Bearer", "expires_in": 60},
        {"access_token": "x", "token_type": "mac", "expires_in": 60},
        {"access_token": "opaque", "token_type": "Bearer"},  # no computable expiry
        {"access_token": "x", "token_type": "Bearer", "expires_in": 60, "refresh_token": 7},
    ],
)
def test_unusable_token_responses_are_transient(doc: object) -> None:
    with pytest.raises(Transient):
        parse_token_response(doc)


def test_invalid_grant_requires_reauth_and_keeps_the_error_uri() -> None:
    body = orjson.dumps({"error": "invalid_grant", "error_uri": CERNER_ERROR_URI})
    error = classify_token_error(400, body, None)
    assert isinstance(error, ReauthRequired)
    assert error.error_uri == CERNER_ERROR_URI


@pytest.mark.parametrize(
    ("status", "body", "retry_after", "expected_retry"),
    [
        (503, b"", None, None),
        (429, b"{}", "7", 7.0),
        (400, b"<html>Bad Request</html>", None, None),  # Epic's merged endpoint
        (400, b'{"error": "temporarily_unavailable"}', None, None),
    ],
)
def test_outages_and_html_answers_are_transient(
    status: int, body: bytes, retry_after: str | None, expected_retry: float | None
) -> None:
    error = classify_token_error(status, body, retry_after)
    assert isinstance(error, Transient)
    assert error.retry_after == expected_retry


def test_cerner_urn_is_read_from_error_uri() -> None:
    urn = urn_from_error_uri(CERNER_ERROR_URI)
    assert urn == "urn:cerner:error:authorization-server:oauth2:grant:missing-patient"
    error = OAuthError("access_denied", error_uri=CERNER_ERROR_URI)
    assert error.reason == "missing-patient"
    # The cause is the app's registration at the provider, not the patient's sign-in.
    assert "registration" in error.explain()
    assert "operator has been told" in error.explain()
    assert "sign in" not in error.explain().replace("signing in again will not help", "")


@pytest.mark.parametrize(
    "urn_code", ["client-persona-mismatch", "invalid-launch-code", "unknown-persona"]
)
def test_persona_and_launch_type_errors_blame_the_registration(urn_code: str) -> None:
    uri = CERNER_ERROR_URI.replace("missing-patient", urn_code)
    error = OAuthError("unauthorized_client", error_uri=uri)
    assert error.reason == urn_code
    assert "registration" in error.explain()


def test_authorize_url_carries_aud_pkce_state_and_nonce() -> None:
    pkce = new_pkce()
    url = authorize_url(
        authorization_endpoint="https://ehr.example/authorize",
        client_id="c",
        redirect_uri="https://app.example/callback",
        scopes=["launch/patient", "openid"],
        state="s" * 22,
        aud="https://ehr.example/r4/t",
        code_challenge=pkce.challenge,
        nonce="n1",
    )
    assert "aud=https%3A%2F%2Fehr.example%2Fr4%2Ft" in url
    assert "code_challenge_method=S256" in url
    assert f"code_challenge={pkce.challenge}" in url
    assert "scope=launch%2Fpatient+openid" in url
    assert "nonce=n1" in url
    assert len(pkce.verifier) >= 43


def test_cerner_tenant_mismatch_and_epic_insufficient_scope_are_recognised() -> None:
    mismatch = classify_fhir_failure(
        401,
        'Bearer realm="fhir", error="invalid_token", '
        'error_description="Token is not valid for this tenant"',
        None,
        b'{"code":401,"message":"code=\\"urn:cerner:error:oauth2:resource-access:tenant-mismatch\\""}',
    )
    assert mismatch.kind == "tenant_mismatch"
    epic_403 = classify_fhir_failure(403, 'Bearer error="insufficient_scope"', None, b"")
    assert epic_403.kind == "insufficient_scope"
    expired = classify_fhir_failure(401, 'Bearer error="invalid_token"', None, b"")
    assert expired.kind == "invalid_token"
    throttled = classify_fhir_failure(429, None, "3", b"")
    assert (throttled.kind, throttled.retry_after) == ("throttled", 3.0)


@pytest.mark.parametrize(
    ("advertised", "expected"),
    [
        (
            "https://auth.example/tenants/t/token/revoke",
            "https://auth.example/tenants/t/token/revoke",
        ),
        ("https://elsewhere.example/revoke", None),  # discovery changed to another server
        ("http://auth.example/revoke", None),  # scheme downgrade
        (None, None),
        ("", None),
    ],
)
def test_revocation_goes_only_to_the_token_endpoints_host(
    advertised: object, expected: str | None
) -> None:
    token_endpoint = "https://auth.example/tenants/t/token"
    assert bound_revocation_endpoint(advertised, token_endpoint) == expected
