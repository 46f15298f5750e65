"""The SMART standalone patient launch: start (authorize redirect) and complete (callback).

Start records a launch attempt (state stored hashed, PKCE verifier encrypted, nonce, browser
binding) and builds the authorize URL with ``aud`` equal to the tenant's FHIR base byte for byte.
Complete reads the EHR's answer in a fixed order: an ``error`` first, then the state (known,
unexpired, unused, same browser), then the code exchange with the registered client
authentication, the id_token, the patient, and the binding: a token issued for another tenant is
recorded as a ``misbound`` connection with an explanation instead of failing on every request
later. Every failure is a :class:`~syncsvc.errors.LaunchError` a patient can read.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.connect.launch_failures import record_launch_failure
from syncsvc.db import launch_failure_repo, repo
from syncsvc.db.models import Connection, LaunchAttempt, Tenant, new_id
from syncsvc.directory.tenants import fresh_configuration, redirect_uri_of
from syncsvc.errors import LaunchError, ReauthRequired, SyncsvcError, Transient
from syncsvc.fhir.client import FhirClient
from syncsvc.fhir.ids import is_fhir_id
from syncsvc.logging import get_logger
from syncsvc.settings import Settings
from syncsvc.smart import oauth
from syncsvc.smart.binding import foreign_tenant
from syncsvc.smart.discovery import SmartConfiguration
from syncsvc.smart.id_token import fetch_jwks, validate_id_token
from syncsvc.smart.mixup import callback_tenant_of, check_callback_route, check_response_issuer
from syncsvc.smart.scopes import GrantReport, grant_report, plan_scopes
from syncsvc.smart.vendor_errors import OAuthError, known_reason, safe_error_uri
from syncsvc.sync import webhook_outbox
from syncsvc.sync.context import SyncContext
from syncsvc.sync.credentials import load_tokens, save_tokens
from syncsvc.sync.grant_states import readable_types, reconcile_type_states
from syncsvc.sync.misbound import TENANT_MISMATCH, GrantToEnd, end_misbound, revoke_now
from syncsvc.sync.tenant_config import client_credentials, resource_types_of
from syncsvc.vault import Purpose, Vault
from syncsvc.vocabulary import NO_READABLE_TYPE

log = get_logger("syncsvc.connect.launch")

#: The inline revocation attempt of a misbound grant is short: a person is waiting.
INLINE_REVOKE_TIMEOUT_SECONDS = 5.0


def sha256_hex(value: str) -> str:
    """The hex SHA-256 of ``value`` (states and browser bindings are stored only hashed)."""
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class LaunchServices:
    """What the launch needs from the process."""

    settings: Settings
    sessionmaker: async_sessionmaker[AsyncSession]
    vault: Vault
    http: aiohttp.ClientSession


@dataclass(frozen=True)
class LaunchStart:
    """Where to send the patient's browser."""

    authorize_url: str
    attempt_id: str


@dataclass(frozen=True)
class _Exchange:
    """Everything known once the code has been exchanged."""

    attempt: LaunchAttempt
    tenant: Tenant
    config: SmartConfiguration
    tokens: oauth.TokenResponse
    requested: list[str]
    granted: list[str]


@dataclass(frozen=True)
class LaunchOutcome:
    """A finished launch: the stored connection and what the EHR granted."""

    connection: Connection
    tenant: Tenant
    report: GrantReport
    patient_name: str | None


async def start_launch(
    services: LaunchServices,
    *,
    tenant_name: str,
    user_id: str,
    browser_binding: str,
    now: dt.datetime,
) -> LaunchStart:
    """Record a launch attempt and return the authorize URL for it."""
    async with services.sessionmaker() as session:
        tenant = await repo.get_tenant_by_name(session, tenant_name)
    if tenant is None:
        raise LaunchError(
            "This provider is not available. Ask the application that sent you for a new link.",
            reason="unknown_tenant",
        )
    try:
        config = await fresh_configuration(services.sessionmaker, services.http, tenant, now=now)
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
    scopes = plan_scopes(resource_types_of(tenant), config)
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(24)
    pkce = oauth.new_pkce()
    attempt_id = new_id()
    async with services.sessionmaker.begin() as session:
        await repo.create_launch_attempt(
            session,
            attempt_id=attempt_id,
            state_hash=sha256_hex(state),
            code_verifier_enc=services.vault.encrypt(
                pkce.verifier, purpose=Purpose.CODE_VERIFIER, row=attempt_id
            ),
            nonce=nonce,
            tenant_id=tenant.id,
            user_id=user_id,
            browser_binding_hash=sha256_hex(browser_binding),
            requested_scopes=scopes,
            now=now,
            ttl_seconds=services.settings.launch_ttl_seconds,
        )
    url = oauth.authorize_url(
        authorization_endpoint=config.authorization_endpoint,
        client_id=tenant.client_id,
        redirect_uri=redirect_uri_of(tenant, services.settings.public_url),
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
    services: LaunchServices,
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
        used = await _record_ehr_error(services, state, browser_binding, now)
        tenant = used[1] if used is not None else None
        if used is not None and not _answers_for(used[1], query, arrived_for):
            # Another server's error for this attempt: none of its words or links are shown.
            await record_launch_failure(
                services.sessionmaker,
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
                services.sessionmaker,
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
        async with services.sessionmaker.begin() as session:
            attempt = await repo.consume_launch_attempt(
                session,
                state_hash=sha256_hex(state),
                browser_binding_hash=sha256_hex(browser_binding),
                now=now,
            )
            tenant = await repo.get_tenant(session, attempt.tenant_id)
    except LaunchError as exc:
        await _record_state_failure(services, state, exc, now)
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
        await _fail_attempt(services, attempt.id, tenant.id, exc.reason, now)
        log.warning("launch_callback_mismatch", tenant=tenant.name, attempt_id=attempt.id)
        raise
    try:
        code = _single(query, "code")
        if code is None:
            raise LaunchError(
                "Your provider answered without an authorization code. Please start again.",
                reason="code_missing",
            )
        outcome = await _finish(services, attempt, tenant, code, iss=_single(query, "iss"), now=now)
    except LaunchError as exc:
        await _fail_attempt(services, attempt.id, tenant.id, exc.reason, now)
        raise
    await _set_outcome(services, attempt.id, outcome.connection.status)
    if outcome.connection.status == "misbound":
        await record_launch_failure(
            services.sessionmaker,
            tenant_id=tenant.id,
            attempt_id=attempt.id,
            syncsvc_reason=outcome.connection.status_reason or "tenant_mismatch",
            now=now,
        )
    return outcome


async def _fail_attempt(
    services: LaunchServices, attempt_id: str, tenant_id: str, reason: str, now: dt.datetime
) -> None:
    """Close a failed attempt with ``reason`` and count it against its tenant."""
    await _set_outcome(services, attempt_id, reason)
    await record_launch_failure(
        services.sessionmaker,
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
    services: LaunchServices, state: str, exc: LaunchError, now: dt.datetime
) -> None:
    """Count a replayed, expired or foreign-browser callback against its attempt's tenant."""
    async with services.sessionmaker() as session:
        tenant_id = await launch_failure_repo.attempt_tenant_id(session, sha256_hex(state))
    if tenant_id is not None:
        await record_launch_failure(
            services.sessionmaker,
            tenant_id=tenant_id,
            attempt_id=None,
            syncsvc_reason=exc.reason,
            now=now,
        )


def _on_ehr_host(answer: OAuthError, tenant: Tenant) -> bool:
    return _uri_on_ehr_host(answer.error_uri, tenant)


def _uri_on_ehr_host(uri: str | None, tenant: Tenant) -> bool:
    """Whether ``uri`` is a safe link on the host of the tenant's authorize or token endpoint."""
    endpoints = tenant.endpoints or {}
    hosts = {
        urlsplit(str(endpoints.get(name) or "")).netloc.lower()
        for name in ("authorization_endpoint", "token_endpoint")
    }
    safe = safe_error_uri(uri)
    return safe is not None and urlsplit(safe).netloc.lower() in hosts - {""}


async def _record_ehr_error(
    services: LaunchServices, state: str | None, browser_binding: str | None, now: dt.datetime
) -> tuple[str, Tenant] | None:
    """Use up the attempt the EHR's error answers (no replay later); its id and tenant."""
    if state is None or not browser_binding:
        return None
    try:
        async with services.sessionmaker.begin() as session:
            attempt = await repo.consume_launch_attempt(
                session,
                state_hash=sha256_hex(state),
                browser_binding_hash=sha256_hex(browser_binding),
                now=now,
            )
            await repo.set_launch_outcome(session, attempt.id, "ehr_error")
            tenant = await repo.get_tenant(session, attempt.tenant_id)
    except LaunchError:
        # The EHR's own error is what the patient must see; a stale state adds nothing (and a
        # replayed error answer is not counted twice).
        return None
    return None if tenant is None else (attempt.id, tenant)


async def _set_outcome(services: LaunchServices, attempt_id: str, outcome: str) -> None:
    async with services.sessionmaker.begin() as session:
        await repo.set_launch_outcome(session, attempt_id, outcome[:64])


async def _finish(
    services: LaunchServices,
    attempt: LaunchAttempt,
    tenant: Tenant,
    code: str,
    *,
    iss: str | None,
    now: dt.datetime,
) -> LaunchOutcome:
    config = await fresh_configuration(services.sessionmaker, services.http, tenant, now=now)
    # RFC 9207: the code and the PKCE verifier go to this tenant's token endpoint only when
    # nothing says the answer came from another authorization server.
    check_response_issuer(
        iss=iss,
        issuer=config.issuer or tenant.issuer,
        iss_required=config.authorization_response_iss_parameter_supported,
        own_callback=callback_tenant_of(tenant.redirect_uri) == tenant.name,
        display_name=tenant.display_name,
    )
    verifier = services.vault.decrypt(
        attempt.code_verifier_enc, purpose=Purpose.CODE_VERIFIER, row=attempt.id
    )
    try:
        tokens = await oauth.exchange_code(
            services.http,
            token_endpoint=config.token_endpoint,
            code=code,
            redirect_uri=redirect_uri_of(tenant, services.settings.public_url),
            code_verifier=verifier,
            credentials=client_credentials(services.vault, tenant),
        )
    except ReauthRequired as exc:
        refusal = known_reason(exc.reason)
        link = exc.error_uri if _uri_on_ehr_host(exc.error_uri, tenant) else None
        raise LaunchError(
            f"{tenant.display_name} refused to complete the sign-in ({refusal}). Please "
            "start again; if it keeps happening, contact the service operator.",
            reason=f"exchange_{refusal}"[:64],
            error_uri=link,
        ) from exc
    except Transient as exc:
        raise LaunchError(
            f"{tenant.display_name} could not finish the sign-in just now. Please start again "
            "in a few minutes.",
            reason="exchange_unavailable",
        ) from exc
    requested = list(attempt.requested_scopes)
    granted = list(tokens.scopes) if tokens.scope_returned else requested
    exchange = _Exchange(attempt, tenant, config, tokens, requested, granted)
    await _check_identity(services, exchange)
    if not tokens.patient:
        raise LaunchError(
            f"{tenant.display_name} did not say which patient record was shared, so nothing "
            "was connected. Please start again and choose a record.",
            reason="no_patient",
        )
    if not is_fhir_id(tokens.patient):
        # The id ends up in FHIR URLs; one that is not a FHIR id could steer the token elsewhere.
        raise LaunchError(
            f"{tenant.display_name} named the shared record with an invalid id, so nothing was "
            "connected. The service operator has been told.",
            reason="patient_id_invalid",
        )
    mismatch = _tenant_mismatch(tenant, tokens)
    connection = await _store_connection(services, exchange, mismatch, now)
    report = grant_report(requested, granted, has_refresh_token=tokens.refresh_token is not None)
    patient_name = None
    if mismatch is None:
        patient_name = await _patient_name(services.http, tenant.fhir_base, tokens, granted)
    log.info(
        "launch_completed",
        tenant=tenant.name,
        connection_id=connection.id,
        status=connection.status,
        granted=len(granted),
        trimmed=len(report.trimmed),
        offline=report.offline,
    )
    return LaunchOutcome(connection, tenant, report, patient_name)


async def _check_identity(services: LaunchServices, exchange: _Exchange) -> None:
    """Validate the id_token when the EHR sent one (or should have: ``openid`` granted)."""
    tenant, config, tokens = exchange.tenant, exchange.config, exchange.tokens
    issuer = config.issuer or tenant.issuer
    if tokens.id_token is None:
        if "openid" in exchange.granted and tokens.scope_returned:
            raise LaunchError(
                f"{tenant.display_name} granted sign-in (openid) but sent no identity token. "
                "Please start again.",
                reason="id_token_missing",
            )
        return
    if config.jwks_uri is None or issuer is None:
        # Discovery through the CapabilityStatement names no issuer or keys: the id_token cannot
        # be verified, so none of its claims are used.
        log.warning("id_token_unverifiable", tenant=tenant.name)
        return
    keys = await fetch_jwks(services.http, config.jwks_uri)
    validate_id_token(
        tokens.id_token,
        keys,
        issuer=issuer,
        client_id=tenant.client_id,
        nonce=exchange.attempt.nonce,
    )


def _tenant_mismatch(tenant: Tenant, tokens: oauth.TokenResponse) -> str | None:
    """The foreign tenant id the EHR issued this grant for, or None if nothing says so."""
    return foreign_tenant(tenant.fhir_base, tokens)


async def _store_connection(
    services: LaunchServices, exchange: _Exchange, mismatch: str | None, now: dt.datetime
) -> Connection:
    """Create or update the (tenant, user, patient) connection with its binding and tokens."""
    tenant, config, tokens = exchange.tenant, exchange.config, exchange.tokens
    binding: dict[str, Any] = {
        "fhir_base": tenant.fhir_base,
        "aud": tenant.fhir_base,
        "issuer": config.issuer or tenant.issuer,
        "token_endpoint": config.token_endpoint,
        "client_id": tenant.client_id,
        "requested_scopes": exchange.requested,
        "granted_scopes": exchange.granted,
    }
    if mismatch is None and not readable_types(exchange.granted, tenant):
        # Nothing the grant covers can be read: never ``active``, nothing is scheduled.
        status: dict[str, Any] = {
            "status": "no_access",
            "status_reason": NO_READABLE_TYPE,
            "status_message": None,
            "error_uri": None,
            "next_sync_at": None,
            "next_refresh_at": None,
        }
    elif mismatch is None:
        margin = dt.timedelta(seconds=services.settings.refresh_margin_seconds)
        expires = dt.datetime.fromtimestamp(tokens.expires_at, dt.UTC)
        status = {
            "status": "active",
            "status_reason": None,
            "status_message": None,
            "error_uri": None,
            "next_sync_at": now,
            # Without a refresh token the grant is looked at again when its access token
            # expires: it then needs the patient (offline_access_not_granted).
            "next_refresh_at": max(now, expires - margin) if tokens.refresh_token else expires,
        }
    else:
        # Made misbound (tokens deleted, revocation queued) by end_misbound below.
        status = {"next_sync_at": None, "next_refresh_at": None, "error_uri": None}
    ctx = SyncContext(
        settings=services.settings,
        sessionmaker=services.sessionmaker,
        vault=services.vault,
        http=services.http,
    )
    for _ in range(2):
        try:
            async with services.sessionmaker.begin() as session:
                connection = await _upsert_connection(
                    session,
                    services.vault,
                    exchange,
                    {**binding, **status},
                    store_tokens=mismatch is None,
                    now=now,
                )
                ended = None
                if mismatch is not None:
                    ended = await end_misbound(
                        session,
                        vault=services.vault,
                        owner=ctx.owner,
                        connection=connection,
                        tenant=tenant,
                        grant=GrantToEnd.of(tokens.refresh_token, tokens.access_token),
                        reason=TENANT_MISMATCH,
                        foreign=mismatch,
                        stage="launch",
                        now=now,
                    )
                    await session.refresh(connection)
                    # The host application hears of it as of a misbound run (same words).
                    await webhook_outbox.enqueue(
                        session,
                        services.settings,
                        "connection.misbound",
                        connection=connection,
                        data={
                            "reason": connection.status_reason,
                            "message": connection.status_message,
                            "error_uri": connection.error_uri,
                        },
                        now=now,
                    )
        except IntegrityError:
            # Two callbacks for the same patient raced to insert; the second updates instead.
            continue
        if ended is not None:
            # The patient is waiting: one short attempt now, the tick retries a failure.
            await revoke_now(ctx, ended, timeout_seconds=INLINE_REVOKE_TIMEOUT_SECONDS)
        return connection
    raise LaunchError("The connection could not be saved. Please start again.", reason="conflict")


async def _upsert_connection(
    session: AsyncSession,
    vault: Vault,
    exchange: _Exchange,
    columns: dict[str, Any],
    *,
    store_tokens: bool,
    now: dt.datetime,
) -> Connection:
    attempt, tokens = exchange.attempt, exchange.tokens
    patient_id = tokens.patient or ""
    connection = await repo.find_connection(
        session, tenant_id=exchange.tenant.id, user_id=attempt.user_id, patient_id=patient_id
    )
    if connection is None:
        connection = await repo.create_connection(
            session,
            tenant_id=exchange.tenant.id,
            user_id=attempt.user_id,
            patient_id=patient_id,
            now=now,
            **columns,
        )
    else:
        for name, value in columns.items():
            setattr(connection, name, value)
        connection.connected_at = now
        connection.updated_at = now
        connection.failure_count = 0
        connection.backoff_until = None
        await session.flush()
    previous = await load_tokens(session, vault, connection.id)
    if store_tokens:
        await save_tokens(
            session, vault, connection.id, tokens, previous=previous, now=now, replace=True
        )
    elif previous is not None:
        await repo.delete_credentials(session, connection.id)
    if store_tokens:
        await reconcile_type_states(session, connection, exchange.tenant, now=now)
    return connection


async def _patient_name(
    http: aiohttp.ClientSession, fhir_base: str, tokens: oauth.TokenResponse, granted: list[str]
) -> str | None:
    """The patient's display name from a first Patient read, or None if it cannot be read."""
    if not tokens.patient or not any("patient" in s.lower() for s in granted):
        return None
    try:
        patient = await FhirClient(http, fhir_base, tokens.access_token).read(
            "Patient", tokens.patient
        )
    except SyncsvcError:
        return None
    return display_name(patient)


def display_name(patient: Mapping[str, Any]) -> str | None:
    """A person's name from a FHIR Patient: ``text``, else given names and family name."""
    names = patient.get("name")
    if not isinstance(names, list) or not names:
        return None
    official = next(
        (n for n in names if isinstance(n, dict) and n.get("use") == "official"), names[0]
    )
    if not isinstance(official, dict):
        return None
    if isinstance(official.get("text"), str) and official["text"].strip():
        return str(official["text"]).strip()
    given = [g for g in official.get("given") or [] if isinstance(g, str)]
    family = official.get("family")
    text = " ".join([*given, family if isinstance(family, str) else ""]).strip()
    return text or None
