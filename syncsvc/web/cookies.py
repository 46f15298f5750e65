"""The two cookies of the patient pages.

``syncsvc_browser`` binds a launch to the browser that started it: its value is random and only
its hash is stored with the launch attempt, so a callback URL replayed from another browser (or
a leaked state) does not complete anything. ``syncsvc_session`` is a signed, expiring note of the
host-app user a connect link was issued to, so a patient can retry or come back to their status
page without a new link. Both are ``HttpOnly`` and ``SameSite=Lax`` (sent on the EHR's top-level
redirect back, not on cross-site form posts), and ``Secure`` whenever the public URL is https.
``syncsvc_form`` is the double-submit token of the forms that start a launch.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web

from syncsvc.errors import LaunchError
from syncsvc.web.keys import SETTINGS, SIGNER

BROWSER_COOKIE = "syncsvc_browser"
SESSION_COOKIE = "syncsvc_session"
SESSION_SECONDS = 12 * 3600
MAX_COOKIE_LENGTH = 512


def _set(
    response: web.StreamResponse,
    request: web.Request,
    name: str,
    value: str,
    max_age: int | None,
    *,
    samesite: str = "Lax",
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path="/",
        httponly=True,
        samesite=samesite,
        secure=request.app[SETTINGS].public_is_https,
    )


def browser_binding(request: web.Request) -> str | None:
    """The browser-binding value this request carries, if any."""
    value = request.cookies.get(BROWSER_COOKIE)
    return value if value and len(value) <= MAX_COOKIE_LENGTH else None


def new_browser_binding() -> str:
    """A fresh random browser-binding value (256 bits)."""
    return secrets.token_urlsafe(32)


def set_browser_binding(request: web.Request, response: web.StreamResponse, value: str) -> None:
    """Set (or renew) the browser-binding cookie."""
    _set(response, request, BROWSER_COOKIE, value, None)


@dataclass(frozen=True)
class PatientSession:
    """A valid patient session: the host-app user, and the one tenant its link allowed."""

    user_id: str
    #: The connect link's tenant restriction, kept for the whole session (None: any tenant).
    tenant: str | None


def patient_session(request: web.Request) -> PatientSession | None:
    """The request's valid patient session, or None."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > MAX_COOKIE_LENGTH:
        return None
    try:
        payload = request.app[SIGNER].verify("patient-session", token, max_age=SESSION_SECONDS)
    except LaunchError:
        return None
    user, tenant = payload.get("uid"), payload.get("tnt")
    if not isinstance(user, str) or not user:
        return None
    return PatientSession(user, tenant if isinstance(tenant, str) and tenant else None)


def session_user(request: web.Request) -> str | None:
    """The host-app user of a valid patient session, or None."""
    session = patient_session(request)
    return session.user_id if session is not None else None


def start_session(
    request: web.Request, response: web.StreamResponse, user_id: str, tenant: str | None
) -> None:
    """Remember ``user_id`` (and the link's tenant restriction) in a signed session cookie."""
    token = request.app[SIGNER].sign("patient-session", {"uid": user_id, "tnt": tenant})
    _set(response, request, SESSION_COOKIE, token, SESSION_SECONDS)


FORM_COOKIE = "syncsvc_form"
FORM_FIELD = "csrf"


def form_token(request: web.Request) -> str:
    """This browser's form token: the existing one, or a fresh one (set by the page's answer).

    Forms that start a launch carry it in a hidden field and the browser holds it in a
    ``SameSite=Strict`` cookie; another site can neither read the page's field nor plant the
    cookie, so it cannot make a browser start a launch (for an account of its choosing) here.
    """
    value = request.cookies.get(FORM_COOKIE)
    if value and 20 <= len(value) <= MAX_COOKIE_LENGTH:
        return value
    return secrets.token_urlsafe(24)


def render_with_form_token(
    template: str, request: web.Request, context: Mapping[str, object]
) -> web.Response:
    """Render a page whose forms start a launch: ``form_field``/``form_token`` for its hidden
    field, and the token's cookie set on the answer."""
    token = form_token(request)
    response = aiohttp_jinja2.render_template(
        template, request, {**context, "form_field": FORM_FIELD, "form_token": token}
    )
    _set(response, request, FORM_COOKIE, token, SESSION_SECONDS, samesite="Strict")
    return response


def form_is_ours(request: web.Request, presented: object) -> bool:
    """Whether a POST came from one of our pages: same origin, and the form token matches."""
    origin = request.headers.get("Origin")
    if origin and origin != "null" and origin != _origin_of(request.app[SETTINGS].public_url):
        return False
    if request.headers.get("Sec-Fetch-Site") == "cross-site":
        return False
    cookie = request.cookies.get(FORM_COOKIE)
    return (
        isinstance(presented, str)
        and bool(cookie)
        and hmac.compare_digest(presented.encode(), (cookie or "").encode())
    )


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"
