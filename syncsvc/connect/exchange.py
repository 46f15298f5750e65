"""The launch's second half: the code exchange, the identity checks and the patient it names.

The code and PKCE verifier go only to the token endpoint of the tenant the attempt started for,
and only when nothing (RFC 9207 ``iss``) says the answer came from another server. The id_token is
validated when the EHR sent one (or should have); the patient id must be a FHIR id; a token issued
for another tenant is kept as a ``misbound`` connection (:mod:`syncsvc.connect.grant_store`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from syncsvc.connect.grant import Exchange, LaunchOutcome
from syncsvc.connect.grant_store import store_connection
from syncsvc.db.models.connections import LaunchAttempt, Tenant
from syncsvc.directory.tenants import fresh_configuration, redirect_uri_of
from syncsvc.errors import LaunchError, ReauthRequired, SyncsvcError, Transient
from syncsvc.fhir.client import FhirClient
from syncsvc.fhir.ids import is_fhir_id
from syncsvc.logging import get_logger
from syncsvc.smart import oauth
from syncsvc.smart.binding import foreign_tenant
from syncsvc.smart.id_token import fetch_jwks, validate_id_token
from syncsvc.smart.mixup import callback_tenant_of, check_response_issuer
from syncsvc.smart.scopes import grant_report
from syncsvc.smart.vendor_errors import known_reason, safe_error_uri
from syncsvc.sync.context import SyncContext
from syncsvc.sync.tenant_config import client_credentials
from syncsvc.vault import Purpose

log = get_logger("syncsvc.connect.exchange")


async def finish_exchange(
    ctx: SyncContext,
    attempt: LaunchAttempt,
    tenant: Tenant,
    code: str,
    *,
    iss: str | None,
    now: dt.datetime,
) -> LaunchOutcome:
    """Exchange the code at the attempt's tenant, check who the grant is for, store it."""
    config = await fresh_configuration(ctx.sessionmaker, ctx.http, tenant, now=now)
    # RFC 9207: the code and the PKCE verifier go to this tenant's token endpoint only when
    # nothing says the answer came from another authorization server.
    check_response_issuer(
        iss=iss,
        issuer=config.issuer or tenant.issuer,
        iss_required=config.authorization_response_iss_parameter_supported,
        own_callback=callback_tenant_of(tenant.redirect_uri) == tenant.name,
        display_name=tenant.display_name,
    )
    verifier = ctx.vault.decrypt(
        attempt.code_verifier_enc, purpose=Purpose.CODE_VERIFIER, row=attempt.id
    )
    try:
        tokens = await oauth.exchange_code(
            ctx.http,
            token_endpoint=config.token_endpoint,
            code=code,
            redirect_uri=redirect_uri_of(tenant, ctx.settings.public_url),
            code_verifier=verifier,
            credentials=client_credentials(ctx.vault, tenant),
        )
    except ReauthRequired as exc:
        refusal = known_reason(exc.reason)
        link = exc.error_uri if uri_on_ehr_host(exc.error_uri, tenant) else None
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
    exchange = Exchange(attempt, tenant, config, tokens, requested, granted)
    await _check_identity(ctx, exchange)
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
    connection = await store_connection(ctx, exchange, mismatch, now)
    report = grant_report(requested, granted, has_refresh_token=tokens.refresh_token is not None)
    patient_name = None
    if mismatch is None:
        patient_name = await _patient_name(ctx.http, tenant.fhir_base, tokens, granted)
    log.info(
        "launch_completed",
        tenant=tenant.name,
        connection_id=connection.id,
        status=connection.status,
        granted=len(granted),
        trimmed=len(report.trimmed),
        offline=report.offline,
        malformed=len(report.malformed),
    )
    if report.malformed:
        # Recorded with the grant and shown by ``connections show``; they grant nothing.
        log.warning(
            "granted_scopes_malformed",
            tenant=tenant.name,
            connection_id=connection.id,
            scopes=[scope[:200] for scope in report.malformed[:5]],
        )
    return LaunchOutcome(connection, tenant, report, patient_name)


async def _check_identity(ctx: SyncContext, exchange: Exchange) -> None:
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
    keys = await fetch_jwks(ctx.http, config.jwks_uri)
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


def uri_on_ehr_host(uri: str | None, tenant: Tenant) -> bool:
    """Whether ``uri`` is a safe link on the host of the tenant's authorize or token endpoint."""
    endpoints = tenant.endpoints or {}
    hosts = {
        urlsplit(str(endpoints.get(name) or "")).netloc.lower()
        for name in ("authorization_endpoint", "token_endpoint")
    }
    safe = safe_error_uri(uri)
    return safe is not None and urlsplit(safe).netloc.lower() in hosts - {""}
