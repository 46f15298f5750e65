"""Connect links: signed, expiring, single-use invitations for one host-app user to connect.

The link token is HMAC-signed (it cannot be forged or altered) and names the user and optionally
the tenant. Its id is recorded in the database, which is what makes it single use: opening the
link only shows the page (mail scanners prefetch links), pressing "Connect" consumes it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from urllib.parse import urlencode

from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.connect.signing import ConnectLinkClaims, Signer
from syncsvc.db import launch_repo, repo
from syncsvc.errors import BadRequest
from syncsvc.settings import Settings

MAX_USER_ID_LENGTH = 255
#: A link may be made shorter-lived than the default, never longer than a week.
MAX_LINK_TTL_SECONDS = 7 * 86_400
#: A search hint (a provider's name or ZIP code) is at most this long.
MAX_HINT_LENGTH = 100


@dataclass(frozen=True)
class IssuedLink:
    """A connect link as handed to the host application."""

    url: str
    link_id: str
    user_id: str
    tenant: str | None
    expires_at: dt.datetime


def has_control_characters(text: str) -> bool:
    """Whether ``text`` holds a C0 control character or DEL (NUL included).

    PostgreSQL refuses NUL in text outright (a 500 there, silently stored on SQLite), and the
    others make an id that prints, logs and compares differently from what was meant.
    """
    return any(ord(c) < 0x20 or ord(c) == 0x7F for c in text)


def validate_user_id(user_id: object) -> str:
    """The host app's user id, or BadRequest saying what is wrong with it."""
    if not isinstance(user_id, str) or not user_id.strip():
        raise BadRequest("user_id must be a non-empty string.", reason="invalid_user_id")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise BadRequest(
            f"user_id must be at most {MAX_USER_ID_LENGTH} characters.", reason="invalid_user_id"
        )
    if has_control_characters(user_id):
        raise BadRequest("user_id must not contain control characters.", reason="invalid_user_id")
    return user_id


async def issue_connect_link(
    session: AsyncSession,
    signer: Signer,
    settings: Settings,
    *,
    user_id: str,
    tenant_name: str | None,
    now: dt.datetime,
    ttl_seconds: int | None = None,
    hint: str | None = None,
) -> IssuedLink:
    """Create a connect link for ``user_id`` (to ``tenant_name``, or to a provider they pick).

    ``hint``: what the provider search starts with (a name or ZIP code); it rides in the URL as
    the search query, unsigned, since it only prefills the search.
    """
    user_id = validate_user_id(user_id)
    ttl = settings.connect_link_ttl_seconds if ttl_seconds is None else ttl_seconds
    if not 0 < ttl <= MAX_LINK_TTL_SECONDS:
        raise BadRequest(
            f"ttl_seconds must be between 1 and {MAX_LINK_TTL_SECONDS}.", reason="invalid_ttl"
        )
    tenant_id = None
    if tenant_name is not None:
        tenant = await repo.get_tenant_by_name(session, tenant_name)
        if tenant is None:
            raise BadRequest(f"There is no tenant named '{tenant_name}'.", reason="unknown_tenant")
        tenant_id = tenant.id
    if hint is not None and (
        not isinstance(hint, str) or len(hint) > MAX_HINT_LENGTH or has_control_characters(hint)
    ):
        raise BadRequest(
            f"hint must be a string of at most {MAX_HINT_LENGTH} characters.",
            reason="invalid_hint",
        )
    token, link_id = signer.connect_link(user_id, tenant_name)
    link = await launch_repo.create_connect_link(
        session, link_id=link_id, user_id=user_id, tenant_id=tenant_id, now=now, ttl_seconds=ttl
    )
    return IssuedLink(
        url=f"{settings.public_url}/connect?{urlencode({'link': token, **hint_query(hint)})}",
        link_id=link_id,
        user_id=user_id,
        tenant=tenant_name,
        expires_at=link.expires_at,
    )


def hint_query(hint: str | None) -> dict[str, str]:
    """The query parameters that prefill the provider search with ``hint``."""
    return {"q": hint.strip()} if hint and hint.strip() else {}


def _claims(signer: Signer, token: str) -> ConnectLinkClaims:
    # The signature's age bound is the longest TTL; the row holds the link's own expiry.
    return signer.read_connect_link(token, max_age=MAX_LINK_TTL_SECONDS)


async def peek_connect_link(
    session: AsyncSession, signer: Signer, token: str, *, now: dt.datetime
) -> ConnectLinkClaims:
    """The claims of a link that is still usable, without using it; else LaunchError."""
    claims = _claims(signer, token)
    link = await launch_repo.get_connect_link(session, claims.link_id)
    launch_repo.check_connect_link(link, now)
    return claims


async def use_connect_link(
    session: AsyncSession, signer: Signer, token: str, *, now: dt.datetime
) -> ConnectLinkClaims:
    """Consume a link, exactly once; LaunchError if it is forged, unknown, used or expired."""
    claims = _claims(signer, token)
    await launch_repo.consume_connect_link(session, claims.link_id, now=now)
    return claims
