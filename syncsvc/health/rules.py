"""The documented rules that decide a tenant's health, and the rule that decided it.

Rules are checked in the order of :data:`RULES`: every ``failing`` rule comes before every
``degraded`` one, so the first rule that fires is the worst one and is reported as *the* rule that
decided the status; the others that fired are listed beside it. No rule firing means ``ok``.

Connections a patient revoked are not a health signal: they are left out of every share.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from syncsvc.sync.type_schedule import FAILING_AFTER, FAILING_AFTER_RUNS
from syncsvc.sync.type_words import tenant_type_sentence
from syncsvc.vocabulary import HEALTH_STATUSES, HealthStatus

Status = HealthStatus
STATUSES: tuple[Status, ...] = HEALTH_STATUSES

#: A share of needs_reauth connections at or above this fails the tenant ...
REAUTH_FAILING_SHARE = 0.5
#: ... and at or above this degrades it (patients leaving one by one is normal; a wave is not).
REAUTH_DEGRADED_SHARE = 0.2
#: Without a successful sync for this long (while connections should be syncing) the tenant fails.
NO_SYNC_FAILING = dt.timedelta(hours=24)
#: When the p95 sync lag over active connections exceeds this, the tenant is degraded.
SYNC_LAG_DEGRADED = dt.timedelta(hours=6)
#: Transient upstream errors in the last hour at or above this count degrade the tenant.
TRANSIENT_ERRORS_DEGRADED = 3
#: Error classes that say the EHR is slow, overloaded or broken right now (retried with backoff).
TRANSIENT_CLASSES = frozenset({"throttled", "upstream_5xx", "timeout", "network", "malformed"})
#: A resource type ``failing`` for at least this many active connections, and at least this
#: share of them, is said to fail at the tenant ("Condition searches fail at this tenant"):
#: one patient's broken record is that patient's; half a tenant's is the EHR's.
TYPE_FAILING_TENANT_MIN = 2
TYPE_FAILING_TENANT_SHARE = 0.5
#: Error classes where the EHR sent something outside the patient's binding (rejected by us).
INTEGRITY_CLASSES = frozenset(
    {
        "tenant_mismatch",
        "patient_mismatch",
        "foreign_next_link",
        "compartment_violation",
        "paging_loop",
    }
)
#: A connection's reason when its grant had no refresh token and its access token ran out.
OFFLINE_ACCESS_NOT_GRANTED = "offline_access_not_granted"
#: Failed launches in the last 24 h that count against a tenant (every reason except the
#: patient's own "no" and a reloaded, stale or foreign-browser callback) at or above this ...
LAUNCH_FAILURES_DEGRADED = 3
#: ... degrade it when they are at least this share of the launches finished in that time ...
LAUNCH_FAILURE_SHARE = 0.5
#: ... and at or above this many with no successful launch at all in that time fail it.
LAUNCH_FAILURES_FAILING = 5
#: Launch failure reasons that say nothing about the tenant (see syncsvc.vocabulary.kind_of).
LAUNCH_NOISE_REASONS = frozenset(
    {"access_denied", "state_replayed", "state_expired", "state_browser_mismatch"}
)


@dataclass(frozen=True)
class TenantFacts:
    """What the rules look at for one tenant (computed from the database by ``report``)."""

    now: dt.datetime
    #: Connections per status (every status of ``CONNECTION_STATUSES`` may be absent).
    connections: Mapping[str, int] = field(default_factory=dict)
    #: The newest ``last_success_at`` over the tenant's connections.
    last_sync_success_at: dt.datetime | None = None
    #: When the longest-standing active connection was made (grace for brand-new tenants).
    oldest_active_since: dt.datetime | None = None
    #: p95 of now - last success over active connections, in seconds.
    sync_lag_p95_seconds: float | None = None
    #: Errors by class in the last hour and in the last day (summed event counts).
    errors_last_hour: Mapping[str, int] = field(default_factory=dict)
    errors_last_day: Mapping[str, int] = field(default_factory=dict)
    discovery_error: str | None = None
    #: Whether a good discovery document is held (launches and refresh can still work).
    has_discovery_document: bool = True
    #: Active connections with each resource type ``failing`` (types failing nowhere absent).
    type_failures: Mapping[str, int] = field(default_factory=dict)
    #: needs_reauth connections whose only fault is a grant without offline access that ran out,
    #: and whether any connection of the tenant holds a refresh token (the tenant grants it).
    reauth_offline_access: int = 0
    grants_offline_access: bool = True
    #: Failed launches in the last 24 h by reason, and launches that connected in that time.
    launch_failures_last_day: Mapping[str, int] = field(default_factory=dict)
    launches_succeeded_last_day: int = 0

    @property
    def counted_launch_failures(self) -> dict[str, int]:
        """The last day's failed launches that count against the tenant, by reason."""
        return {
            reason: n
            for reason, n in self.launch_failures_last_day.items()
            if n and reason not in LAUNCH_NOISE_REASONS
        }

    #: Live connections holding no refresh token (active until their access token expires, or
    #: already ``needs_reauth`` for it).
    without_offline_access: int = 0
    #: Whether the tenant's discovery says it grants offline access (``offline_access`` in
    #: ``scopes_supported`` or the ``permission-offline`` capability).
    offline_access_advertised: bool = False
    #: Live connections per resource type whose type was ``withdrawn`` by a narrowed grant.
    withdrawn_types: Mapping[str, int] = field(default_factory=dict)

    def count(self, status: str) -> int:
        """Connections in ``status``."""
        return int(self.connections.get(status, 0))

    @property
    def live_connections(self) -> int:
        """Connections that have not been revoked by the patient."""
        return sum(n for status, n in self.connections.items() if status != "revoked")


@dataclass(frozen=True)
class Rule:
    """One health rule: what it means, the status it sets, and its check."""

    id: str
    status: Status
    description: str
    #: Returns why it fired (with the numbers), or ``None`` when it does not apply.
    check: Callable[[TenantFacts], str | None]


@dataclass(frozen=True)
class Finding:
    """A rule that fired, and why."""

    rule: str
    status: Status
    reason: str


@dataclass(frozen=True)
class Verdict:
    """A tenant's status, the rule that decided it, and every rule that fired."""

    status: Status
    rule: str
    reason: str
    findings: tuple[Finding, ...] = ()


def _misbound(facts: TenantFacts) -> str | None:
    n = facts.count("misbound")
    if n == 0:
        return None
    return f"{n} connection(s) misbound: the EHR answered for a different patient or server."


def _reauth_share(facts: TenantFacts, threshold: float) -> str | None:
    live = facts.live_connections
    n = facts.count("needs_reauth")
    if not facts.grants_offline_access:
        # The tenant never grants offline access: reconnecting would end the same way, so
        # those connections are not a wave of patients to ask back.
        live -= facts.reauth_offline_access
        n -= facts.reauth_offline_access
    if live <= 0 or n <= 0 or n / live < threshold:
        return None
    return f"{n} of {live} connections need the patient to reconnect ({n / live:.0%})."


def _reauth_majority(facts: TenantFacts) -> str | None:
    return _reauth_share(facts, REAUTH_FAILING_SHARE)


def _reauth_wave(facts: TenantFacts) -> str | None:
    return _reauth_share(facts, REAUTH_DEGRADED_SHARE)


def _no_recent_sync(facts: TenantFacts) -> str | None:
    if facts.count("active") == 0 or facts.oldest_active_since is None:
        return None
    if facts.now - facts.oldest_active_since < NO_SYNC_FAILING:
        return None  # every active connection is younger than the window: not yet due to judge
    last = facts.last_sync_success_at
    if last is not None and facts.now - last < NO_SYNC_FAILING:
        return None
    hours = int(NO_SYNC_FAILING.total_seconds() // 3600)
    since = "ever" if last is None else f"since {last.isoformat()}"
    return f"No successful sync in the last {hours} h ({since}) with active connections."


def _nothing_can_sync(facts: TenantFacts) -> str | None:
    live = facts.live_connections
    if live == 0 or facts.count("active") > 0:
        return None
    listed = ", ".join(
        f"{n} {status}"
        for status, n in sorted(facts.connections.items())
        if n and status not in ("revoked", "active")
    )
    return f"None of the {live} connection(s) can sync ({listed})."


def _no_access(facts: TenantFacts) -> str | None:
    n = facts.count("no_access")
    if n == 0:
        return None
    return (
        f"{n} connection(s) were granted no resource type syncsvc can read: the registration "
        "or the tenant's scope policy trims every resource scope."
    )


def _offline_access_not_granted(facts: TenantFacts) -> str | None:
    n = facts.without_offline_access
    if n == 0 or not facts.offline_access_advertised:
        return None
    return (
        f"{n} connection(s) hold no refresh token although the tenant advertises offline access: "
        "they stop syncing when their access token expires (check the registration's "
        "offline_access scope at this tenant)."
    )


def _withdrawn(facts: TenantFacts) -> str | None:
    hits = {t: n for t, n in facts.withdrawn_types.items() if n}
    if not hits:
        return None
    listed = ", ".join(f"{t} x{n}" for t, n in sorted(hits.items()))
    return f"Types withdrawn from grants at a refresh and no longer updated ({listed})."


def _discovery_failing(facts: TenantFacts) -> str | None:
    if facts.discovery_error is None or facts.has_discovery_document:
        return None
    return "Discovery fails and no good discovery document is held: launches cannot start."


def _discovery_stale(facts: TenantFacts) -> str | None:
    if facts.discovery_error is None or not facts.has_discovery_document:
        return None
    return "The last discovery failed; the last good document is still in use."


def _integrity(facts: TenantFacts) -> str | None:
    hits = {k: v for k, v in facts.errors_last_day.items() if k in INTEGRITY_CLASSES and v}
    if not hits:
        return None
    listed = ", ".join(f"{k} x{v}" for k, v in sorted(hits.items()))
    return f"The EHR sent data outside a patient's binding in the last day ({listed})."


def _transient(facts: TenantFacts) -> str | None:
    hits = {k: v for k, v in facts.errors_last_hour.items() if k in TRANSIENT_CLASSES and v}
    total = sum(hits.values())
    if total < TRANSIENT_ERRORS_DEGRADED:
        return None
    listed = ", ".join(f"{k} x{v}" for k, v in sorted(hits.items()))
    return f"{total} transient upstream errors in the last hour ({listed})."


def failing_at_tenant(connections: int, active: int) -> bool:
    """Whether a type failing for ``connections`` of ``active`` fails at the tenant itself."""
    return (
        connections >= TYPE_FAILING_TENANT_MIN
        and active > 0
        and connections / active >= TYPE_FAILING_TENANT_SHARE
    )


def _type_failing_at_tenant(facts: TenantFacts) -> str | None:
    active = facts.count("active")
    hits = [t for t, n in sorted(facts.type_failures.items()) if failing_at_tenant(n, active)]
    if not hits:
        return None
    return " ".join(tenant_type_sentence(t, facts.type_failures[t], active) for t in hits)


def _type_failing(facts: TenantFacts) -> str | None:
    hits = {t: n for t, n in sorted(facts.type_failures.items()) if n}
    if not hits:
        return None
    listed = ", ".join(f"{t} for {n}" for t, n in hits.items())
    return f"Resource types failing for some connections, retried every few hours ({listed})."


def _insufficient_scope(facts: TenantFacts) -> str | None:
    n = facts.errors_last_day.get("insufficient_scope", 0)
    if not n:
        return None
    return f"{n} request(s) refused for insufficient scope in the last day."


def _refused(facts: TenantFacts) -> str | None:
    n = facts.errors_last_day.get("refused", 0)
    if not n:
        return None
    return (
        f"{n} search(es) refused by the EHR in the last day (400/403/404/410: a query plan the "
        "EHR does not accept, or a type it does not serve)."
    )


def _launch_summary(failures: Mapping[str, int]) -> str:
    return ", ".join(f"{reason} x{n}" for reason, n in sorted(failures.items()))


def _launches_failing(facts: TenantFacts) -> str | None:
    failures = facts.counted_launch_failures
    total = sum(failures.values())
    if total < LAUNCH_FAILURES_FAILING or facts.launches_succeeded_last_day:
        return None
    return (
        f"{total} launches failed in the last 24 h and none succeeded "
        f"({_launch_summary(failures)}): no patient can connect."
    )


def _launch_failures(facts: TenantFacts) -> str | None:
    failures = facts.counted_launch_failures
    total = sum(failures.values())
    finished = total + facts.launches_succeeded_last_day
    if total < LAUNCH_FAILURES_DEGRADED or total / finished < LAUNCH_FAILURE_SHARE:
        return None
    return f"{total} of {finished} launches failed in the last 24 h ({_launch_summary(failures)})."


def _error_connections(facts: TenantFacts) -> str | None:
    n = facts.count("error")
    if n == 0:
        return None
    return f"{n} connection(s) stopped on an unexpected error."


def _sync_lag(facts: TenantFacts) -> str | None:
    lag = facts.sync_lag_p95_seconds
    if lag is None or lag <= SYNC_LAG_DEGRADED.total_seconds():
        return None
    hours = SYNC_LAG_DEGRADED.total_seconds() / 3600
    return f"p95 sync lag is {lag / 3600:.1f} h (over {hours:g} h)."


#: Every rule, worst first. The first that fires decides the status.
RULES: tuple[Rule, ...] = (
    Rule(
        "misbound_connections",
        "failing",
        "Any connection is misbound (the EHR answered for another patient or server).",
        _misbound,
    ),
    Rule(
        "reauth_majority",
        "failing",
        f"At least {REAUTH_FAILING_SHARE:.0%} of non-revoked connections need reauthorization.",
        _reauth_majority,
    ),
    Rule(
        "no_recent_sync",
        "failing",
        "Active connections exist, the oldest is over 24 h old, and no connection synced "
        "successfully in the last 24 h.",
        _no_recent_sync,
    ),
    Rule(
        "nothing_can_sync",
        "failing",
        "Connections exist (not revoked) and none of them is active: no connection can sync.",
        _nothing_can_sync,
    ),
    Rule(
        "discovery_failing",
        "failing",
        "Discovery fails and no good discovery document is held.",
        _discovery_failing,
    ),
    Rule(
        "launches_failing",
        "failing",
        f"At least {LAUNCH_FAILURES_FAILING} launches failed in the last 24 h (not counting a "
        "patient's own refusal or a reloaded callback) and none succeeded.",
        _launches_failing,
    ),
    Rule(
        "integrity_errors",
        "degraded",
        "The EHR sent data outside a patient's binding in the last day (tenant_mismatch, "
        "foreign_next_link, compartment_violation, paging_loop).",
        _integrity,
    ),
    Rule(
        "no_access_connections",
        "degraded",
        "Any connection was granted no resource type syncsvc can read (status no_access).",
        _no_access,
    ),
    Rule(
        "offline_access_not_granted",
        "degraded",
        "Any connection holds no refresh token while the tenant advertises offline access.",
        _offline_access_not_granted,
    ),
    Rule(
        "withdrawn_types",
        "degraded",
        "Any connection has a type withdrawn by a narrowed grant (its data no longer updated).",
        _withdrawn,
    ),
    Rule(
        "reauth_wave",
        "degraded",
        f"At least {REAUTH_DEGRADED_SHARE:.0%} of non-revoked connections need reauthorization.",
        _reauth_wave,
    ),
    Rule(
        "type_failing_at_tenant",
        "degraded",
        f"One resource type is failing for at least {TYPE_FAILING_TENANT_MIN} active "
        f"connections and {TYPE_FAILING_TENANT_SHARE:.0%} of them: its searches fail at this "
        "tenant.",
        _type_failing_at_tenant,
    ),
    Rule(
        "type_failing",
        "degraded",
        f"A resource type of some connection has kept failing for "
        f"{FAILING_AFTER.total_seconds() / 3600:g} h or {FAILING_AFTER_RUNS} attempts in a row "
        "(state failing); the rest of those records are still synced.",
        _type_failing,
    ),
    Rule(
        "transient_errors",
        "degraded",
        f"At least {TRANSIENT_ERRORS_DEGRADED} transient upstream errors (throttled, "
        "upstream_5xx, timeout, network, malformed) in the last hour.",
        _transient,
    ),
    Rule(
        "insufficient_scope",
        "degraded",
        "Any request was refused for insufficient scope in the last day.",
        _insufficient_scope,
    ),
    Rule(
        "refused_searches",
        "degraded",
        "The EHR refused a resource search outright in the last day (400, plain 403, 404, 410).",
        _refused,
    ),
    Rule(
        "launch_failures",
        "degraded",
        f"At least {LAUNCH_FAILURES_DEGRADED} launches failed in the last 24 h (not counting a "
        f"patient's own refusal or a reloaded callback), {LAUNCH_FAILURE_SHARE:.0%} or more of "
        "the launches finished in that time.",
        _launch_failures,
    ),
    Rule(
        "error_connections",
        "degraded",
        "Any connection stopped on an unexpected error.",
        _error_connections,
    ),
    Rule(
        "sync_lag",
        "degraded",
        "The p95 sync lag over active connections is over 6 h.",
        _sync_lag,
    ),
    Rule(
        "discovery_stale",
        "degraded",
        "The last discovery failed while a good document is still held.",
        _discovery_stale,
    ),
)
OK_RULE = "all_clear"
OK_REASON = "No health rule fired."


def evaluate(facts: TenantFacts, rules: Sequence[Rule] = RULES) -> Verdict:
    """The verdict of ``rules`` on ``facts``: the first rule that fires decides."""
    findings = tuple(
        Finding(rule.id, rule.status, reason)
        for rule in rules
        if (reason := rule.check(facts)) is not None
    )
    if not findings:
        return Verdict("ok", OK_RULE, OK_REASON)
    first = findings[0]
    return Verdict(first.status, first.rule, first.reason, findings)


def worst(statuses: Sequence[Status]) -> Status:
    """The worst of ``statuses`` (``ok`` for none)."""
    return max(statuses, key=STATUSES.index, default="ok")
