"""Which scopes the sandbox grants: requested ∩ registered ∩ tenant policy.

Real EHRs rarely grant what was asked. Each switch of :class:`TenantPolicy` reproduces one observed
behaviour: Cerner silently drops wildcard scopes, Epic withholds ``offline_access`` from public
clients and hides it from the returned ``scope`` while still issuing a refresh token, production
tenants trim grants to a fixed list, and a registration change that has not reached a tenant drops a
scope without a word.
"""

from __future__ import annotations

from .config import ClientRegistration, PatientSpec, TenantPolicy
from .scopes import ResourceScope, parse

OFFLINE_ACCESS = "offline_access"
ONLINE_ACCESS = "online_access"
#: Non-resource scopes the sandbox understands; anything else unknown is dropped.
KNOWN_SCOPES: frozenset[str] = frozenset(
    {
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        OFFLINE_ACCESS,
        ONLINE_ACCESS,
    }
)


def split(scope: str | None) -> list[str]:
    """The scopes of a space-separated scope string, in order, without duplicates."""
    return list(dict.fromkeys((scope or "").split()))


def grant_scopes(
    requested: list[str],
    client: ClientRegistration,
    policy: TenantPolicy,
    patient: PatientSpec | None = None,
) -> list[str]:
    """The scopes granted for ``requested``, in request order (``patient``: whose consent)."""
    allowed = [
        scope
        for scope in dict.fromkeys(requested)
        if _known(scope)
        and _registered(scope, client)
        and _allowed_by_policy(scope, policy)
        and not (
            scope == OFFLINE_ACCESS and policy.drop_offline_for_public and client.auth == "public"
        )
    ]
    categories = policy.granted_categories | (patient.granted_categories if patient else {})
    granted = (narrowed for scope in allowed for narrowed in _granular(scope, categories))
    return list(dict.fromkeys(granted))


_V2_LETTERS = {"read": "rs", "write": "cud", "*": "cruds"}


def _granular(scope: str, categories: dict[str, list[str]]) -> list[str]:
    """``scope`` narrowed to the ``categories`` granted of its type (itself if none are set)."""
    parsed = parse(scope)
    if parsed is None or parsed.is_wildcard:
        return [scope]
    allowed = categories.get(parsed.resource_type)
    if allowed is None:
        return [scope]
    asked = parsed.categories
    kept = [c for c in allowed if asked is None or c in asked or c.rpartition("|")[2] in asked]
    letters = _V2_LETTERS.get(parsed.permissions, parsed.permissions)
    head = f"{parsed.context}/{parsed.resource_type}.{letters}"
    return [f"{head}?category={category}" for category in kept]


def issues_refresh_token(granted: list[str]) -> bool:
    """Whether a grant of ``granted`` comes with a refresh token."""
    return OFFLINE_ACCESS in granted or ONLINE_ACCESS in granted


def returned_scope(granted: list[str], policy: TenantPolicy) -> str:
    """The ``scope`` string of a token response (Epic leaves ``offline_access`` out)."""
    shown = [
        s for s in granted if not (policy.hide_offline_access_in_scope and s == OFFLINE_ACCESS)
    ]
    return " ".join(shown)


def needs_patient_context(requested: list[str]) -> bool:
    """Whether ``requested`` asks for patient-compartment data."""
    return any((parsed := parse(s)) is not None and parsed.context == "patient" for s in requested)


def _known(scope: str) -> bool:
    parsed = parse(scope)
    if parsed is None:
        return scope in KNOWN_SCOPES
    # A patient-facing server has no system-level access to give, and of query qualifiers it
    # understands ``category`` only.
    return parsed.context in ("patient", "user") and not parsed.opaque


def _registered(scope: str, client: ClientRegistration) -> bool:
    if client.scopes is None or scope in client.scopes:
        return True
    wanted = parse(scope)
    if wanted is None:
        return False
    return any(_covered_by(wanted, parse(r)) for r in client.scopes)


def _covered_by(wanted: ResourceScope, registered: ResourceScope | None) -> bool:
    """Whether a registered (possibly wildcard) resource scope includes ``wanted``."""
    if registered is None or registered.context != wanted.context:
        return False
    if registered.resource_type not in ("*", wanted.resource_type):
        return False
    if registered.version != wanted.version:
        return False
    if registered.version == 1:
        return registered.permissions in ("*", wanted.permissions)
    return set(wanted.permissions) <= set(registered.permissions)


def _allowed_by_policy(scope: str, policy: TenantPolicy) -> bool:
    if scope in policy.missing_scopes:
        return False
    if policy.trim_to is not None and scope not in policy.trim_to:
        return False
    parsed = parse(scope)
    if parsed is None:
        return True
    if parsed.is_wildcard and not policy.wildcards_supported:
        return False
    if policy.scope_syntax == "v1":
        return parsed.version == 1
    if policy.scope_syntax == "v2":
        return parsed.version == 2
    return True
