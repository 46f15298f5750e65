"""Failed launches: recording them, and what each reason says about the tenant's registration.

A failed launch is stored with the EHR's OAuth ``error``, the last segment of the URN inside its
``error_uri`` (Cerner: ``missing-patient``, ``client-persona-mismatch`` ...), its
``error_description`` (redacted, at most 500 characters) and syncsvc's own reason
(``ehr_error``, ``state_replayed``, ``id_token_aud``, ``tenant_mismatch``, ``no_patient`` ...).
The counted ``reason`` is the most specific of these.

Reasons fall into kinds an operator acts on differently, defined with the other state names in
:mod:`syncsvc.vocabulary` (:func:`~syncsvc.vocabulary.kind_of`): the patient's own choice (a plain
``access_denied``), the browser (a reloaded or stale callback), the app's registration (persona,
launch type, missing patient context), a misbound grant (tenant-mismatch) and everything else.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import launch_failure_repo
from syncsvc.logging import get_logger, redact_text
from syncsvc.smart.vendor_errors import OAuthError, known_reason

log = get_logger("syncsvc.connect.launch_failures")

#: How much of an EHR's description is read at all (the stored text is cut to 500 after).
MAX_SCANNED = 8192


async def record_launch_failure(
    sessionmaker: async_sessionmaker[AsyncSession],
    *,
    tenant_id: str,
    attempt_id: str | None,
    syncsvc_reason: str,
    now: dt.datetime,
    answer: OAuthError | None = None,
) -> None:
    """Store one failed launch (its own transaction); ``answer`` is the EHR's error, if any."""
    code = None
    if answer is not None and answer.urn:
        code = answer.urn.rsplit(":", 1)[-1]
    # The counted reason is a label of the metric: only codes syncsvc knows, never free text
    # from whoever made the callback URL (the raw code is kept in its own column).
    reason = known_reason(code or answer.error) if answer is not None else syncsvc_reason
    description = None
    if answer is not None and answer.description:
        # Redacted before it is cut: a token cut in half would no longer look like one.
        description = redact_text(answer.description[:MAX_SCANNED])
    async with sessionmaker.begin() as session:
        await launch_failure_repo.add_launch_failure(
            session,
            tenant_id=tenant_id,
            at=now,
            reason=reason,
            syncsvc_reason=syncsvc_reason,
            attempt_id=attempt_id,
            ehr_error=answer.error if answer is not None else None,
            ehr_code=code,
            ehr_description=description,
        )
    log.warning("launch_failed", tenant_id=tenant_id, reason=reason, syncsvc_reason=syncsvc_reason)
