"""Deterministic synthetic FHIR R4 data of the sandbox EHR, held compactly and mutable at run time.

The resources of one (tenant, patient, type) are generated from the configuration's seed on first
access and kept as pre-serialized orjson bytes in a list sorted by (lastUpdated, id). A search page
is a slice of that list and a Bundle is a concatenation of bytes, so serving a page costs O(page)
however large the record is. Only the bytes, id, timestamp, version and category tokens of a
resource are held between requests.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import html
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson

from . import record_types
from .config import PatientSpec, SandboxConfig, TenantConfig
from .documents import BinaryEntry, Rendering, binary_url, pad, renderings
from .referenced import (
    MISSING_PRACTITIONER,
    OUTSIDE_ORGANIZATION,
    catalog,
    location_id,
    medication_id,
    practitioner_id,
    role_id,
)

#: Generated histories end about here (fixed, so the data does not depend on the wall clock).
ANCHOR = datetime(2025, 12, 31, 9, 0, tzinfo=UTC)
HISTORY = timedelta(days=10 * 365)
DEFAULT_SIZE_RANGE = (5, 20)

#: Types whose resources link to Binaries (their attachments).
DOCUMENT_TYPES = ("DocumentReference", "DiagnosticReport")

#: Types whose patient reference is not ``subject`` in FHIR R4 (Provenance's ``target`` is a
#: list); every other compartment type uses ``subject``.
PATIENT_FIELD: dict[str, str] = {
    "AllergyIntolerance": "patient",
    "Immunization": "patient",
    **record_types.PATIENT_FIELDS,
}

_OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
_LOINC = "http://loinc.org"
_SNOMED = "http://snomed.info/sct"
_RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
_CVX = "http://hl7.org/fhir/sid/cvx"
_UCUM = "http://unitsofmeasure.org"
_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
#: (Practitioner id, display) of the clinicians who sign results.
_PERFORMERS = (
    ("pr-4821", "Dana Whitfield, MD"),
    ("pr-1177", "Omar Haddad, RN"),
    ("pr-3090", "Lucia Ferreira, MD"),
    ("pr-6634", "Central Laboratory Services"),
)

# (category, LOINC code, display, UCUM unit, low, high, decimals)
_QUANTITY_OBSERVATIONS: tuple[tuple[str, str, str, str, float, float, int], ...] = (
    ("vital-signs", "8867-4", "Heart rate", "/min", 55, 105, 0),
    ("vital-signs", "8480-6", "Systolic blood pressure", "mm[Hg]", 100, 160, 0),
    ("vital-signs", "8462-4", "Diastolic blood pressure", "mm[Hg]", 60, 100, 0),
    ("vital-signs", "8310-5", "Body temperature", "Cel", 36.1, 38.2, 1),
    ("vital-signs", "9279-1", "Respiratory rate", "/min", 12, 22, 0),
    ("vital-signs", "29463-7", "Body weight", "kg", 48, 110, 1),
    ("vital-signs", "8302-2", "Body height", "cm", 150, 195, 1),
    (
        "vital-signs",
        "59408-5",
        "Oxygen saturation in Arterial blood by Pulse oximetry",
        "%",
        92,
        100,
        0,
    ),
    ("laboratory", "2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 70, 180, 0),
    ("laboratory", "718-7", "Hemoglobin [Mass/volume] in Blood", "g/dL", 11, 17.5, 1),
    ("laboratory", "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", 4.8, 9.5, 1),
    ("laboratory", "2093-3", "Cholesterol [Mass/volume] in Serum or Plasma", "mg/dL", 140, 280, 0),
    ("laboratory", "2160-0", "Creatinine [Mass/volume] in Serum or Plasma", "mg/dL", 0.6, 1.4, 2),
    ("laboratory", "2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L", 3.4, 5.2, 1),
    ("laboratory", "2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L", 134, 146, 0),
    (
        "laboratory",
        "6690-2",
        "Leukocytes [#/volume] in Blood by Automated count",
        "10*3/uL",
        4,
        11,
        1,
    ),
    (
        "survey",
        "44261-6",
        "Patient Health Questionnaire-9 (PHQ-9) total score",
        "{score}",
        0,
        27,
        0,
    ),
)
_SMOKING_STATUS = (
    ("266919005", "Never smoked tobacco"),
    ("8517006", "Ex-smoker"),
    ("77176002", "Smoker"),
)
_CONDITIONS = (
    ("44054006", "Diabetes mellitus type 2"),
    ("38341003", "Hypertensive disorder, systemic arterial"),
    ("195967001", "Asthma"),
    ("55822004", "Hyperlipidemia"),
    ("35489007", "Depressive disorder"),
    ("444814009", "Viral sinusitis"),
    ("10509002", "Acute bronchitis"),
    ("271737000", "Anemia"),
    ("40055000", "Chronic sinusitis"),
    ("239873007", "Osteoarthritis of knee"),
)
_MEDICATIONS = (
    (
        "860975",
        "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet",
        "1 tablet daily",
    ),
    ("314076", "lisinopril 10 MG Oral Tablet", "1 tablet daily"),
    ("197361", "amlodipine 5 MG Oral Tablet", "1 tablet daily"),
    ("259255", "atorvastatin 80 MG Oral Tablet", "1 tablet at bedtime"),
    ("312961", "simvastatin 20 MG Oral Tablet", "1 tablet at bedtime"),
    ("745679", "200 ACTUAT albuterol 0.09 MG/ACTUAT Metered Dose Inhaler", "2 puffs as needed"),
    ("313782", "acetaminophen 325 MG Oral Tablet", "2 tablets every 6 hours as needed"),
    ("308182", "amoxicillin 250 MG Oral Capsule", "1 capsule 3 times daily for 10 days"),
)
# (SNOMED code, display, category)
_ALLERGIES = (
    ("91936005", "Allergy to penicillin", "medication"),
    ("300913006", "Shellfish allergy", "food"),
    ("91935009", "Allergy to peanuts", "food"),
    ("418689008", "Allergy to grass pollen", "environment"),
    ("232347008", "Dander (animal) allergy", "environment"),
    ("419474003", "Allergy to mould", "environment"),
)
_VACCINES = (
    ("140", "Influenza, seasonal, injectable, preservative free"),
    (
        "208",
        "SARS-COV-2 (COVID-19) vaccine, mRNA, spike protein, LNP, preservative free, 30 mcg/0.3mL",
    ),
    ("115", "Tdap"),
    ("113", "Td (adult) preservative free"),
    ("133", "Pneumococcal conjugate PCV 13"),
    ("33", "pneumococcal polysaccharide vaccine, 23 valent"),
    ("62", "HPV, quadrivalent"),
    ("03", "MMR"),
)
# (class code, class display, SNOMED type code, type display, duration hours)
_ENCOUNTERS = (
    ("AMB", "ambulatory", "185349003", "Encounter for check up", 1),
    ("AMB", "ambulatory", "185345009", "Encounter for symptom", 1),
    ("AMB", "ambulatory", "162673000", "General examination of patient", 1),
    ("EMER", "emergency", "50849002", "Emergency room admission", 6),
    ("IMP", "inpatient encounter", "183452005", "Emergency hospital admission", 72),
)
_PROCEDURES = (
    ("73761001", "Colonoscopy"),
    ("430193006", "Medication reconciliation"),
    ("171207006", "Depression screening"),
    ("710824005", "Assessment of health and social care needs"),
    ("117015009", "Throat culture"),
    ("23426006", "Measurement of respiratory function"),
    ("268556000", "Urine screening for protein"),
    ("80146002", "Appendectomy"),
)
# (LOINC code, display, v2-0074 category)
_REPORTS = (
    ("58410-2", "CBC panel - Blood by Automated count", "LAB"),
    ("24323-8", "Comprehensive metabolic 2000 panel - Serum or Plasma", "LAB"),
    ("57698-3", "Lipid panel with direct LDL - Serum or Plasma", "LAB"),
    ("36643-5", "XR Chest 2 Views", "RAD"),
)
_NOTES = (
    ("11506-3", "Progress note"),
    ("34133-9", "Summary of episode note"),
    ("18842-5", "Discharge summary"),
    ("34117-2", "History and physical note"),
)
_CAREPLAN_TOPICS = (
    "Diabetes self management plan",
    "Hypertension care plan",
    "Asthma action plan",
    "Weight management plan",
)
_GOALS = (
    "Hemoglobin A1c below 7.0 percent",
    "Blood pressure below 140/90 mm[Hg]",
    "Lose 5 kg over six months",
    "Walk 30 minutes five days a week",
    "Stop smoking",
)


class Entry:
    """One stored resource: its bytes plus what searches sort and filter on."""

    __slots__ = ("body", "categories", "id", "ms", "version")

    def __init__(
        self, rid: str, ms: int, version: int, categories: frozenset[str], body: bytes
    ) -> None:
        self.id = rid
        #: ``meta.lastUpdated`` in epoch milliseconds (the precision it is serialized with).
        self.ms = ms
        self.version = version
        self.categories = categories
        self.body = body

    def resource(self) -> dict[str, Any]:
        """The resource as a fresh dict (for mutation; searches never parse it)."""
        parsed: dict[str, Any] = orjson.loads(self.body)
        return parsed


def _entry_ms(entry: Entry) -> int:
    return entry.ms


def _entry_key(entry: Entry) -> tuple[int, str]:
    return (entry.ms, entry.id)


#: A category filter: every set must be matched by at least one of the resource's tokens.
CategoryFilter = tuple[frozenset[str], ...]


class Bucket:
    """The resources of one type of one patient at one tenant, sorted by (lastUpdated, id)."""

    _MAX_FILTERS = 16

    def __init__(self, tenant_id: str, patient_id: str, resource_type: str) -> None:
        self.tenant_id = tenant_id
        self.patient_id = patient_id
        self.resource_type = resource_type
        self.entries: list[Entry] = []
        self.by_id: dict[str, Entry] = {}
        #: Deleted id → the version its deletion created (reads of it answer 410 Gone).
        self.deleted: dict[str, int] = {}
        #: Bumped on every change; cached filter results of older generations are dropped.
        self.generation = 0
        self._filtered: dict[CategoryFilter, list[Entry]] = {}
        self._filtered_generation = 0

    def insert(self, entry: Entry) -> None:
        """Add ``entry`` at its sorted position."""
        bisect.insort(self.entries, entry, key=_entry_key)
        self.by_id[entry.id] = entry
        self.deleted.pop(entry.id, None)
        self.generation += 1

    def remove(self, entry: Entry) -> None:
        """Take ``entry`` out of the sorted list and the index."""
        index = bisect.bisect_left(self.entries, _entry_key(entry), key=_entry_key)
        if index < len(self.entries) and self.entries[index] is entry:
            del self.entries[index]
        self.by_id.pop(entry.id, None)
        self.generation += 1

    def source(self, categories: CategoryFilter) -> Sequence[Entry]:
        """The sorted entries matching ``categories`` (cached until the bucket changes)."""
        if not categories:
            return self.entries
        if self._filtered_generation != self.generation:
            self._filtered.clear()
            self._filtered_generation = self.generation
        cached = self._filtered.get(categories)
        if cached is None:
            if len(self._filtered) >= self._MAX_FILTERS:
                self._filtered.clear()
            cached = [e for e in self.entries if _matches(e.categories, categories)]
            self._filtered[categories] = cached
        return cached

    def window(
        self, categories: CategoryFilter, lower_ms: int | None, upper_ms: int | None
    ) -> tuple[Sequence[Entry], int, int]:
        """Matching entries and the [lo, hi) index range with ``lower_ms <= ms < upper_ms``."""
        source = self.source(categories)
        lo = 0 if lower_ms is None else bisect.bisect_left(source, lower_ms, key=_entry_ms)
        hi = (
            len(source) if upper_ms is None else bisect.bisect_left(source, upper_ms, key=_entry_ms)
        )
        return source, lo, max(lo, hi)


def _matches(tokens: frozenset[str], categories: CategoryFilter) -> bool:
    return all(not tokens.isdisjoint(wanted) for wanted in categories)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def to_ms(moment: datetime) -> int:
    """Epoch milliseconds of an aware datetime, floored (exact: no float rounding)."""
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def iso_ms(ms: int) -> str:
    """ISO 8601 instant with milliseconds and ``Z`` (the shape of ``meta.lastUpdated``)."""
    moment = datetime.fromtimestamp(ms / 1000, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _iso_s(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


def category_tokens(resource: dict[str, Any]) -> frozenset[str]:
    """The tokens a ``category`` search matches: each coding's ``code`` and ``system|code``."""
    raw = resource.get("category")
    concepts: Iterable[Any] = raw if isinstance(raw, list) else [raw] if raw else []
    tokens: set[str] = set()
    for concept in concepts:
        codings = concept.get("coding", []) if isinstance(concept, dict) else []
        for coding in codings:
            code = coding.get("code") if isinstance(coding, dict) else None
            if isinstance(code, str):
                tokens.add(code)
                tokens.add(f"{coding.get('system', '')}|{code}")
    return frozenset(tokens)


def patient_reference_field(resource_type: str) -> str | None:
    """The element holding the patient reference in ``resource_type`` (``None`` for Patient)."""
    if resource_type == "Patient":
        return None
    return PATIENT_FIELD.get(resource_type, "subject")


def resource_id(seed: int, tenant_id: str, patient_id: str, resource_type: str, index: int) -> str:
    """The deterministic id of the ``index``-th generated resource of a type."""
    material = f"{seed}:{tenant_id}:{patient_id}:{resource_type}:{index}".encode()
    return hashlib.blake2b(material, digest_size=10).hexdigest()


@dataclass
class _Gen:
    """What a generator needs to produce one resource."""

    rng: random.Random
    tenant: TenantConfig
    patient_id: str
    base: str
    when: datetime
    rid: str
    index: int
    #: The Binaries a generator linked to (id, rendering): its attachments' content.
    binaries: list[tuple[str, Rendering]] = field(default_factory=list)

    def attach(self, number: int, rendering: Rendering, title: str) -> dict[str, Any]:
        """An attachment pointing at a new Binary of this resource holding ``rendering``."""
        bid = binary_id(self.rid) if number == 0 else f"{self.rid}-content{number}"
        self.binaries.append((bid, rendering))
        return {
            "contentType": rendering.content_type,
            "url": binary_url(self.tenant.vendor, self.base, bid),
            "size": len(rendering.content),
            "title": title,
            "creation": _iso_s(self.when),
        }

    @property
    def patient_ref(self) -> dict[str, str]:
        return {"reference": f"Patient/{self.patient_id}"}

    def pick(self, options: Sequence[Any]) -> Any:
        return options[self.rng.randrange(len(options))]


def _concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def _observation(g: _Gen) -> dict[str, Any]:
    if g.rng.random() < 0.04:
        code, display = g.pick(_SMOKING_STATUS)
        smoking = {
            "status": "final",
            "category": [_concept(_OBS_CATEGORY, "social-history", "Social History")],
            "code": _concept(_LOINC, "72166-2", "Tobacco smoking status"),
            "subject": g.patient_ref,
            "effectiveDateTime": _iso_s(g.when),
            "issued": _iso_s(g.when + timedelta(minutes=5)),
            "valueCodeableConcept": _concept(_SNOMED, code, display),
        }
        return _as_recorded(g, smoking, f"Tobacco smoking status: {display}")
    category, loinc, display, unit, low, high, decimals = g.pick(_QUANTITY_OBSERVATIONS)
    value = round(g.rng.uniform(low, high), decimals)
    category_display = {"vital-signs": "Vital Signs", "laboratory": "Laboratory"}.get(
        category, "Survey"
    )
    shown = _number(value, decimals)
    # The normal range is the middle of the generated spread, so some values fall outside it.
    margin = (high - low) * 0.15
    normal_low, normal_high = _number(low + margin, decimals), _number(high - margin, decimals)
    flag, flag_display = (
        ("L", "Low")
        if value < normal_low
        else ("H", "High")
        if value > normal_high
        else ("N", "Normal")
    )
    quantity = {
        "status": "final",
        "category": [_concept(_OBS_CATEGORY, category, category_display)],
        "code": _concept(_LOINC, loinc, display),
        "subject": g.patient_ref,
        "effectiveDateTime": _iso_s(g.when),
        "issued": _iso_s(g.when + timedelta(minutes=30)),
        "valueQuantity": _quantity(shown, unit),
        "interpretation": [_concept(_INTERPRETATION, flag, flag_display)],
        "referenceRange": [
            {
                "low": _quantity(normal_low, unit),
                "high": _quantity(normal_high, unit),
                "text": f"{normal_low}-{normal_high} {unit}",
            }
        ],
    }
    return _as_recorded(g, quantity, f"{display}: {shown} {unit} ({flag_display})")


def _number(value: float, decimals: int) -> float:
    rounded = round(value, decimals)
    return int(rounded) if decimals == 0 else rounded


def _quantity(value: float, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": _UCUM, "code": unit}


def _as_recorded(g: _Gen, body: dict[str, Any], summary: str) -> dict[str, Any]:
    """``body`` with what EHRs add to a result: identifier, encounter, performer, narrative.

    Real Observations weigh about 1.6 KB, most of it these elements; they are derived from the
    resource's id and time (no random draw), so every other generated value stays the same.
    """
    encounter = hashlib.blake2b(f"{g.rid}:{g.when.date()}".encode(), digest_size=8).hexdigest()
    performer = _PERFORMERS[g.index % len(_PERFORMERS)]
    narrative = (
        f'<div xmlns="http://www.w3.org/1999/xhtml"><p><b>{html.escape(summary)}</b></p>'
        f"<p>Effective {body['effectiveDateTime']}, issued {body['issued']}, "
        f"status {body['status']}.</p><p>Performed by {html.escape(performer[1])}.</p></div>"
    )
    return {
        "text": {"status": "generated", "div": narrative},
        "identifier": [
            {
                "use": "usual",
                "system": f"urn:syncsvc:sandbox:{g.tenant.id}:observation",
                "value": f"OBS-{g.rid}",
            }
        ],
        **body,
        "encounter": {"reference": f"Encounter/{encounter}"},
        "performer": [{"reference": f"Practitioner/{performer[0]}", "display": performer[1]}],
    }


def _condition(g: _Gen) -> dict[str, Any]:
    code, display = g.pick(_CONDITIONS)
    resolved = g.rng.random() < 0.3
    category = "encounter-diagnosis" if g.rng.random() < 0.4 else "problem-list-item"
    resource: dict[str, Any] = {
        "clinicalStatus": _concept(
            "http://terminology.hl7.org/CodeSystem/condition-clinical",
            "resolved" if resolved else "active",
            "Resolved" if resolved else "Active",
        ),
        "verificationStatus": _concept(
            "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed", "Confirmed"
        ),
        "category": [
            _concept(
                "http://terminology.hl7.org/CodeSystem/condition-category",
                category,
                "Encounter Diagnosis" if category == "encounter-diagnosis" else "Problem List Item",
            )
        ],
        "code": _concept(_SNOMED, code, display),
        "subject": g.patient_ref,
        "onsetDateTime": _iso_s(g.when),
        "recordedDate": _iso_s(g.when + timedelta(hours=2)),
    }
    if resolved:
        resource["abatementDateTime"] = _iso_s(g.when + timedelta(days=g.rng.randint(7, 120)))
    return resource


def _medication_request(g: _Gen) -> dict[str, Any]:
    code, display, dosage = g.pick(_MEDICATIONS)
    # Every third order names a Medication resource instead of coding the drug inline, as
    # Epic's do; the requester is a clinician of the tenant (both by index: no random draw).
    medication: dict[str, Any] = (
        {
            "medicationReference": {
                "reference": f"Medication/{medication_id(code)}",
                "display": display,
            }
        }
        if g.index % 3 == 1
        else {"medicationCodeableConcept": _concept(_RXNORM, code, display)}
    )
    return {
        "status": g.pick(("active", "active", "completed", "stopped")),
        "intent": "order",
        "category": [
            _concept(
                "http://terminology.hl7.org/CodeSystem/medicationrequest-category",
                "outpatient",
                "Outpatient",
            )
        ],
        **medication,
        "subject": g.patient_ref,
        "authoredOn": _iso_s(g.when),
        "requester": {"reference": f"Practitioner/{practitioner_id(g.index)}"},
        "dosageInstruction": [{"text": dosage}],
    }


def _allergy(g: _Gen) -> dict[str, Any]:
    code, display, category = g.pick(_ALLERGIES)
    return {
        "clinicalStatus": _concept(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "active", "Active"
        ),
        "verificationStatus": _concept(
            "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
            "confirmed",
            "Confirmed",
        ),
        "type": "allergy",
        "category": [category],
        "criticality": g.pick(("low", "low", "high")),
        "code": _concept(_SNOMED, code, display),
        "patient": g.patient_ref,
        "recordedDate": _iso_s(g.when),
    }


def _immunization(g: _Gen) -> dict[str, Any]:
    code, display = g.pick(_VACCINES)
    return {
        "status": "completed",
        "vaccineCode": _concept(_CVX, code, display),
        "patient": g.patient_ref,
        "occurrenceDateTime": _iso_s(g.when),
        "primarySource": True,
        "location": {"reference": f"Location/{location_id(g.index)}"},
        # The first one was reported to the state registry: a resource on another server.
        "performer": [
            {
                "actor": {
                    "reference": OUTSIDE_ORGANIZATION if g.index == 0 else "Organization/org-main"
                }
            }
        ],
    }


def _encounter(g: _Gen) -> dict[str, Any]:
    klass, klass_display, code, display, hours = g.pick(_ENCOUNTERS)
    return {
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": klass,
            "display": klass_display,
        },
        "type": [_concept(_SNOMED, code, display)],
        "subject": g.patient_ref,
        # Every seventh visit names a clinician who has since left the tenant's directory.
        "participant": [
            {
                "individual": {
                    "reference": f"Practitioner/{MISSING_PRACTITIONER}"
                    if g.index % 7 == 3
                    else f"PractitionerRole/{role_id(g.index)}"
                }
            }
        ],
        "period": {"start": _iso_s(g.when), "end": _iso_s(g.when + timedelta(hours=hours))},
        "location": [{"location": {"reference": f"Location/{location_id(g.index)}"}}],
        "serviceProvider": {"reference": "Organization/org-main"},
    }


def _procedure(g: _Gen) -> dict[str, Any]:
    code, display = g.pick(_PROCEDURES)
    return {
        "status": "completed",
        "code": _concept(_SNOMED, code, display),
        "subject": g.patient_ref,
        "performedDateTime": _iso_s(g.when),
        "performer": [{"actor": {"reference": f"Practitioner/{practitioner_id(g.index)}"}}],
    }


def _diagnostic_report(g: _Gen) -> dict[str, Any]:
    code, display, category = g.pick(_REPORTS)
    category_display = "Laboratory" if category == "LAB" else "Radiology"
    return {
        "status": "final",
        "category": [
            _concept("http://terminology.hl7.org/CodeSystem/v2-0074", category, category_display)
        ],
        "code": _concept(_LOINC, code, display),
        "subject": g.patient_ref,
        "effectiveDateTime": _iso_s(g.when),
        "issued": _iso_s(g.when + timedelta(hours=4)),
        "performer": [{"reference": "Organization/org-lab"}],
        **_presented_form(g, display, category),
    }


def _presented_form(g: _Gen, display: str, category: str) -> dict[str, Any]:
    """A radiology report's readable form: linked Binaries, or inline text at the generic tenant."""
    if category != "RAD":
        return {}
    text = pad(
        f"{display}, {g.when.date().isoformat()}.\nImpression: no acute cardiopulmonary process.\n",
        g.tenant.policy.document_bytes,
    )
    if g.tenant.vendor in ("cerner", "epic"):
        forms = renderings(g.tenant.vendor, display, text)
        return {"presentedForm": [g.attach(i, form, display) for i, form in enumerate(forms)]}
    content = text.encode()
    return {
        "presentedForm": [
            {
                "contentType": "text/plain",
                "data": base64.b64encode(content).decode("ascii"),
                "size": len(content),
                "title": display,
            }
        ]
    }


def binary_id(document_id: str) -> str:
    """The id of the Binary holding a generated DocumentReference's content."""
    return f"{document_id}-content"


def _note_text(g: _Gen, display: str) -> str:
    return (
        f"{display} for patient {g.patient_id}, {g.when.date().isoformat()}.\n"
        f"Seen at {g.tenant.name}. Stable; continue current plan; follow up in "
        f"{g.rng.randint(2, 12)} weeks.\n"
    )


def _document_reference(g: _Gen) -> dict[str, Any]:
    code, display = g.pick(_NOTES)
    text = pad(_note_text(g, display), g.tenant.policy.document_bytes)
    forms = renderings(g.tenant.vendor, display, text)
    return {
        "status": "current",
        "docStatus": "final",
        "type": _concept(_LOINC, code, display),
        "category": [
            _concept(
                "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category",
                "clinical-note",
                "Clinical Note",
            )
        ],
        "subject": g.patient_ref,
        "date": _iso_s(g.when),
        "content": [
            {"attachment": g.attach(index, form, display)} for index, form in enumerate(forms)
        ],
    }


def _careplan_categories(g: _Gen) -> list[dict[str, Any]]:
    if g.tenant.vendor == "epic":
        # Epic tells longitudinal and encounter-level care plans apart by SNOMED CT category.
        if g.rng.random() < 0.6:
            return [_concept(_SNOMED, "38717003", "Longitudinal care plan")]
        return [_concept(_SNOMED, "734163000", "Encounter-level care plan")]
    return [
        _concept(
            "http://hl7.org/fhir/us/core/CodeSystem/careplan-category",
            "assess-plan",
            "Assessment and Plan of Treatment",
        )
    ]


def _careplan(g: _Gen) -> dict[str, Any]:
    topic = g.pick(_CAREPLAN_TOPICS)
    active = g.rng.random() < 0.5
    return {
        "status": "active" if active else "completed",
        "intent": "plan",
        "category": _careplan_categories(g),
        "title": topic,
        "description": topic,
        "subject": g.patient_ref,
        "period": {"start": _iso_s(g.when)},
    }


def _goal(g: _Gen) -> dict[str, Any]:
    text = g.pick(_GOALS)
    done = g.rng.random() < 0.4
    return {
        "lifecycleStatus": "completed" if done else "active",
        "achievementStatus": _concept(
            "http://terminology.hl7.org/CodeSystem/goal-achievement",
            "achieved" if done else "in-progress",
            "Achieved" if done else "In Progress",
        ),
        "description": {"text": text},
        "subject": g.patient_ref,
        "startDate": g.when.date().isoformat(),
        "target": [{"dueDate": (g.when + timedelta(days=180)).date().isoformat()}],
    }


_GENERATORS: dict[str, Callable[[_Gen], dict[str, Any]]] = {
    "Observation": _observation,
    "Condition": _condition,
    "MedicationRequest": _medication_request,
    "AllergyIntolerance": _allergy,
    "Immunization": _immunization,
    "Encounter": _encounter,
    "Procedure": _procedure,
    "DiagnosticReport": _diagnostic_report,
    "DocumentReference": _document_reference,
    "CarePlan": _careplan,
    "Goal": _goal,
    **record_types.GENERATORS,
}


def patient_resource(spec: PatientSpec, tenant_id: str) -> dict[str, Any]:
    """The Patient resource of a configured patient (without ``meta``)."""
    return {
        "resourceType": "Patient",
        "id": spec.id,
        "identifier": [
            {
                "use": "usual",
                "type": _concept(
                    "http://terminology.hl7.org/CodeSystem/v2-0203", "MR", "Medical Record Number"
                ),
                "system": f"urn:sandbox:{tenant_id}:mrn",
                "value": f"MRN{spec.id}",
            }
        ],
        "active": True,
        "name": [
            {
                "use": "official",
                "text": f"{spec.given} {spec.family}",
                "family": spec.family,
                "given": [spec.given],
            }
        ],
        "gender": spec.gender,
        "birthDate": spec.birth_date,
    }


def with_meta(
    resource_type: str, rid: str, version: int, ms: int, body: dict[str, Any]
) -> dict[str, Any]:
    """``body`` with ``resourceType``, ``id`` and ``meta`` first, as servers usually order them."""
    rest = {k: v for k, v in body.items() if k not in ("resourceType", "id", "meta")}
    given = body.get("meta")
    meta = {**(given if isinstance(given, dict) else {})}
    meta |= {"versionId": str(version), "lastUpdated": iso_ms(ms)}
    return {"resourceType": resource_type, "id": rid, "meta": meta, **rest}


def make_entry(resource_type: str, rid: str, version: int, ms: int, body: dict[str, Any]) -> Entry:
    """A stored entry of ``body`` at ``version`` and ``ms``."""
    resource = with_meta(resource_type, rid, version, ms, body)
    return Entry(rid, ms, version, category_tokens(resource), compact_json(resource))


def compact_json(value: Any) -> bytes:
    """``value`` serialized into a bytes object of exactly its length.

    orjson returns its output in an over-allocated buffer (kilobytes for a small resource); copying
    it once cuts what a stored resource costs by about four times.
    """
    return memoryview(orjson.dumps(value)).tobytes()


def _history_start(patient: PatientSpec) -> datetime:
    start = ANCHOR - HISTORY
    try:
        born = date.fromisoformat(patient.birth_date)
    except ValueError:
        return start
    return max(start, datetime(born.year, born.month, born.day, tzinfo=UTC) + timedelta(days=1))


class DataStore:
    """Every tenant's synthetic resources, generated lazily and mutated by the admin API."""

    def __init__(self, config: SandboxConfig, base_for: Callable[[TenantConfig], str]) -> None:
        self.config = config
        self._base_for = base_for
        self._buckets: dict[tuple[str, str, str], Bucket] = {}
        #: (tenant, type) → resource id → patient id, over the buckets generated so far.
        self._owners: dict[tuple[str, str], dict[str, str]] = {}
        #: tenant → Binary id → content.
        self._binaries: dict[str, dict[str, BinaryEntry]] = {}
        #: tenant → (type, id) → the tenant's shared resources (:mod:`.referenced`).
        self._shared: dict[str, dict[tuple[str, str], Entry]] = {}
        self._added = 0

    def patient(self, tenant: TenantConfig, patient_id: str) -> PatientSpec | None:
        """The configured patient of ``tenant`` with this id."""
        return next((p for p in tenant.patients if p.id == patient_id), None)

    def bucket(self, tenant: TenantConfig, patient_id: str, resource_type: str) -> Bucket | None:
        """The resources of one type of a configured patient (generated on first access)."""
        key = (tenant.id, patient_id, resource_type)
        found = self._buckets.get(key)
        if found is not None:
            return found
        spec = self.patient(tenant, patient_id)
        if spec is None or (resource_type != "Patient" and resource_type not in _GENERATORS):
            return None
        bucket = Bucket(tenant.id, patient_id, resource_type)
        if resource_type == "Patient":
            self._fill_patient(bucket, tenant, spec)
        else:
            self._fill(bucket, tenant, spec)
        self._buckets[key] = bucket
        owners = self._owners.setdefault((tenant.id, resource_type), {})
        owners.update(dict.fromkeys(bucket.by_id, patient_id))
        return bucket

    def size(self, tenant: TenantConfig, spec: PatientSpec, resource_type: str) -> int:
        """How many resources of a type a patient is generated with."""
        if resource_type in spec.sizes:
            return max(0, spec.sizes[resource_type])
        rng = random.Random(f"{self.config.seed}:{tenant.id}:{spec.id}:{resource_type}:size")  # noqa: S311 - synthetic data
        return rng.randint(*record_types.SIZE_RANGES.get(resource_type, DEFAULT_SIZE_RANGE))

    def _fill_patient(self, bucket: Bucket, tenant: TenantConfig, spec: PatientSpec) -> None:
        rng = random.Random(f"{self.config.seed}:{tenant.id}:{spec.id}:Patient")  # noqa: S311 - synthetic data
        ms = to_ms(ANCHOR - timedelta(days=rng.randint(1, 300), seconds=rng.randint(0, 86399)))
        bucket.insert(make_entry("Patient", spec.id, 1, ms, patient_resource(spec, tenant.id)))

    def _fill(self, bucket: Bucket, tenant: TenantConfig, spec: PatientSpec) -> None:
        resource_type = bucket.resource_type
        generate = _GENERATORS[resource_type]
        count = self.size(tenant, spec, resource_type)
        rng = random.Random(f"{self.config.seed}:{tenant.id}:{spec.id}:{resource_type}")  # noqa: S311 - synthetic data
        start = _history_start(spec)
        step = (ANCHOR - start) / max(count, 1)
        base = self._base_for(tenant) if resource_type in DOCUMENT_TYPES else ""
        entries: list[Entry] = []
        shared: dict[frozenset[str], frozenset[str]] = {}
        for index in range(count):
            when = (start + step * (index + rng.random())).replace(microsecond=0)
            rid = resource_id(self.config.seed, tenant.id, spec.id, resource_type, index)
            g = _Gen(rng, tenant, spec.id, base, when, rid, index)
            body = generate(g)
            # Records are typically finalized minutes to days after the event they describe.
            updated = when + timedelta(seconds=rng.randint(60, 3 * 86400))
            ms = to_ms(updated)
            entry = make_entry(resource_type, rid, 1, ms, body)
            # Few distinct category sets exist; sharing them saves ~300 bytes per resource.
            entry.categories = shared.setdefault(entry.categories, entry.categories)
            entries.append(entry)
            for bid, rendering in g.binaries:
                self._add_binary(
                    tenant, spec.id, bid, owner=f"{resource_type}/{rid}", ms=ms, rendering=rendering
                )
        entries.sort(key=_entry_key)
        bucket.entries = entries
        bucket.by_id = {e.id: e for e in entries}
        bucket.generation += 1

    def _add_binary(
        self,
        tenant: TenantConfig,
        patient_id: str,
        bid: str,
        *,
        owner: str,
        ms: int,
        rendering: Rendering,
    ) -> None:
        self._binaries.setdefault(tenant.id, {})[bid] = BinaryEntry(
            patient_id, rendering.content_type, rendering.content, ms, owner=owner
        )

    def put_binary(self, tenant: TenantConfig, bid: str, entry: BinaryEntry) -> None:
        """Store or replace a Binary (the admin API's; tests shape hostile content with it)."""
        self._binaries.setdefault(tenant.id, {})[bid] = entry

    def shared(self, tenant: TenantConfig, resource_type: str, rid: str) -> Entry | None:
        """A shared resource of ``tenant`` (a Practitioner, a Location ...), if it holds one."""
        entries = self._shared.get(tenant.id)
        if entries is None:
            medications = [(code, display) for code, display, _ in _MEDICATIONS]
            ms = to_ms(ANCHOR - timedelta(days=400))
            entries = {
                key: make_entry(key[0], key[1], 1, ms, body)
                for key, body in catalog(medications).items()
            }
            self._shared[tenant.id] = entries
        return entries.get((resource_type, rid))

    def owner(self, tenant: TenantConfig, resource_type: str, rid: str) -> str | None:
        """The patient owning a resource id (generating the type for every patient if needed)."""
        owners = self._owners.get((tenant.id, resource_type), {})
        if rid not in owners:
            for spec in tenant.patients:
                self.bucket(tenant, spec.id, resource_type)
            owners = self._owners.get((tenant.id, resource_type), {})
        return owners.get(rid)

    def binary(self, tenant: TenantConfig, bid: str) -> BinaryEntry | None:
        """A Binary of ``tenant`` (generating every patient's documents and reports if needed)."""
        found = self._binaries.get(tenant.id, {}).get(bid)
        if found is None:
            for spec in tenant.patients:
                for resource_type in DOCUMENT_TYPES:
                    self.bucket(tenant, spec.id, resource_type)
            found = self._binaries.get(tenant.id, {}).get(bid)
        return found

    # Mutations (admin API). Each produces a new version stamped with the sandbox's now.

    def add(self, bucket: Bucket, resource: dict[str, Any], now: float) -> Entry:
        """Store a new resource; raises ``ValueError`` if its id is taken."""
        rid = resource.get("id")
        if rid is None:
            self._added += 1
            rid = resource_id(
                self.config.seed, bucket.tenant_id, bucket.patient_id, "added", self._added
            )
            while rid in bucket.by_id:
                self._added += 1
                rid = resource_id(
                    self.config.seed, bucket.tenant_id, bucket.patient_id, "added", self._added
                )
        if not isinstance(rid, str) or rid in bucket.by_id:
            raise ValueError(f"resource id {rid!r} is invalid or already exists")
        version = bucket.deleted.get(rid, 0) + 1
        entry = self._stamp(bucket, rid, version, resource, now)
        bucket.insert(entry)
        self._owners.setdefault((bucket.tenant_id, bucket.resource_type), {})[rid] = (
            bucket.patient_id
        )
        return entry

    def update(
        self, bucket: Bucket, rid: str, resource: dict[str, Any], now: float
    ) -> Entry | None:
        """Replace a resource with a new version; ``None`` if it does not exist."""
        current = bucket.by_id.get(rid)
        if current is None:
            return None
        entry = self._stamp(bucket, rid, current.version + 1, resource, now)
        bucket.remove(current)
        bucket.insert(entry)
        return entry

    def delete(self, bucket: Bucket, rid: str) -> bool:
        """Delete a resource (reads then answer 410); ``False`` if it does not exist."""
        current = bucket.by_id.get(rid)
        if current is None:
            return False
        bucket.remove(current)
        bucket.deleted[rid] = current.version + 1
        return True

    def enter_in_error(self, bucket: Bucket, rid: str, now: float) -> Entry | None:
        """Mark a resource entered-in-error as a new version; ``None`` if it does not exist."""
        current = bucket.by_id.get(rid)
        if current is None:
            return None
        return self.update(
            bucket, rid, mark_entered_in_error(bucket.resource_type, current.resource()), now
        )

    def _stamp(
        self, bucket: Bucket, rid: str, version: int, resource: dict[str, Any], now: float
    ) -> Entry:
        body = dict(resource)
        field_name = patient_reference_field(bucket.resource_type)
        if field_name is not None:
            # A resource stored under a patient always names that patient: the compartment is
            # what the resource server enforces.
            reference = {"reference": f"Patient/{bucket.patient_id}"}
            body[field_name] = [reference] if field_name == "target" else reference
        return make_entry(bucket.resource_type, rid, version, round(now * 1000), body)


_ENTERED_IN_ERROR_CONCEPTS: dict[str, tuple[str, str]] = {
    "Condition": (
        "verificationStatus",
        "http://terminology.hl7.org/CodeSystem/condition-ver-status",
    ),
    "AllergyIntolerance": (
        "verificationStatus",
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
    ),
}


def mark_entered_in_error(resource_type: str, resource: dict[str, Any]) -> dict[str, Any]:
    """``resource`` with its status set to entered-in-error, the way FHIR R4 models it per type."""
    marked = dict(resource)
    if resource_type in _ENTERED_IN_ERROR_CONCEPTS:
        element, system = _ENTERED_IN_ERROR_CONCEPTS[resource_type]
        marked[element] = _concept(system, "entered-in-error", "Entered in Error")
        # con-5 / ait-2: clinicalStatus must be absent on an entered-in-error record.
        marked.pop("clinicalStatus", None)
    elif resource_type == "Goal":
        marked["lifecycleStatus"] = "entered-in-error"
    else:
        marked["status"] = "entered-in-error"
    return marked
