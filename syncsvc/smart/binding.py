"""Whether a token response belongs to the binding it arrived for: the tenant and the patient.

Cerner names the tenant in the token response (``tenant``) and inside a readable access token
(``tenant``, or ``tnt`` in its own claim set); every SMART server names the patient. A grant
issued for another tenant (a production registration used against a sandbox tenant, the wrong
tenant's token endpoint) or for another patient must never be used: the launch and every refresh
check both before any FHIR request. An opaque token names nothing, and then only the FHIR
server's ``tenant-mismatch`` 401 tells.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from .oauth import TokenResponse, jwt_payload

#: Claims naming the tenant inside a readable access token (generic, and Cerner's own claim set).
CERNER_CLAIMS = "urn:cerner:authorization:claims:version:1"


def names_tenant(fhir_base: str, value: str) -> bool:
    """Whether a tenant id from the EHR is one of the base's path segments (Cerner: /r4/{id})."""
    segments = [s.lower() for s in urlsplit(fhir_base).path.split("/") if s]
    return value.lower() in segments


def foreign_tenant(fhir_base: str, tokens: TokenResponse) -> str | None:
    """The other tenant id a token response was issued for, or None if nothing says so."""
    if tokens.tenant and not names_tenant(fhir_base, tokens.tenant):
        return tokens.tenant
    claims = jwt_payload(tokens.access_token)
    cerner = claims.get(CERNER_CLAIMS)
    for value in (claims.get("tenant"), cerner.get("tnt") if isinstance(cerner, dict) else None):
        if isinstance(value, str) and value and not names_tenant(fhir_base, value):
            return value
    return None


def foreign_patient(patient_id: str, tokens: TokenResponse) -> str | None:
    """The other patient a refresh response names, or None (not named, or the bound one)."""
    if tokens.patient and tokens.patient != patient_id:
        return tokens.patient
    return None
