"""Synthetic resources of the US Core patient types beyond the everyday twelve.

CareTeam, Coverage, Device, MedicationDispense, MedicationAdministration, Provenance,
QuestionnaireResponse, RelatedPerson, ServiceRequest, Specimen and ImagingStudy, shaped after
their US Core 6.1 profiles (the elements a profile requires are always present). Each generator
draws from the resource's own random stream (:class:`Draw`), so adding a type changes no other
type's data.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any, Protocol

_SNOMED = "http://snomed.info/sct"
_LOINC = "http://loinc.org"
_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
_ROLE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
_DCM = "http://dicom.nema.org/resources/ontology/DCM"

#: How many resources of each type a patient gets when its spec says nothing (fewer than the
#: everyday types: a patient has one or two coverages, a few contacts).
SIZE_RANGES: dict[str, tuple[int, int]] = {
    "CareTeam": (1, 3),
    "Coverage": (1, 2),
    "Device": (1, 4),
    "MedicationDispense": (3, 12),
    "MedicationAdministration": (2, 8),
    "Provenance": (3, 10),
    "QuestionnaireResponse": (1, 5),
    "RelatedPerson": (1, 3),
    "ServiceRequest": (3, 10),
    "Specimen": (2, 8),
    "ImagingStudy": (1, 4),
}
#: The element naming the patient, where it is not ``subject`` (FHIR R4 compartment).
PATIENT_FIELDS: dict[str, str] = {
    "Coverage": "beneficiary",
    "Device": "patient",
    "RelatedPerson": "patient",
    "Provenance": "target",
}
_CLINICIANS = (
    ("pr-4821", "Dana Whitfield, MD"),
    ("pr-1177", "Omar Haddad, RN"),
    ("pr-3090", "Lucia Ferreira, MD"),
)


class Draw(Protocol):
    """What a generator reads: the random stream, the patient and the resource's time and id."""

    rng: random.Random
    patient_id: str
    when: datetime
    rid: str
    index: int

    @property
    def patient_ref(self) -> dict[str, str]: ...

    def pick(self, options: Sequence[Any]) -> Any: ...


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def _clinician(g: Draw) -> dict[str, str]:
    pid, display = _CLINICIANS[g.index % len(_CLINICIANS)]
    return {"reference": f"Practitioner/{pid}", "display": display}


def _care_team(g: Draw) -> dict[str, Any]:
    longitudinal = g.rng.random() < 0.5
    return {
        "status": "active" if g.rng.random() < 0.7 else "inactive",
        "category": [
            _concept(
                "http://hl7.org/fhir/us/core/CodeSystem/careteam-category",
                "longitudinal" if longitudinal else "encounter",
                "Longitudinal Care Team" if longitudinal else "Encounter-focused Care Team",
            )
        ],
        "name": "Primary care team" if longitudinal else "Inpatient care team",
        "subject": g.patient_ref,
        "period": {"start": _iso(g.when)},
        "participant": [
            {
                "role": [_concept(_SNOMED, "446050000", "Primary care physician")],
                "member": _clinician(g),
            },
            {
                "role": [_concept(_SNOMED, "116154003", "Patient")],
                "member": {"reference": f"Patient/{g.patient_id}"},
            },
        ],
    }


_PAYERS = (("Acme Health Plan", "ACME"), ("Medicare Part B", "MCB"), ("State Medicaid", "MCD"))


def _coverage(g: Draw) -> dict[str, Any]:
    name, code = g.pick(_PAYERS)
    return {
        "status": "active" if g.rng.random() < 0.8 else "cancelled",
        "type": _concept("urn:oid:2.16.840.1.113883.3.221.5", "1" if code == "MCB" else "5", name),
        "subscriberId": f"{code}-{g.rid[:8].upper()}",
        "beneficiary": g.patient_ref,
        "relationship": _concept(
            "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "self", "Self"
        ),
        "period": {"start": g.when.date().isoformat()},
        "payor": [{"display": name}],
    }


_DEVICES = (
    ("704708004", "Cardiac resynchronization therapy implantable pacemaker"),
    ("468063009", "Coated femoral stem prosthesis"),
    ("72506001", "Implantable defibrillator"),
    ("706004007", "Implantable insulin pump"),
)


def _device(g: Draw) -> dict[str, Any]:
    code, display = g.pick(_DEVICES)
    return {
        "udiCarrier": [{"deviceIdentifier": f"{g.rng.randrange(10**13):014d}"}],
        "status": "active",
        "distinctIdentifier": f"LOT-{g.rid[:6].upper()}",
        "manufactureDate": (g.when - timedelta(days=200)).date().isoformat(),
        "expirationDate": (g.when + timedelta(days=3650)).date().isoformat(),
        "type": _concept(_SNOMED, code, display),
        "patient": g.patient_ref,
    }


_DISPENSED = (
    ("314076", "lisinopril 10 MG Oral Tablet"),
    ("860975", "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet"),
    ("259255", "atorvastatin 80 MG Oral Tablet"),
    ("308182", "amoxicillin 250 MG Oral Capsule"),
)


def _medication_dispense(g: Draw) -> dict[str, Any]:
    code, display = g.pick(_DISPENSED)
    return {
        "status": "completed",
        "medicationCodeableConcept": _concept(_RXNORM, code, display),
        "subject": g.patient_ref,
        "performer": [{"actor": _clinician(g)}],
        "quantity": {"value": g.pick((30, 60, 90)), "unit": "tablet"},
        "whenHandedOver": _iso(g.when),
    }


def _medication_administration(g: Draw) -> dict[str, Any]:
    code, display = g.pick(_DISPENSED)
    return {
        "status": "completed",
        "medicationCodeableConcept": _concept(_RXNORM, code, display),
        "subject": g.patient_ref,
        "effectiveDateTime": _iso(g.when),
        "performer": [{"actor": _clinician(g)}],
        "dosage": {"route": _concept(_SNOMED, "26643006", "Oral route"), "text": "1 dose"},
    }


def _provenance(g: Draw) -> dict[str, Any]:
    # The Patient reference puts it in the patient's compartment (R4: Provenance.patient).
    return {
        "target": [{"reference": f"Patient/{g.patient_id}"}],
        "recorded": _iso(g.when),
        "agent": [
            {
                "type": _concept(
                    "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "author",
                    "Author",
                ),
                "who": _clinician(g),
            }
        ],
    }


_QUESTIONNAIRES = (
    ("44249-1", "PHQ-9 quick depression assessment panel"),
    ("69737-5", "Generalized anxiety disorder 7 item (GAD-7)"),
    ("93025-5", "PRAPARE social determinants panel"),
)


def _questionnaire_response(g: Draw) -> dict[str, Any]:
    code, display = g.pick(_QUESTIONNAIRES)
    score = g.rng.randint(0, 21)
    return {
        "questionnaire": f"http://loinc.org/q/{code}",
        "status": "completed",
        "subject": g.patient_ref,
        "authored": _iso(g.when),
        "author": g.patient_ref,
        "item": [
            {
                "linkId": "total",
                "text": f"{display}: total score",
                "answer": [{"valueInteger": score}],
            }
        ],
    }


_RELATIONS = (
    ("MTH", "mother", "Maria"),
    ("FTH", "father", "Jorge"),
    ("SPS", "spouse", "Alex"),
    ("SIS", "sister", "Ruth"),
)


def _related_person(g: Draw) -> dict[str, Any]:
    code, display, given = g.pick(_RELATIONS)
    return {
        "active": True,
        "patient": g.patient_ref,
        "relationship": [_concept(_ROLE, code, display)],
        "name": [{"given": [given], "family": "Smart", "text": f"{given} Smart"}],
        "telecom": [{"system": "phone", "value": f"555-01{g.rng.randrange(100):02d}"}],
    }


_ORDERS = (
    ("laboratory", "108252007", "Laboratory procedure", "24323-8", "Metabolic panel"),
    ("imaging", "363679005", "Imaging", "36643-5", "XR Chest 2 Views"),
    ("referral", "3457005", "Patient referral", "306206005", "Referral to cardiology"),
)


def _service_request(g: Draw) -> dict[str, Any]:
    category, cat_code, cat_display, code, display = g.pick(_ORDERS)
    system = _LOINC if category != "referral" else _SNOMED
    return {
        "status": g.pick(("active", "completed", "completed")),
        "intent": "order",
        "category": [_concept(_SNOMED, cat_code, cat_display)],
        "code": _concept(system, code, display),
        "subject": g.patient_ref,
        "authoredOn": _iso(g.when),
        "requester": _clinician(g),
    }


_SPECIMENS = (
    ("119297000", "Blood specimen"),
    ("122575003", "Urine specimen"),
    ("258529004", "Throat swab"),
)


def _specimen(g: Draw) -> dict[str, Any]:
    code, display = g.pick(_SPECIMENS)
    return {
        "identifier": [{"system": "urn:sandbox:specimen", "value": f"SP-{g.rid[:10]}"}],
        "status": "available",
        "type": _concept(_SNOMED, code, display),
        "subject": g.patient_ref,
        "collection": {"collectedDateTime": _iso(g.when)},
    }


_MODALITIES = (("CR", "Computed Radiography"), ("CT", "Computed Tomography"), ("MR", "MR"))


def _imaging_study(g: Draw) -> dict[str, Any]:
    code, display = g.pick(_MODALITIES)
    return {
        "status": "available",
        "modality": [{"system": _DCM, "code": code, "display": display}],
        "subject": g.patient_ref,
        "started": _iso(g.when),
        "numberOfSeries": 1,
        "numberOfInstances": g.rng.randint(1, 120),
    }


GENERATORS: dict[str, Callable[[Any], dict[str, Any]]] = {
    "CareTeam": _care_team,
    "Coverage": _coverage,
    "Device": _device,
    "MedicationDispense": _medication_dispense,
    "MedicationAdministration": _medication_administration,
    "Provenance": _provenance,
    "QuestionnaireResponse": _questionnaire_response,
    "RelatedPerson": _related_person,
    "ServiceRequest": _service_request,
    "Specimen": _specimen,
    "ImagingStudy": _imaging_study,
}
