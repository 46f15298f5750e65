"""Access tokens for exercising the resource server on its own, without the authorization flow.

The tokens carry the claims the sandbox's authorization server issues and a grant recorded in the
sandbox's state, so the resource server cannot tell them from issued ones.
"""

from __future__ import annotations

import uuid

from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sandbox.state import Grant


def mint_access_token(
    sandbox: RunningSandbox,
    tenant_id: str,
    patient_id: str,
    scopes: list[str] | str,
    *,
    expires_in: int = 570,
    host: str | None = None,
    client_id: str = "syncsvc-public",
) -> str:
    """A signed access token for ``patient_id`` at ``tenant_id``, backed by a new grant."""
    tenant = sandbox.tenant(tenant_id)
    scope_list = scopes.split() if isinstance(scopes, str) else list(scopes)
    now = sandbox.state.now()
    gid = str(uuid.uuid4())
    sandbox.state.grants[gid] = Grant(
        grant_id=gid,
        tenant_id=tenant_id,
        client_id=client_id,
        patient_id=patient_id,
        scopes=scope_list,
        created_at=now,
        last_used_at=now,
    )
    claims = {
        "iss": sandbox.urls(tenant_id).issuer,
        "aud": sandbox.urls(tenant_id).fhir_base,
        "sub": patient_id,
        "exp": int(now) + expires_in,
        "iat": int(now),
        "jti": str(uuid.uuid4()),
        "tenant": tenant_id,
        "host": host if host is not None else tenant.host,
        "scope": " ".join(scope_list),
        "patient": patient_id,
        "client_id": client_id,
        "gid": gid,
    }
    return sandbox.state.signer.sign(claims)


def claims_of(sandbox: RunningSandbox, token: str) -> dict[str, object]:
    """The claims of a token the sandbox signed."""
    claims = sandbox.state.signer.verify(token)
    assert claims is not None
    return claims


def bearer(token: str) -> dict[str, str]:
    """The Authorization header for ``token``."""
    return {"Authorization": f"Bearer {token}"}
