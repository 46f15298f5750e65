"""How syncsvc authenticates itself to a token endpoint, per client registration.

Public clients send only ``client_id`` (PKCE protects the code); confidential clients use
``client_secret_basic``/``_post`` or ``private_key_jwt`` (SMART "asymmetric" authentication,
RS384 or ES384 with a five-minute assertion, as SMART requires).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote

from authlib.oauth2.rfc7523 import private_key_jwt_sign
from joserfc.errors import InvalidKeyTypeError
from joserfc.jwk import ECKey, KeyParameters, KeySet, RSAKey

AuthMethod = Literal["public", "client_secret_basic", "client_secret_post", "private_key_jwt"]
AUTH_METHODS: tuple[AuthMethod, ...] = (
    "public",
    "client_secret_basic",
    "client_secret_post",
    "private_key_jwt",
)
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_SECONDS = 300


@dataclass(frozen=True)
class ClientCredentials:
    """A client registration with its secret material decrypted (never printed)."""

    client_id: str
    method: AuthMethod = "public"
    secret: str | None = field(default=None, repr=False)
    private_key_pem: str | None = field(default=None, repr=False)
    key_id: str | None = None

    def __post_init__(self) -> None:
        if self.method in ("client_secret_basic", "client_secret_post") and not self.secret:
            raise ValueError(f"Client {self.client_id}: {self.method} needs a client secret")
        if self.method == "private_key_jwt" and not self.private_key_pem:
            raise ValueError(f"Client {self.client_id}: private_key_jwt needs a private key")


def _load_private_key(pem: str, kid: str | None) -> RSAKey | ECKey:
    params: KeyParameters | None = {"kid": kid} if kid else None
    try:
        return RSAKey.import_key(pem, parameters=params)
    except (ValueError, InvalidKeyTypeError):
        # joserfc says InvalidKeyTypeError (not a ValueError) for an EC key's PEM.
        return ECKey.import_key(pem, parameters=params)


def signing_algorithm(key: RSAKey | ECKey) -> str:
    """The SMART asymmetric algorithm for a key: RS384 for RSA, ES384 for EC P-384."""
    return "RS384" if isinstance(key, RSAKey) else "ES384"


def apply_client_auth(
    credentials: ClientCredentials, token_endpoint: str, form: dict[str, str]
) -> dict[str, str]:
    """Add client authentication to a token request: updates ``form``, returns extra headers."""
    headers: dict[str, str] = {}
    if credentials.method == "client_secret_basic":
        # RFC 6749 section 2.3.1: form-urlencode id and secret before base64.
        user = quote(credentials.client_id, safe="")
        password = quote(credentials.secret or "", safe="")
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        headers["Authorization"] = f"Basic {encoded}"
    elif credentials.method == "client_secret_post":
        form["client_id"] = credentials.client_id
        form["client_secret"] = credentials.secret or ""
    elif credentials.method == "private_key_jwt":
        key = _load_private_key(credentials.private_key_pem or "", credentials.key_id)
        header: dict[str, Any] = {"kid": key.kid} if key.kid else {}
        assertion = private_key_jwt_sign(
            key,
            credentials.client_id,
            token_endpoint,
            alg=signing_algorithm(key),
            header=header,
            expires_in=ASSERTION_LIFETIME_SECONDS,
        )
        form["client_assertion_type"] = ASSERTION_TYPE
        form["client_assertion"] = assertion if isinstance(assertion, str) else assertion.decode()
    else:
        form["client_id"] = credentials.client_id
    return headers


def generate_private_key(kind: Literal["RSA", "EC"] = "RSA", kid: str | None = None) -> str:
    """A new private key as PEM, for registering a ``private_key_jwt`` client."""
    params: KeyParameters | None = {"kid": kid} if kid else None
    key: RSAKey | ECKey = (
        RSAKey.generate_key(2048, parameters=params)
        if kind == "RSA"
        else ECKey.generate_key("P-384", parameters=params)
    )
    pem = key.as_pem(private=True)
    return pem.decode("ascii") if isinstance(pem, bytes) else str(pem)


def public_jwks(private_keys: list[tuple[str | None, str]]) -> dict[str, Any]:
    """The JWKS (public halves only) for ``(kid, pem)`` pairs, served at /.well-known/jwks.json."""
    keys: list[Any] = [_load_private_key(pem, kid) for kid, pem in private_keys]
    document: dict[str, Any] = dict(KeySet(keys).as_dict(private=False))
    for entry, key in zip(document.get("keys", []), keys, strict=True):
        entry.setdefault("alg", signing_algorithm(key))
        entry.setdefault("use", "sig")
    return document
