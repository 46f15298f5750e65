"""The compartment guard, and the canonical bytes and hash syncsvc stores for each resource.

Every resource stored for a connection must belong to that connection's patient: the Patient
itself, or a resource whose patient reference (``subject``, ``patient``, or the type's own
compartment parameter) names that patient. An EHR that slips another patient's entry into a
searchset (it happens with merged records and buggy paging) gets it rejected and counted here,
never stored.
"""

from __future__ import annotations

import hashlib
from typing import Any, NamedTuple

import orjson

from syncsvc.db.columns import MAX_ID_LENGTH
from syncsvc.fhir.urls import is_under_base

#: Where each type names its patient, in the order to look (FHIR R4 patient compartment).
_PATIENT_FIELDS: dict[str, tuple[str, ...]] = {
    "Observation": ("subject",),
    "Condition": ("subject",),
    "MedicationRequest": ("subject",),
    "AllergyIntolerance": ("patient",),
    "Immunization": ("patient",),
    "Encounter": ("subject",),
    "Procedure": ("subject",),
    "DiagnosticReport": ("subject",),
    "DocumentReference": ("subject",),
    "CarePlan": ("subject",),
    "Goal": ("subject",),
    "CareTeam": ("subject",),
    # The beneficiary only: a policy holder or subscriber may be someone else (a parent).
    "Coverage": ("beneficiary",),
    "Device": ("patient",),
    "MedicationDispense": ("subject",),
    "MedicationAdministration": ("subject",),
    # A list of targets; the compartment's is the one that is a Patient.
    "Provenance": ("target",),
    "QuestionnaireResponse": ("subject",),
    "RelatedPerson": ("patient",),
    "ServiceRequest": ("subject",),
    "Specimen": ("subject",),
    "ImagingStudy": ("subject",),
}
_DEFAULT_FIELDS = ("subject", "patient")
#: References of a list-valued patient element looked at (Provenance targets one resource or a
#: few; a list of thousands is read no further and, naming no patient early, is refused).
_MAX_LISTED = 100


#: Stands for a patient reference on another server: never equal to a patient id.
FOREIGN = "\x00foreign"


def _reference_ids(value: Any, base: str | None) -> list[str]:
    """Patient ids named by a Reference (relative ``Patient/x`` or absolute ``.../Patient/x``).

    An absolute reference counts only under ``base`` (when given): ``Patient/x`` on another
    server is another patient, whatever its id.
    """
    if not isinstance(value, dict):
        return []
    reference = value.get("reference")
    if not isinstance(reference, str):
        return []
    path = reference.split("?", 1)[0].split("/_history/", 1)[0].rstrip("/")
    parts = path.split("/")
    if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
        absolute = "://" in reference
        if absolute and base is not None and not is_under_base(path, base):
            return [FOREIGN]
        return [parts[-1]]
    return []


def belongs_to_patient(resource: dict[str, Any], patient_id: str, base: str | None = None) -> bool:
    """Whether ``resource`` is in the patient compartment of ``patient_id`` (at ``base``)."""
    resource_type = resource.get("resourceType")
    if resource_type == "Patient":
        return resource.get("id") == patient_id
    if not isinstance(resource_type, str):
        return False
    # Nearly every reference is written exactly so; it needs no parsing (this runs per resource).
    relative = f"Patient/{patient_id}"
    found = False
    for name in _PATIENT_FIELDS.get(resource_type, _DEFAULT_FIELDS):
        value = resource.get(name)
        if value is None:
            continue
        if isinstance(value, dict) and value.get("reference") == relative:
            found = True
            continue
        if isinstance(value, list):
            named = [pid for item in value[:_MAX_LISTED] for pid in _reference_ids(item, base)]
        else:
            named = _reference_ids(value, base)
        # Every patient reference must be this patient: one foreign reference is enough to refuse.
        if any(pid != patient_id for pid in named):
            return False
        found = found or bool(named)
    return found


class Canonical(NamedTuple):
    """A resource as stored: canonical JSON bytes and their SHA-256.

    A named tuple, not a frozen dataclass: one is made per stored resource, and a frozen
    dataclass's ``__init__`` costs several times as much.
    """

    body: bytes
    content_hash: str


def canonical(resource: dict[str, Any]) -> Canonical:
    """Canonical bytes (sorted keys) and hash, so an unchanged resource compares equal."""
    body = orjson.dumps(resource, option=orjson.OPT_SORT_KEYS)
    return Canonical(body, hashlib.sha256(body).hexdigest())


def resource_identity(resource: dict[str, Any]) -> tuple[str, str] | None:
    """``(type, id)`` of a resource, or ``None`` when either is missing or malformed."""
    resource_type, resource_id = resource.get("resourceType"), resource.get("id")
    if not isinstance(resource_type, str) or not isinstance(resource_id, str) or not resource_id:
        return None
    if len(resource_id) > MAX_ID_LENGTH:
        return None
    return resource_type, resource_id
