"""The sandbox's shared resources: the clinicians, places, organisations and medications a record
references.

They belong to the tenant, not to one patient: many of a patient's resources name the same
Practitioner, and so do other patients' resources. Each tenant holds the same small catalog
(generated from fixed data, so it never depends on the seed), served by read and, where the
tenant's policy says so, by ``_id`` search. Generated records also reference ids the tenant does
not hold (a retired clinician: the read answers 404) and one resource on another server (a state
immunization registry), as real records do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The shared types a patient's record references, in the order syncsvc reads them.
REFERENCED_TYPES: tuple[str, ...] = (
    "Practitioner",
    "PractitionerRole",
    "Organization",
    "Location",
    "Medication",
)

#: A clinician some generated encounters name who is no longer in the tenant's directory.
MISSING_PRACTITIONER = "pr-retired-0001"
#: An absolute reference to a resource on another server (never read with the tenant's token).
OUTSIDE_ORGANIZATION = "https://registry.example.org/fhir/Organization/state-immunization-registry"

_NPI = "http://hl7.org/fhir/sid/us-npi"
_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"

#: (id, family, given, prefix/suffix, NPI) of the tenant's clinicians. The first four are the
#: performers generated Observations have always named.
_PRACTITIONERS: tuple[tuple[str, str, str, str, str], ...] = (
    ("pr-4821", "Whitfield", "Dana", "MD", "1487650231"),
    ("pr-1177", "Haddad", "Omar", "RN", "1932105884"),
    ("pr-3090", "Ferreira", "Lucia", "MD", "1275539902"),
    ("pr-6634", "Laboratory Services", "Central", "", "1053398741"),
    ("pr-2205", "Okafor", "Chidi", "DO", "1669472210"),
)
#: (id, name, type code) of the tenant's organisations.
_ORGANIZATIONS: tuple[tuple[str, str, str], ...] = (
    ("org-main", "Sandbox Health System", "prov"),
    ("org-lab", "Central Laboratory", "prov"),
)
#: (id, name, managing organisation) of the tenant's locations.
_LOCATIONS: tuple[tuple[str, str, str], ...] = (
    ("loc-clinic", "Main Street Clinic", "org-main"),
    ("loc-er", "Emergency Department", "org-main"),
    ("loc-lab", "Central Laboratory Draw Station", "org-lab"),
)
#: (id, practitioner, organisation, location, role) of the tenant's practitioner roles.
_ROLES: tuple[tuple[str, str, str, str, str], ...] = (
    ("role-4821-clinic", "pr-4821", "org-main", "loc-clinic", "Primary care physician"),
    ("role-3090-er", "pr-3090", "org-main", "loc-er", "Emergency physician"),
    ("role-2205-clinic", "pr-2205", "org-main", "loc-clinic", "Family medicine physician"),
)


def medication_id(rxnorm_code: str) -> str:
    """The id of the Medication resource standing for an RxNorm code."""
    return f"med-{rxnorm_code}"


def practitioner_id(index: int) -> str:
    """A clinician of the catalog, picked by a generated resource's index (no random draw)."""
    return _PRACTITIONERS[index % len(_PRACTITIONERS)][0]


def role_id(index: int) -> str:
    """A practitioner role of the catalog, picked by index."""
    return _ROLES[index % len(_ROLES)][0]


def location_id(index: int) -> str:
    """A location of the catalog, picked by index."""
    return _LOCATIONS[index % len(_LOCATIONS)][0]


def _practitioner(pid: str, family: str, given: str, suffix: str, npi: str) -> dict[str, Any]:
    name: dict[str, Any] = {"use": "official", "family": family, "given": [given]}
    if suffix:
        name["suffix"] = [suffix]
    return {
        "resourceType": "Practitioner",
        "id": pid,
        "identifier": [{"system": _NPI, "value": npi}],
        "active": True,
        "name": [name],
    }


def _organization(oid: str, name: str, kind: str) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": oid,
        "active": True,
        "type": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/organization-type",
                        "code": kind,
                        "display": "Healthcare Provider",
                    }
                ]
            }
        ],
        "name": name,
    }


def _location(lid: str, name: str, organization: str) -> dict[str, Any]:
    return {
        "resourceType": "Location",
        "id": lid,
        "status": "active",
        "name": name,
        "managingOrganization": {"reference": f"Organization/{organization}"},
    }


def _role(
    rid: str, practitioner: str, organization: str, location: str, role: str
) -> dict[str, Any]:
    return {
        "resourceType": "PractitionerRole",
        "id": rid,
        "active": True,
        "practitioner": {"reference": f"Practitioner/{practitioner}"},
        "organization": {"reference": f"Organization/{organization}"},
        "location": [{"reference": f"Location/{location}"}],
        "code": [{"text": role}],
    }


def _medication(code: str, display: str) -> dict[str, Any]:
    return {
        "resourceType": "Medication",
        "id": medication_id(code),
        "code": {
            "coding": [{"system": _RXNORM, "code": code, "display": display}],
            "text": display,
        },
        "status": "active",
    }


def catalog(medications: Sequence[tuple[str, str]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Every shared resource of a tenant by (type, id); ``medications`` are (RxNorm, display)."""
    resources: list[dict[str, Any]] = [
        *(_practitioner(*row) for row in _PRACTITIONERS),
        *(_organization(*row) for row in _ORGANIZATIONS),
        *(_location(*row) for row in _LOCATIONS),
        *(_role(*row) for row in _ROLES),
        *(_medication(code, display) for code, display in medications),
    ]
    return {(r["resourceType"], r["id"]): r for r in resources}
