"""Signing and verifying the sandbox's JWTs (access tokens and id_tokens), and its JWKS."""

from __future__ import annotations

from typing import Any

from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeyParameters, KeySet, RSAKey

SIGNING_ALGORITHM = "RS256"


class TokenSigner:
    """One RSA key pair per sandbox process; its public half is served as the issuer's JWKS."""

    def __init__(self, kid: str = "sandbox-1", private_key_pem: str | None = None) -> None:
        self.kid = kid
        parameters: KeyParameters = {"kid": kid, "use": "sig"}
        self._key = (
            RSAKey.import_key(private_key_pem, parameters=parameters)
            if private_key_pem
            else RSAKey.generate_key(2048, parameters=parameters)
        )

    def sign(self, claims: dict[str, Any]) -> str:
        """A compact JWS of ``claims``."""
        header = {"alg": SIGNING_ALGORITHM, "kid": self.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self._key, algorithms=[SIGNING_ALGORITHM])

    def verify(self, token: str) -> dict[str, Any] | None:
        """The claims of a token this signer issued, or ``None`` if forged or unreadable.

        Expiry is not checked here: callers compare ``exp`` with the sandbox clock, which tests
        can move.
        """
        try:
            decoded = jwt.decode(token, self._key, algorithms=[SIGNING_ALGORITHM])
        except (JoseError, ValueError):
            return None
        return dict(decoded.claims)

    def private_pem(self) -> str:
        """The private key as PEM, to start another sandbox that honours the same tokens."""
        pem = self._key.as_pem(private=True)
        return pem.decode("ascii") if isinstance(pem, bytes) else str(pem)

    def jwks(self) -> dict[str, Any]:
        """The public JWKS document."""
        document: dict[str, Any] = dict(KeySet([self._key]).as_dict(private=False))
        return document
