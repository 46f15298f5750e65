"""HTML pages of the sandbox's authorization server: login + consent, errors, error instances.

Small pages rendered with :func:`html.escape`; every value that came from a request is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

from .config import PatientSpec, TenantConfig

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:40rem;margin:2rem auto;padding:0 1rem;"
    "color:#222;line-height:1.4}"
    "h1{font-size:1.6rem}fieldset{margin:1rem 0;border:1px solid #ccc;border-radius:6px}"
    "label{display:block;margin:.3rem 0}input[type=password]{margin-left:.5rem;padding:.3rem}"
    "small{display:block;color:#555;margin-top:.4rem}"
    "button{margin-right:.5rem;padding:.5rem 1.2rem;border-radius:4px;border:1px solid #888;"
    "background:#f4f4f4;font-size:1rem;cursor:pointer}"
    "button[value=approve]{background:#1a5fb4;border-color:#1a5fb4;color:#fff}"
    ".error{color:#a00;font-weight:600}"
)


def _page(title: str, body: str) -> str:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}</body></html>"
    )


def login_page(
    tenant: TenantConfig,
    client_id: str,
    scopes: list[str],
    params: Mapping[str, str],
    *,
    action: str,
    message: str | None = None,
) -> str:
    """The login + consent form; ``params`` (the authorize request) ride along as hidden fields."""
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in params.items()
    )
    patients = "".join(_patient_option(p, i == 0) for i, p in enumerate(tenant.patients))
    scope_items = "".join(f"<li><code>{escape(s)}</code></li>" for s in scopes) or "<li>none</li>"
    error = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    body = (
        f"<h1>{escape(tenant.name)}</h1>"
        f"<p>The application <strong>{escape(client_id)}</strong> asks to access your record.</p>"
        f"{error}"
        f'<form method="post" action="{escape(action)}">{hidden}'
        f"<fieldset><legend>Sign in as a test patient</legend>{patients}"
        '<label>Password <input type="password" name="password" autocomplete="off"></label>'
        "<small>Sandbox test patients; the password is in the sandbox configuration "
        "(default <code>portal</code>).</small></fieldset>"
        f"<fieldset><legend>The application requests</legend><ul>{scope_items}</ul></fieldset>"
        '<button type="submit" name="decision" value="approve">Approve</button>'
        '<button type="submit" name="decision" value="deny">Deny</button>'
        "</form>"
    )
    return _page(f"Sign in - {tenant.name}", body)


def _patient_option(patient: PatientSpec, checked: bool) -> str:
    login = patient.username or patient.id
    return (
        f'<label><input type="radio" name="username" value="{escape(login)}"'
        f"{' checked' if checked else ''}> {escape(patient.given)} {escape(patient.family)}"
        f" (login <code>{escape(login)}</code>)</label>"
    )


def error_page(title: str, detail: str) -> str:
    """An authorization error that must not be redirected (unknown client, bad redirect_uri)."""
    return _page(title, f"<h1>{escape(title)}</h1><p>{escape(detail)}</p>")


def error_instance_page(urn: str, explanation: str, query: Mapping[str, str]) -> str:
    """The page an ``error_uri`` points at: the URN, what it means, and the request's context."""
    context = "".join(
        f"<dt>{escape(k)}</dt><dd>{escape(v)}</dd>"
        for k, v in query.items()
        if k in ("persona", "client", "tenant")
    )
    body = (
        f"<h1>Authorization error</h1><p><code>{escape(urn)}</code></p>"
        f"<p>{escape(explanation)}</p><dl>{context}</dl>"
    )
    return _page("Authorization error", body)
