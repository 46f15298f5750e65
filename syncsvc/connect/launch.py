"""The SMART standalone patient launch: start (authorize redirect) and complete (callback).

Start records a launch attempt (state stored hashed, PKCE verifier encrypted, nonce, browser
binding) and builds the authorize URL with ``aud`` equal to the tenant's FHIR base byte for byte.
Complete reads the EHR's answer in a fixed order: an ``error`` first, then the state (known,
unexpired, unused, same browser), then the code exchange (:mod:`syncsvc.connect.exchange`) and the
stored grant (:mod:`syncsvc.connect.grant_store`). Every failure is a
:class:`~syncsvc.errors.LaunchError` a patient can read, and every failure that can be tied to a
tenant is counted against it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from syncsvc.connect.exchange import finish_exchange, uri_on_ehr_host
from syncsvc.connect.grant import LaunchOutcome
from syncsvc.connect.launch_failures import record_launch_failure
from syncsvc.db import launch_failure_repo, launch_repo, repo
from syncsvc.db.columns import new_id
from syncsvc.db.models.connections import Tenant
from syncsvc.directory.tenants import fresh_configuration, redirect_uri_of
from syncsvc.errors import LaunchError, SyncsvcError
from syncsvc.fhir.references import REFERENCED_TYPES
from syncsvc.logging import get_logger
from syncsvc.smart import oauth
from syncsvc.smart.mixup import callback_tenant_of, check_callback_route
from syncsvc.smart.scopes import plan_scopes
from syncsvc.smart.vendor_errors import OAuthError, known_reason, safe_error_uri
from syncsvc.sync.context import SyncContext
from syncsvc.sync.type_support import pullable_types
from syncsvc.vault import Purpose

log = get_logger("syncsvc.connect.launch")


def sha256_hex(value: str) -> str:
    """The hex SHA-256 of ``value`` (states and browser bindings are stored only hashed)."""
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class LaunchStart:
    """Where to send the patient's browser."""

    authorize_url: str
    attempt_id: str


async def start_launch(
    ctx: SyncContext,
    *,
    tenant_name: str,
    user_id: str,
    browser_binding: str,
    now: dt.datetime,
) -> LaunchStart:
    """Record a launch attempt and return the authorize URL for it."""
    async with ctx.sessionmaker() as session:
        tenant = await repo.get_tenant_by_name(session, tenant_name)
    if tenant is None:
        raise LaunchError(
            "This provider is not available. Ask the application that sent you for a new link.",
            reason="unknown_tenant",
        )
    try:
        config = await fresh_configuration(ctx.sessionmaker, ctx.http, tenant, now=now)
    except SyncsvcError as exc:
        log.warning("launch_discovery_failed", tenant=tenant.name, reason=exc.reason)
        raise LaunchError(
            f"{tenant.display_name} cannot be reached right now. Please try again later.",
            reason="discovery_failed",
        ) from exc
    if "S256" not in config.code_challenge_methods:
        raise LaunchError(
            f"{tenant.display_name} does not support the secure sign-in method (PKCE S256) "
            "syncsvc requires. The service operator has been told.",
            reason="pkce_unsupported",
        )
    # Never ask for a type the server cannot serve: the patient would approve it in vain.
    scopes = plan_scopes(
        pullable_types(tenant), config, tenant.scope_syntax, referenced=REFERENCED_TYPES
    )
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(24)
    pkce = oauth.new_pkce()
    attempt_id = new_id()
    async with ctx.sessionmaker.begin() as session:
        await launch_repo.create_launch_attempt(
            session,
            attempt_id=attempt_id,
            state_hash=sha256_hex(state),
            code_verifier_enc=ctx.vault.encrypt(
                pkce.verifier, purpose=Purpose.CODE_VERIFIER, row=attempt_id
            ),
            nonce=nonce,
            tenant_id=tenant.id,
            user_id=user_id,
            browser_binding_hash=sha256_hex(browser_binding),
            requested_scopes=scopes,
            now=now,
            ttl_seconds=ctx.settings.launch_ttl_seconds,
        )
    url = oauth.authorize_url(
        authorization_endpoint=config.authorization_endpoint,
        client_id=tenant.client_id,
        redirect_uri=redirect_uri_of(tenant, ctx.settings.public_url),
        scopes=scopes,
        state=state,
        aud=tenant.fhir_base,
        code_challenge=pkce.challenge,
        nonce=nonce,
    )
    log.info("launch_started", tenant=tenant.name, attempt_id=attempt_id, scopes=len(scopes))
    return LaunchStart(authorize_url=url, attempt_id=attempt_id)


def _single(query: Mapping[str, str], name: str) -> str | None:
    value = query.get(name)
    return value if value else None


async def complete_launch(
    ctx: SyncContext,
    query: Mapping[str, str],
    *,
    arrived_for: str | None,
    browser_binding: str | None,
    now: dt.datetime,
) -> LaunchOutcome:
    """Finish a launch from the callback's query; LaunchError on anything wrong.

    ``arrived_for`` is the tenant named by the callback path the answer came to
    (``/callback/{tenant}``), None for the shared ``/callback`` (see :mod:`syncsvc.smart.mixup`).

    Every failure that can be tied to a tenant (through its launch attempt) is recorded as a
    launch failure, for tenant health, ``tenants check`` and the metric.
    """
    state = _single(query, "state")
    error = _single(query, "error")
    if error is not None:
        used = await _record_ehr_error(ctx, state, browser_binding, now)
        tenant = used[1] if used is not None else None
        if used is not None and not _answers_for(used[1], query, arrived_for):
            # Another server's error for this attempt: none of its words or links are shown.
            await record_launch_failure(
                ctx.sessionmaker,
                tenant_id=used[1].id,
                attempt_id=used[0],
                syncsvc_reason="callback_mismatch",
                now=now,
            )
            raise LaunchError(
                "Your provider did not complete the sign-in. Please start again.",
                reason="callback_mismatch",
            )
        answer = OAuthError(
            error=error[:100],
            description=_single(query, "error_description"),
            error_uri=safe_error_uri(_single(query, "error_uri")),
        )
        if used is not None:
            await record_launch_failure(
                ctx.sessionmaker,
                tenant_id=used[1].id,
                attempt_id=used[0],
                syncsvc_reason="ehr_error",
                answer=answer,
                now=now,
            )
        # The EHR's link is shown only for an answer to a launch this browser really started,
        # and only on the EHR's own host: anyone can type a /callback URL with any link in it.
        link = answer.error_uri if tenant is not None and _on_ehr_host(answer, tenant) else None
        # Only a code syncsvc knows is named on the page, never the answer's own text.
        raise LaunchError(answer.explain(), reason=known_reason(answer.reason), error_uri=link)
    if state is None:
        raise LaunchError(
            "The answer from your provider is missing its security check (state), so it cannot "
            "be trusted. Please start again.",
            reason="state_missing",
        )
    if not browser_binding:
        raise LaunchError(
            "This sign-in was not started in this browser (or cookies are blocked). Please start "
            "again here, with cookies allowed for this site.",
            reason="state_no_cookie",
        )
    try:
        async with ctx.sessionmaker.begin() as session:
            attempt = await launch_repo.consume_launch_attempt(
                session,
                state_hash=sha256_hex(state),
                browser_binding_hash=sha256_hex(browser_binding),
                now=now,
            )
            tenant = await repo.get_tenant(session, attempt.tenant_id)
    except LaunchError as exc:
        await _record_state_failure(ctx, state, exc, now)
        raise
    if tenant is None:
        raise LaunchError("This provider is no longer available.", reason="unknown_tenant")
    try:
        # Before anything else is done with the answer: it must come from the attempt's tenant.
        check_callback_route(
            redirect_uri=tenant.redirect_uri,
            arrived_for=arrived_for,
            display_name=tenant.display_name,
        )
    except LaunchError as exc:
        await _fail_attempt(ctx, attempt.id, tenant.id, exc.reason, now)
        log.warning("launch_callback_mismatch", tenant=tenant.name, attempt_id=attempt.id)
        raise
    try:
        code = _single(query, "code")
        if code is None:
            raise LaunchError(
                "Your provider answered without an authorization code. Please start again.",
                reason="code_missing",
            )
        outcome = await finish_exchange(
            ctx, attempt, tenant, code, iss=_single(query, "iss"), now=now
        )
    except LaunchError as exc:
        await _fail_attempt(ctx, attempt.id, tenant.id, exc.reason, now)
        raise
    await _set_outcome(ctx, attempt.id, outcome.connection.status)
    if outcome.connection.status == "misbound":
        await record_launch_failure(
            ctx.sessionmaker,
            tenant_id=tenant.id,
            attempt_id=attempt.id,
            syncsvc_reason=outcome.connection.status_reason or "tenant_mismatch",
            now=now,
        )
    return outcome


async def _fail_attempt(
    ctx: SyncContext, attempt_id: str, tenant_id: str, reason: str, now: dt.datetime
) -> None:
    """Close a failed attempt with ``reason`` and count it against its tenant."""
    await _set_outcome(ctx, attempt_id, reason)
    await record_launch_failure(
        ctx.sessionmaker,
        tenant_id=tenant_id,
        attempt_id=attempt_id,
        syncsvc_reason=reason,
        now=now,
    )


def _answers_for(tenant: Tenant, query: Mapping[str, str], arrived_for: str | None) -> bool:
    """Whether an error answer came through the tenant's callback with no foreign ``iss``."""
    if callback_tenant_of(tenant.redirect_uri) != arrived_for:
        return False
    iss = _single(query, "iss")
    return (
        iss is None
        or iss == tenant.issuer
        or (tenant.issuer is None and arrived_for == tenant.name)
    )


async def _record_state_failure(
    ctx: SyncContext, state: str, exc: LaunchError, now: dt.datetime
) -> None:
    """Count a replayed, expired or foreign-browser callback against its attempt's tenant."""
    async with ctx.sessionmaker() as session:
        tenant_id = await launch_failure_repo.attempt_tenant_id(session, sha256_hex(state))
    if tenant_id is not None:
        await record_launch_failure(
            ctx.sessionmaker,
            tenant_id=tenant_id,
            attempt_id=None,
            syncsvc_reason=exc.reason,
            now=now,
        )


def _on_ehr_host(answer: OAuthError, tenant: Tenant) -> bool:
    return uri_on_ehr_host(answer.error_uri, tenant)


async def _record_ehr_error(
    ctx: SyncContext, state: str | None, browser_binding: str | None, now: dt.datetime
) -> tuple[str, Tenant] | None:
    """Use up the attempt the EHR's error answers (no replay later); its id and tenant."""
    if state is None or not browser_binding:
        return None
    try:
        async with ctx.sessionmaker.begin() as session:
            attempt = await launch_repo.consume_launch_attempt(
                session,
                state_hash=sha256_hex(state),
                browser_binding_hash=sha256_hex(browser_binding),
                now=now,
            )
            await launch_repo.set_launch_outcome(session, attempt.id, "ehr_error")
            tenant = await repo.get_tenant(session, attempt.tenant_id)
    except LaunchError:
        # The EHR's own error is what the patient must see; a stale state adds nothing (and a
        # replayed error answer is not counted twice).
        return None
    return None if tenant is None else (attempt.id, tenant)


async def _set_outcome(ctx: SyncContext, attempt_id: str, outcome: str) -> None:
    async with ctx.sessionmaker.begin() as session:
        await launch_repo.set_launch_outcome(session, attempt_id, outcome[:64])
