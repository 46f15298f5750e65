"""OpenID Connect id_token validation for the SMART launch (signature, iss, aud, nonce, exp).

The id_token is how syncsvc learns ``fhirUser``; it is trusted only after its signature checks out
against the issuer's published JWKS and its claims match this very launch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from joserfc.jwt import JWTClaimsRegistry

from syncsvc.errors import LaunchError
from syncsvc.http import BodyTooLarge, read_body

#: SMART requires RS256 support; RS384/ES384 must be listed explicitly for joserfc to accept them.
ACCEPTED_ALGORITHMS = ["RS256", "RS384", "ES256", "ES384"]
CLOCK_LEEWAY_SECONDS = 120
MAX_JWKS_BYTES = 512 * 1024


@dataclass(frozen=True)
class IdTokenClaims:
    """The validated claims syncsvc uses."""

    subject: str
    fhir_user: str | None
    issuer: str
    claims: dict[str, Any]


async def fetch_jwks(http: aiohttp.ClientSession, jwks_uri: str) -> KeySet:
    """The issuer's public keys."""
    try:
        async with http.get(jwks_uri, allow_redirects=False) as response:
            body = await read_body(response.content, MAX_JWKS_BYTES)
            if response.status != 200:
                raise LaunchError(
                    "The EHR's signing keys could not be fetched, so its sign-in could not be "
                    "verified. Please try again later.",
                    reason="jwks_unavailable",
                )
        return KeySet.import_key_set(orjson.loads(body))
    except (
        BodyTooLarge,
        aiohttp.ClientError,
        TimeoutError,
        orjson.JSONDecodeError,
        ValueError,
        JoseError,
    ) as exc:
        raise LaunchError(
            "The EHR's signing keys could not be read, so its sign-in could not be verified.",
            reason="jwks_unavailable",
        ) from exc


def validate_id_token(
    id_token: str, keys: KeySet, *, issuer: str, client_id: str, nonce: str | None
) -> IdTokenClaims:
    """Check the id_token's signature and claims; raise :class:`LaunchError` on any mismatch."""
    try:
        decoded = jwt.decode(id_token, keys, algorithms=ACCEPTED_ALGORITHMS)
    except (JoseError, ValueError) as exc:
        raise LaunchError(
            "The EHR's identity token has an invalid signature.", reason="id_token_signature"
        ) from exc
    claims = dict(decoded.claims)
    options: dict[str, Any] = {
        "iss": {"essential": True, "value": issuer},
        "sub": {"essential": True},
        "exp": {"essential": True},
    }
    if nonce is not None:
        options["nonce"] = {"essential": True, "value": nonce}
    registry = JWTClaimsRegistry(leeway=CLOCK_LEEWAY_SECONDS, **options)
    try:
        registry.validate(claims)
    except JoseError as exc:
        claim = getattr(exc, "claim", None) or "a claim"
        raise LaunchError(
            f"The EHR's identity token failed validation ({claim}). Please start again.",
            reason=f"id_token_{claim}".replace(" ", "_"),
        ) from exc
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if client_id not in audiences:
        raise LaunchError(
            "The EHR's identity token was issued for another application.",
            reason="id_token_aud",
        )
    # OpenID Connect Core 3.1.3.7: with several audiences, the authorized party must be us.
    authorized = claims.get("azp")
    if (len(audiences) > 1 or authorized is not None) and authorized != client_id:
        raise LaunchError(
            "The EHR's identity token was issued to another application.",
            reason="id_token_azp",
        )
    fhir_user = claims.get("fhirUser") or claims.get("profile")
    return IdTokenClaims(
        subject=str(claims["sub"]),
        fhir_user=fhir_user if isinstance(fhir_user, str) else None,
        issuer=issuer,
        claims=claims,
    )
