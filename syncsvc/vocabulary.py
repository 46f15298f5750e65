"""Every state name syncsvc reports, defined once.

Connection statuses, the reasons syncsvc itself gives for them, per-type sync states, run and
refresh outcomes, health statuses and error classes, and webhook event types. Database check
constraints, pages, CLI lines, API fields and enums, metric labels and webhooks all take their
names from here, so no two of them can disagree about what a state is called. The words that
explain a state to a person live in :mod:`syncsvc.sync.explain`; this module only names.

Adding a state: add it to the ``Literal`` (the tuple follows), then give it words in
:mod:`syncsvc.sync.explain`; a stored one (connection status, type state, run outcome) also needs a
migration that widens the table's check constraint.
"""

from __future__ import annotations

from typing import Final, Literal, get_args

# --- connections ---------------------------------------------------------------------------

#: ``active``: the grant lets syncsvc read at least one resource type and it is synced.
#: ``no_access``: the grant lets syncsvc read no resource type (never shown as ``active``).
#: ``needs_reauth``: the grant cannot be used any more; the patient must connect again.
#: ``revoked``: disconnected (by the patient, the host application or an operator).
#: ``misbound``: the EHR issued the grant for another tenant; nothing from it is used.
#: ``error``: stopped on a failure that is neither the grant's nor the tenant's.
ConnectionStatus = Literal["active", "no_access", "needs_reauth", "revoked", "misbound", "error"]
CONNECTION_STATUSES: Final[tuple[ConnectionStatus, ...]] = get_args(ConnectionStatus)
#: Statuses whose connections are refreshed and pulled in the background.
SYNCING_STATUSES: Final = frozenset({"active"})
#: Statuses a patient can leave by connecting again (a new launch replaces the grant).
RECONNECTABLE_STATUSES: Final = frozenset({"no_access", "needs_reauth", "revoked"})

# Reasons syncsvc itself records in ``Connection.status_reason`` (EHR error codes such as
# ``invalid_grant`` are recorded as the EHR spelled them).

#: No refresh token was issued: usable until the access token expires, then ``needs_reauth``.
OFFLINE_ACCESS_NOT_GRANTED: Final = "offline_access_not_granted"
#: The one wording of that end, stored as the connection's message and shown as the page's
#: summary, so the patient, the host application and the operator read the same sentence.
OFFLINE_ACCESS_EXPIRED_MESSAGE: Final = (
    "Your provider did not allow offline access, and the access it gave has expired, so your "
    "record is no longer being updated. Reconnect to sync again."
)
#: ``no_access`` from the start: the launch granted no resource type syncsvc syncs here.
NO_READABLE_TYPE: Final = "no_readable_type"
#: ``no_access`` later: a refresh narrowed the grant until no resource type was left.
SCOPES_WITHDRAWN: Final = "scopes_withdrawn"
#: ``misbound``: the EHR says the token belongs to another tenant.
TENANT_MISMATCH: Final = "tenant_mismatch"

# --- resource types of a connection --------------------------------------------------------

#: ``ok``: the last pull of the type completed.
#: ``denied``: the EHR refused the type (403 insufficient_scope) under the current grant.
#: ``error``: the EHR refused the type's query for a reason of its own (400, 404, ...).
#: ``transient_error``: the type's requests failed at the last try; it has a back-off of its own.
#: ``failing``: it kept failing past a threshold; still retried, every few hours.
#: ``not_granted``: requested, never granted: nothing of the type is synced.
#: ``withdrawn``: granted before and narrowed away at a refresh or a reconnect: what was synced
#: is kept, marked "not updated since", never "synced ok".
#: ``unsupported``: the tenant's server does not offer the type, or cannot search it per patient
#: (its CapabilityStatement leaves it out, or the vendor's plan says so): never asked for, never
#: pulled, and not a failure.
#: ``unsearchable``: granted only in parts (SMART v2 query qualifiers) that the tenant's vendor
#: cannot search (a category its searches do not take): never pulled while so, and not a
#: failure; the row names the parts (``unsearchable_parts``).
TypeState = Literal[
    "ok",
    "denied",
    "error",
    "transient_error",
    "failing",
    "not_granted",
    "withdrawn",
    "unsupported",
    "unsearchable",
]
TYPE_STATES: Final[tuple[TypeState, ...]] = get_args(TypeState)
#: States of a type the grant does not cover (it is not pulled).
UNGRANTED_TYPE_STATES: Final = frozenset({"not_granted", "withdrawn"})
#: The state of a type the tenant's server cannot serve (it is not pulled, whatever the grant).
UNSUPPORTED: Final = "unsupported"
#: The state of a type granted only in parts its tenant's vendor cannot search (not pulled).
UNSEARCHABLE: Final = "unsearchable"
#: States of a type that is not pulled.
UNPULLED_TYPE_STATES: Final = UNGRANTED_TYPE_STATES | {UNSUPPORTED, UNSEARCHABLE}

#: How one type fared in one run (``skipped``: denied for this very grant before, not asked
#: again; ``incomplete``: a run-ending failure stopped it).
TypeRunStatus = Literal[
    "ok", "denied", "error", "transient_error", "failing", "skipped", "incomplete"
]
TYPE_RUN_STATUSES: Final[tuple[TypeRunStatus, ...]] = get_args(TypeRunStatus)
#: How a type fared when it makes its run ``partial`` (and an event for tenant health).
FAILED_TYPE_RUN_STATUSES: Final[frozenset[TypeRunStatus]] = frozenset(
    {"denied", "error", "transient_error", "failing"}
)

# --- referenced resources ------------------------------------------------------------------

#: Where one reference of a connection's record to a shared resource (Practitioner,
#: PractitionerRole, Organization, Location, Medication) stands:
#: ``pending``: found, not read yet (a run reads at most so many).
#: ``stored``: read under the connection's FHIR base and stored.
#: ``missing``: the EHR answered 404 or 410 (or its ``_id`` search did not return it).
#: ``denied``: the EHR refused the read (403) under the current grant.
#: ``failed``: the read failed (5xx, timeout, malformed answer); tried again next run.
#: ``not_granted``: the grant does not let syncsvc read the type.
#: ``outside_base``: the reference points outside the connection's FHIR base (another server,
#: another tenant, a contained resource, a urn, an identifier only); never followed.
ReferenceState = Literal[
    "pending", "stored", "missing", "denied", "failed", "not_granted", "outside_base"
]
REFERENCE_STATES: Final[tuple[ReferenceState, ...]] = get_args(ReferenceState)

# --- attachments of clinical documents -----------------------------------------------------

#: ``stored``: the content is stored (deduplicated by SHA-256 within the connection).
#: ``skipped``: not stored by rule: over a cap, a content type outside the allow-list, served as
#: another type than declared, or the grant does not cover Binary.
#: ``refused``: its URL lies outside the connection's FHIR base: never requested with the token.
#: ``failed``: the EHR did not deliver it this time (an error answer, a timeout, a broken body);
#: tried again at the next sync.
AttachmentState = Literal["stored", "skipped", "refused", "failed"]
ATTACHMENT_STATES: Final[tuple[AttachmentState, ...]] = get_args(AttachmentState)

#: Why an attachment is ``skipped``, ``refused`` or ``failed`` (``stored`` has no reason).
AttachmentReason = Literal[
    "too_large",
    "connection_cap",
    "type_not_allowed",
    "type_mismatch",
    "not_granted",
    "outside_base",
    "unusable_url",
    "bad_data",
    "denied",
    "not_found",
    "http_error",
    "transient",
]
ATTACHMENT_REASONS: Final[tuple[AttachmentReason, ...]] = get_args(AttachmentReason)
#: Resource types whose attachments syncsvc fetches, and the element that holds them.
ATTACHMENT_ELEMENTS: Final = {"DocumentReference": "content", "DiagnosticReport": "presentedForm"}

# --- runs and refreshes --------------------------------------------------------------------

#: A sync run as stored (``running`` until it ends; ``partial``: some types denied or in error).
RunOutcome = Literal["running", "ok", "partial", "transient", "misbound", "reauth", "error"]
RUN_OUTCOMES: Final[tuple[RunOutcome, ...]] = get_args(RunOutcome)
#: What a pull reports: a finished run's outcome, or ``inactive`` (the connection was not in a
#: syncing status, so no run was started or stored).
PullOutcome = Literal["ok", "partial", "transient", "misbound", "reauth", "error", "inactive"]
PULL_OUTCOMES: Final[tuple[PullOutcome, ...]] = get_args(PullOutcome)
#: Outcomes of a run that got through every type it could.
SUCCESSFUL_RUN_OUTCOMES: Final[frozenset[PullOutcome]] = frozenset({"ok", "partial"})
#: Outcomes of a run that a failure ended before every type was pulled.
STOPPED_RUN_OUTCOMES: Final[frozenset[PullOutcome]] = frozenset(
    {"transient", "misbound", "reauth", "error"}
)

RefreshOutcome = Literal[
    "refreshed", "not_due", "needs_reauth", "misbound", "transient", "lost_lease"
]
REFRESH_OUTCOMES: Final[tuple[RefreshOutcome, ...]] = get_args(RefreshOutcome)

# --- failures ------------------------------------------------------------------------------

#: How syncsvc reads a FHIR server's non-2xx answer
#: (:func:`syncsvc.smart.vendor_errors.classify_fhir_failure`). A kind that is also a
#: :data:`HealthClass` counts under that class in tenant health.
FhirFailureKind = Literal[
    "tenant_mismatch",
    "insufficient_scope",
    "invalid_token",
    "bad_request",
    "not_found",
    "gone",
    "throttled",
    "upstream_5xx",
    "forbidden",
    "unexpected",
]
FHIR_FAILURE_KINDS: Final[tuple[FhirFailureKind, ...]] = get_args(FhirFailureKind)
#: The EHR turning down one query for a reason of its own (a 400 missing parameter, a plain
#: 403, a 404, a 410, another 4xx): it ends only the type asked for, and counts as ``refused``.
REFUSAL_KINDS: Final[frozenset[FhirFailureKind]] = frozenset(
    {"bad_request", "forbidden", "not_found", "gone", "unexpected"}
)

# --- tenant health -------------------------------------------------------------------------

HealthStatus = Literal["ok", "degraded", "failing"]
#: Best first: ``worst`` of several is the one with the highest index.
HEALTH_STATUSES: Final[tuple[HealthStatus, ...]] = get_args(HealthStatus)

#: Error classes of events, the ones tenant health is computed from (``refused``: the EHR turned
#: down one query for a reason of its own, a 400 missing parameter, a plain 403, a 404;
#: ``scope_withdrawn``: a refresh narrowed a grant).
HealthClass = Literal[
    "tenant_mismatch",
    "patient_mismatch",
    "offline_access_not_granted",
    "insufficient_scope",
    "invalid_grant",
    "throttled",
    "upstream_5xx",
    "timeout",
    "foreign_next_link",
    "compartment_violation",
    "paging_loop",
    "malformed",
    "network",
    "refused",
    "scope_withdrawn",
]
HEALTH_CLASSES: Final = frozenset(get_args(HealthClass))

# --- webhooks ------------------------------------------------------------------------------

WebhookEvent = Literal[
    "sync.completed",
    "connection.needs_reauth",
    "connection.misbound",
    "connection.no_access",
    "connection.scopes_changed",
]
WEBHOOK_EVENTS: Final[tuple[WebhookEvent, ...]] = get_args(WebhookEvent)

# --- launch failure kinds ------------------------------------------------------------------

#: What a failed launch's counted reason says about who must act.
FailureKind = Literal["patient_choice", "browser", "registration", "misbound", "other"]

#: Codes that come from how the application is registered at the EHR, not from the patient:
#: Cerner answers a standalone patient launch of an app registered for clinicians
#: (provider persona) or for EHR launch with these.
REGISTRATION_CODES = frozenset(
    {"missing-patient", "invalid-launch-code", "client-persona-mismatch"}
)
#: The patient said no: their right, and no sign of a problem.
PATIENT_CHOICE_CODES = frozenset({"access_denied"})
#: A callback opened again, too late or in another browser: the launch itself may have worked.
BROWSER_CODES = frozenset({"state_replayed", "state_expired", "state_browser_mismatch"})
MISBOUND_CODES = frozenset({"tenant_mismatch", "patient_mismatch"})


def kind_of(reason: str) -> FailureKind:
    """What kind of failure a counted reason is."""
    if reason in REGISTRATION_CODES or "persona" in reason:
        return "registration"
    if reason in PATIENT_CHOICE_CODES:
        return "patient_choice"
    if reason in BROWSER_CODES:
        return "browser"
    if reason in MISBOUND_CODES:
        return "misbound"
    return "other"


def is_registration_error(reason: str) -> bool:
    """Whether ``reason`` says the app's registration (persona, launch type) stopped the launch."""
    return kind_of(reason) == "registration"
