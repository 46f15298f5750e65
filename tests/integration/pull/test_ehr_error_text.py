"""An EHR's error text is capped and redacted before syncsvc keeps it.

A FHIR server answered a search with a 30 KB OperationOutcome whose diagnostics echoed an access
token (a JWT), a Bearer header and a social security number; syncsvc stored it verbatim with the
run and the type's state. Now nothing past 500 characters, and none of those, is kept anywhere.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from sqlalchemy import select

from syncsvc.db.base import Base
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.smart.vendor_errors import MAX_EHR_TEXT
from syncsvc.sync.context import SyncContext
from syncsvc.sync.runner import run_due
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.connected import register_and_connect

from . import SandboxAdmin

JWT = "eyJhbGciOiJSUzM4NCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwicGF0aWVudCI6IjEyNzI0MDY2In0.c2lnbmF0dXJl"
SSN = "078-05-1120"
BEARER = "Bearer s3cr3t-t0k3n-value"
MARKER = "EHR-DIAGNOSTIC-MARKER"


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


async def _every_text(ctx: SyncContext) -> list[str]:
    """Every string in every table of the database, JSON columns' members included."""
    found: list[str] = []
    async with ctx.sessionmaker() as session:
        for table in Base.metadata.sorted_tables:
            for row in await session.execute(select(table)):
                found.extend(_strings(tuple(row)))
    return found


async def test_diagnostics_are_capped_and_redacted_before_storage(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    await register_and_connect(ctx.sessionmaker, ctx.vault, ctx.http, sandbox, GENERIC_TENANT)
    diagnostics = f"{MARKER} token {JWT} header {BEARER} patient ssn {SSN} " + "x" * 30_000
    await admin.faults(
        GENERIC_TENANT,
        [{"kind": "bad_request_diagnostics", "target": "Observation", "diagnostics": diagnostics}],
    )
    await asyncio.wait_for(run_due(ctx), 60)

    texts = await _every_text(ctx)
    kept = [t for t in texts if MARKER in t]
    assert kept, "the EHR's error text was not kept at all"  # so the checks below bite
    assert all(len(t) <= MAX_EHR_TEXT + 200 for t in kept), max(len(t) for t in kept)
    for text in texts:
        assert JWT not in text
        assert SSN not in text
        assert "s3cr3t-t0k3n-value" not in text
        assert "x" * (MAX_EHR_TEXT + 1) not in text
