"""Generated endpoint directories in the shape of Oracle Health's published list.

One generator for every caller: ``syncsvc bench --scenario search`` loads its tenants from
:func:`organisation_at`, and the tests import directories built by :func:`oracle_directory` (the
published file is not checked in). Organisation ``i`` is the same whoever asks and however many
are generated: Abbeville General Hospital first, then one with an accented name, then
"{place} {kind}" names over 30 cities, each at its own Oracle Health FHIR base.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

CONNECTION_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
    "code": "hl7-fhir-rest",
}
#: Names are "{place} {kind}"; no place or city starts with "abbev" (Abbeville is added apart).
PLACES = (
    "Lakeview",
    "Prairie View",
    "Riverbend",
    "Cedar Ridge",
    "Maple Grove",
    "Pine Bluff",
    "Oak Hill",
    "Stonebridge",
    "Willow Creek",
    "Fairmont",
    "Harbor Point",
    "Summit",
    "Redwood",
    "Bluewater",
    "Granite Falls",
    "Silver Lake",
    "Meadowbrook",
    "Highland",
    "Westfield",
    "Eastgate",
    "Northshore",
    "Southridge",
    "Clearwater",
    "Brookside",
    "Hillcrest",
    "Valley Forge",
    "Sunset",
    "Golden Plains",
    "Ironwood",
    "Elm Grove",
    "Crescent City",
    "Shadyside",
    "Mission Hills",
    "Bayview",
    "Foxborough",
    "Kingsport",
    "Queensbury",
    "Ashland",
    "Baytown",
    "Cypress",
)
KINDS = (
    "General Hospital",
    "Regional Medical Center",
    "Community Hospital",
    "Family Clinic",
    "Health System",
    "Memorial Hospital",
    "Children's Hospital",
    "Orthopedic Center",
    "Heart Institute",
    "Cancer Center",
    "Women's Health",
    "Rehabilitation Hospital",
    "Medical Group",
    "Physicians",
    "Urgent Care",
    "Surgical Center",
    "Behavioral Health",
    "Eye Institute",
    "Kidney Care",
    "Primary Care",
    "Pediatrics",
    "Senior Care",
    "Sports Medicine",
    "Dermatology",
    "Imaging Center",
    "Dialysis Center",
    "Pain Clinic",
    "Sleep Center",
    "Wound Care",
    "Diabetes Center",
    "Hospice",
    "Home Health",
    "Neurology Associates",
    "Cardiology Associates",
    "Specialty Hospital",
)
CITIES = (
    ("Salina", "KS"),
    ("Topeka", "KS"),
    ("Omaha", "NE"),
    ("Lincoln", "NE"),
    ("Tulsa", "OK"),
    ("Norman", "OK"),
    ("Amarillo", "TX"),
    ("Lubbock", "TX"),
    ("Waco", "TX"),
    ("Tyler", "TX"),
    ("Shreveport", "LA"),
    ("Monroe", "LA"),
    ("Jackson", "MS"),
    ("Tupelo", "MS"),
    ("Little Rock", "AR"),
    ("Conway", "AR"),
    ("Springfield", "MO"),
    ("Joplin", "MO"),
    ("Wichita", "KS"),
    ("Fargo", "ND"),
    ("Bismarck", "ND"),
    ("Sioux Falls", "SD"),
    ("Rapid City", "SD"),
    ("Billings", "MT"),
    ("Missoula", "MT"),
    ("Boise", "ID"),
    ("Spokane", "WA"),
    ("Yakima", "WA"),
    ("Eugene", "OR"),
    ("Medford", "OR"),
)
ABBEVILLE = "Abbeville General Hospital"


@dataclass(frozen=True)
class Organisation:
    """One organisation of a generated directory and the FHIR base of its Endpoint."""

    name: str
    street: str
    city: str
    state: str
    postal_code: str
    fhir_base: str


def organisation_at(position: int, *, abbeville_base: str | None = None) -> Organisation:
    """Organisation number ``position`` (from 0) of every generated directory.

    0 is Abbeville General Hospital (at ``abbeville_base`` when given, a stand-in for a sandbox
    tenant), 1 an accented name; the rest cycle through places, kinds and cities, with a number
    after the first 1,400 so names stay distinct.
    """
    if position == 0:
        base = abbeville_base or cerner_base(0)
        return Organisation(ABBEVILLE, "118 N Hospital Dr", "Abbeville", "LA", "70510", base)
    if position == 1:
        return Organisation(
            "Hôpital Sainte-Anne", "4 Rue Royale", "Lafayette", "LA", "70501", cerner_base(1)
        )
    i = position - 2
    place, kind = PLACES[i % len(PLACES)], KINDS[(i // len(PLACES)) % len(KINDS)]
    city, state = CITIES[i % len(CITIES)]
    return Organisation(
        name=f"{place} {kind}" + (f" {i // 1400 + 1}" if i >= 1400 else ""),
        street=f"{100 + i} Main St",
        city=city,
        state=state,
        # Five digits at any size: past 11,430 organisations ZIP codes repeat, as real ones do.
        postal_code=f"{(20000 + i * 7) % 100_000:05d}",
        fhir_base=cerner_base(position),
    )


def organisations(count: int, *, abbeville_base: str | None = None) -> list[Organisation]:
    """The first ``count`` organisations (see :func:`organisation_at`)."""
    return [organisation_at(i, abbeville_base=abbeville_base) for i in range(count)]


def oracle_directory(orgs: list[Organisation]) -> dict[str, Any]:
    """A bundle in the shape of Oracle Health's current patient-access list."""
    entries: list[dict[str, Any]] = []
    for org in orgs:
        key = str(uuid.uuid5(uuid.NAMESPACE_URL, org.fhir_base))
        entries.append(
            {
                "fullUrl": f"https://fhir-myrecord.cerner.com/Endpoint/{key}",
                "resource": {
                    "resourceType": "Endpoint",
                    "id": key,
                    "status": "active",
                    "connectionType": CONNECTION_TYPE,
                    "address": org.fhir_base + "/",
                },
            }
        )
        entries.append(
            {
                "fullUrl": f"https://fhir-myrecord.cerner.com/Organization/O{key}",
                "resource": {
                    "resourceType": "Organization",
                    "id": f"O{key}",
                    "name": org.name,
                    "address": [
                        {
                            "line": [org.street],
                            "city": org.city,
                            "state": org.state,
                            "postalCode": org.postal_code,
                            "country": "United States of America",
                        }
                    ],
                    "endpoint": [{"reference": f"Endpoint/{key}"}],
                },
            }
        )
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def cerner_base(n: int) -> str:
    """The FHIR base of generated organisation ``n``: an Oracle Health-shaped tenant URL."""
    return f"https://fhir-myrecord.cerner.com/r4/{uuid.uuid5(uuid.NAMESPACE_DNS, f'tenant-{n}')}"
