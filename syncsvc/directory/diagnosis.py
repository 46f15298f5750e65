"""Tenant diagnosis: the likely causes behind what a tenant's launches and grants show.

Health says *that* a tenant is unwell; these findings say *why it probably is*, in plain words an
operator can act on, from what syncsvc holds: the discovery document, the scopes requested and
granted per connection (here and at other tenants with the same client), failed launches and
misbound grants. ``syncsvc tenants check NAME`` prints them; tenant health lists them beside its
verdict; ``tenants add`` warns about the discovery ones at once.

Findings never decide a tenant's status on their own (the health rules do); they explain it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from syncsvc.db.health_repo import ConnectionFacts
from syncsvc.smart.scopes import grant_report, parse_scope
from syncsvc.vocabulary import kind_of

OFFLINE_ACCESS = "offline_access"
PERMISSION_OFFLINE = "permission-offline"


@dataclass(frozen=True)
class Finding:
    """One likely cause, with its stable id and the evidence in numbers."""

    id: str
    message: str

    def to_json(self) -> dict[str, str]:
        """JSON-ready."""
        return {"id": self.id, "message": self.message}


@dataclass(frozen=True)
class Evidence:
    """What the findings are drawn from, for one tenant."""

    display_name: str
    #: Whether a discovery document is held; what it advertises.
    discovered: bool
    scopes_supported: tuple[str, ...] | None
    capabilities: tuple[str, ...]
    #: The tenant's own connections (revoked ones included: their grant still tells).
    connections: Sequence[ConnectionFacts] = ()
    #: Types granted at other tenants with the same client id: type → those tenants' names.
    granted_elsewhere: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: Failed launches of the last day by reason.
    launch_failures: Mapping[str, int] = field(default_factory=dict)
    #: tenant-mismatch seen in the last day (refreshes, runs) besides misbound connections.
    mismatch_events: int = 0


def granted_types(connections: Iterable[ConnectionFacts]) -> tuple[Counter[str], Counter[str]]:
    """Per resource type: connections that requested it, and connections granted it."""
    requested: Counter[str] = Counter()
    granted: Counter[str] = Counter()
    for connection in connections:
        report = grant_report(
            connection.requested_scopes,
            connection.granted_scopes,
            has_refresh_token=connection.has_refresh_token,
        )
        for scope in report.requested:
            parsed = parse_scope(scope)
            if parsed is not None and parsed.resource_type != "*":
                requested[parsed.resource_type] += 1
        granted.update(report.synced_types)
    return requested, granted


def discovery_findings(
    display_name: str, scopes_supported: Sequence[str] | None, capabilities: Sequence[str]
) -> list[Finding]:
    """What the discovery document alone says about patient access (also ``tenants add``)."""
    found: list[Finding] = []
    if scopes_supported is not None:
        patient_scopes = [
            s
            for s in scopes_supported
            if (p := parse_scope(s)) is not None and p.context == "patient"
        ]
        if not patient_scopes:
            found.append(
                Finding(
                    "no_patient_scopes",
                    f"{display_name}'s discovery advertises no patient resource scopes "
                    "(scopes_supported has no patient/...): patients can share nothing but "
                    "their identity. The registration or the server's configuration lacks "
                    "patient access.",
                )
            )
    no_offline_scope = scopes_supported is not None and OFFLINE_ACCESS not in scopes_supported
    no_offline_capability = bool(capabilities) and PERMISSION_OFFLINE not in capabilities
    if no_offline_scope or no_offline_capability:
        missing = " and ".join(
            name
            for name, gone in (
                ("offline_access in scopes_supported", no_offline_scope),
                ("permission-offline in capabilities", no_offline_capability),
            )
            if gone
        )
        found.append(
            Finding(
                "no_offline_access",
                f"{display_name}'s discovery lacks {missing}: grants will likely come without a "
                "refresh token, so records are read only while a patient's sign-in lasts and "
                "background sync ends when it expires.",
            )
        )
    return found


def diagnose(evidence: Evidence) -> list[Finding]:
    """Every finding for one tenant, most fundamental first."""
    name = evidence.display_name
    found: list[Finding] = []
    if not evidence.discovered:
        found.append(
            Finding(
                "not_discovered",
                f"No discovery document is held for {name}: nothing can be checked against it "
                "until discovery succeeds (at `tenants add` or the first launch).",
            )
        )
    found += discovery_findings(name, evidence.scopes_supported, evidence.capabilities)
    found += _grant_findings(evidence)
    found += _launch_findings(evidence)
    return found


def _grant_findings(evidence: Evidence) -> list[Finding]:
    name = evidence.display_name
    requested, granted = granted_types(evidence.connections)
    never = sorted(t for t, n in requested.items() if n and not granted[t])
    found: list[Finding] = []
    local = [t for t in never if not evidence.granted_elsewhere.get(t)]
    if local:
        found.append(
            Finding(
                "types_never_granted",
                f"{', '.join(local)} requested but granted to no connection at {name} "
                f"({requested[local[0]]} asked): the app's registration likely lacks these scopes "
                "at this tenant (Oracle Health propagates registration changes per tenant and "
                "domain).",
            )
        )
    for resource_type in never:
        elsewhere = evidence.granted_elsewhere.get(resource_type)
        if elsewhere:
            found.append(
                Finding(
                    "registration_not_propagated",
                    f"{resource_type} is granted to this client at {', '.join(elsewhere)} but "
                    f"never at {name}: the registration change has likely not reached this "
                    "tenant; ask the EHR to propagate the app's scopes here.",
                )
            )
    return found


def _launch_findings(evidence: Evidence) -> list[Finding]:
    name = evidence.display_name
    found: list[Finding] = []
    registration = {
        r: n for r, n in evidence.launch_failures.items() if n and kind_of(r) == "registration"
    }
    if registration:
        listed = ", ".join(f"{r} x{n}" for r, n in sorted(registration.items()))
        found.append(
            Finding(
                "launch_registration",
                f"Launches at {name} fail with {listed} in the last day: the app is likely "
                "registered for clinicians (provider persona) or for launch from inside the "
                "EHR, not for standalone patient launch. Fix the registration; patients cannot.",
            )
        )
    misbound = sum(1 for c in evidence.connections if c.status == "misbound")
    at_launch = evidence.launch_failures.get("tenant_mismatch", 0)
    if misbound or at_launch or evidence.mismatch_events:
        found.append(
            Finding(
                "tenant_mismatch",
                f"{name} issued grants for another tenant ({misbound} misbound connection(s), "
                f"{at_launch} launch(es) and {evidence.mismatch_events} refresh or sync "
                "answer(s) in the last day): the client registration is likely the wrong one "
                "(production versus sandbox), or the token endpoint used is another tenant's.",
            )
        )
    return found


def findings_json(findings: Iterable[Finding]) -> list[dict[str, Any]]:
    """JSON-ready findings."""
    return [f.to_json() for f in findings]
