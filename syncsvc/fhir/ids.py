"""FHIR identifiers: the id datatype and resource type names, checked before they enter a URL."""

from __future__ import annotations

import re

# The id datatype's maximum length (FHIR R4 2.24.0.2) is also the width of the id columns, so it is
# defined with them: the database layer imports no protocol code.
from syncsvc.db.columns import MAX_ID_LENGTH

#: FHIR's id datatype (R4 2.24.0.2): also keeps path syntax out of URLs built from EHR data.
FHIR_ID = re.compile(rf"^[A-Za-z0-9\-.]{{1,{MAX_ID_LENGTH}}}$")
RESOURCE_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")


def is_fhir_id(value: str) -> bool:
    """Whether ``value`` is a valid FHIR id (and no dot segment)."""
    return bool(FHIR_ID.match(value)) and value not in (".", "..")
