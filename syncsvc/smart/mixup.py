"""Defences against OAuth mix-up (RFC 9207 and the OAuth security BCP, RFC 9700 §4.4).

A hostile tenant's authorize endpoint can forward the patient's browser to an honest EHR with
syncsvc's ``state``, ``code_challenge`` and ``client_id``; the honest EHR then answers at
syncsvc's callback, and a client that looks only at ``state`` would send the honest code and
PKCE verifier to the hostile tenant's token endpoint. Two checks stop that:

* **A redirect URI per tenant** (``/callback/{tenant}``): an answer must arrive at the callback
  of the tenant its launch attempt was started for. The honest EHR only redirects to URIs
  registered with it, so its answer arrives at the honest tenant's callback, not the hostile one's.
* **The ``iss`` response parameter**: when an answer carries ``iss`` it must be the issuer of the
  attempt's tenant; where the tenant's discovery advertises
  ``authorization_response_iss_parameter_supported`` an answer without ``iss`` is refused.

The shared ``/callback`` of earlier releases still works for tenants whose stored redirect URI
is that shared one (their EHR registration holds it); only ``iss`` protects those.
"""

from __future__ import annotations

from urllib.parse import quote, unquote, urlsplit

from syncsvc.errors import ConfigError, LaunchError

#: The shared callback path of earlier releases; per-tenant callbacks live below it.
CALLBACK_PATH = "/callback"


def tenant_callback_uri(public_url: str, tenant_name: str) -> str:
    """The redirect URI syncsvc registers for a tenant: ``{public_url}/callback/{name}``."""
    return f"{public_url.rstrip('/')}{CALLBACK_PATH}/{quote(tenant_name, safe='')}"


def callback_tenant_of(redirect_uri: str) -> str | None:
    """The tenant name a per-tenant redirect URI names, or None for the shared ``/callback``.

    Only the last two path segments count, so a public URL with a path prefix behind a proxy
    (``https://host/sync/callback/clinic``) still names ``clinic``.
    """
    segments = urlsplit(redirect_uri).path.rstrip("/").split("/")
    if len(segments) >= 2 and segments[-2] == CALLBACK_PATH.strip("/"):
        return unquote(segments[-1])
    return None


def redirect_uri_from_template(template: str, tenant_name: str) -> str:
    """The redirect URI a template with ``{name}`` gives a tenant (``tenants import``).

    ConfigError unless the result is that tenant's own callback (``.../callback/{name}``): a
    URI shared by many imported tenants would leave only ``iss`` between them and the mix-up.
    """
    if "{name}" not in template:
        raise ConfigError(
            f"The redirect URI {template} would be shared by every imported tenant, leaving "
            "only the iss parameter against the OAuth mix-up; give a template with {name} "
            "(e.g. https://sync.example/callback/{name}) or leave it out."
        )
    uri = template.replace("{name}", quote(tenant_name, safe=""))
    if callback_tenant_of(uri) != tenant_name:
        raise ConfigError(
            f"The redirect URI template {template} must end in /callback/{{name}}, so that each "
            "tenant gets its own callback."
        )
    return uri


def check_callback_route(*, redirect_uri: str, arrived_for: str | None, display_name: str) -> None:
    """LaunchError unless the answer arrived at the callback the attempt's tenant uses.

    ``arrived_for`` is the tenant segment of the callback path the answer came to (None for the
    shared ``/callback``); ``redirect_uri`` is the attempt's tenant's registered redirect URI.
    """
    if callback_tenant_of(redirect_uri) == arrived_for:
        return
    raise LaunchError(
        f"The answer came back through another provider's sign-in than {display_name}, the one "
        "you chose, so it was not used. Nothing was connected. Please start again; if it keeps "
        "happening, tell the service operator.",
        reason="callback_mismatch",
    )


def check_response_issuer(
    *,
    iss: str | None,
    issuer: str | None,
    iss_required: bool,
    own_callback: bool,
    display_name: str,
) -> None:
    """LaunchError unless the answer's ``iss`` is the tenant's issuer (RFC 9207 §2.4).

    ``issuer`` is the issuer identifier the tenant's discovery named (None when it named none,
    as a CapabilityStatement does); ``iss_required`` is whether the discovery advertised the
    parameter. An ``iss`` that cannot be compared is let through only when the answer came to the
    tenant's own callback (``own_callback``), which already shows where it came from; on the
    shared callback it is refused, as nothing else tells the servers apart there.
    """
    if iss is None:
        if iss_required:
            raise LaunchError(
                f"{display_name} says it names itself in every sign-in answer, but this answer "
                "did not, so it was not used. Nothing was connected. Please start again.",
                reason="iss_missing",
            )
        return
    if iss == issuer or (issuer is None and own_callback):
        return
    raise LaunchError(
        f"The answer came from another sign-in service than {display_name}, the provider you "
        "chose, so it was not used. Nothing was connected. Please start again; if it keeps "
        "happening, tell the service operator.",
        reason="iss_mismatch",
    )
