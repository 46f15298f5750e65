"""Column widths and helpers shared by the tables; plain Python, so any layer may read them.

The FHIR id width lives here rather than in ``syncsvc.fhir`` because the database layer imports no
protocol code; ``syncsvc.fhir.ids`` takes it from here.
"""

from __future__ import annotations

import uuid

URL_LENGTH = 2048
ID_LENGTH = 36
RESOURCE_TYPE_LENGTH = 64
#: The id datatype's maximum length (FHIR R4 2.24.0.2); also the width of resource id columns.
MAX_ID_LENGTH = 64
RESOURCE_ID_LENGTH = MAX_ID_LENGTH
HASH_LENGTH = 64


def new_id() -> str:
    """A new row id (UUID4 string)."""
    return str(uuid.uuid4())


def in_check(column: str, values: tuple[str, ...]) -> str:
    """The SQL of a check constraint that keeps ``column`` within ``values``."""
    quoted = ", ".join(f"'{value}'" for value in values)
    return f"{column} IN ({quoted})"
