"""FHIR JSON responses of the sandbox's resource server: resource bytes and OperationOutcomes."""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from aiohttp import web

FHIR_JSON = "application/fhir+json"


def fhir_response(
    body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A response carrying FHIR JSON bytes."""
    return web.Response(body=body, status=status, content_type=FHIR_JSON, headers=headers)


def operation_outcome(
    status: int,
    code: str,
    diagnostics: str,
    *,
    severity: str = "error",
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """An OperationOutcome with one issue (``code`` from the FHIR issue-type value set)."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }
    return fhir_response(orjson.dumps(outcome), status=status, headers=headers)
