"""Tenant health rules, the figures beside them and the outcome chart: facts in, verdicts out."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from syncsvc.db.health_repo import ConnectionFacts, ErrorCount
from syncsvc.db.models.connections import Tenant
from syncsvc.health.chart import HEIGHT, outcome_chart
from syncsvc.health.figures import ErrorWindow, outcome_buckets, percentile, scope_grants
from syncsvc.health.report import build_health
from syncsvc.health.rules import (
    LAUNCH_FAILURES_DEGRADED,
    LAUNCH_FAILURES_FAILING,
    RULES,
    STATUSES,
    TRANSIENT_ERRORS_DEGRADED,
    TenantFacts,
    evaluate,
    worst,
)

NOW = dt.datetime(2026, 3, 1, 12, 30, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)
#: A healthy tenant: ten active connections made two days ago, synced a minute ago.
HEALTHY = TenantFacts(
    now=NOW,
    connections={"active": 10},
    last_sync_success_at=NOW - dt.timedelta(minutes=1),
    oldest_active_since=NOW - dt.timedelta(days=2),
    sync_lag_p95_seconds=600.0,
)


def _fired(facts: TenantFacts) -> list[str]:
    return [finding.rule for finding in evaluate(facts).findings]


def test_a_healthy_tenant_is_ok_by_the_all_clear_rule() -> None:
    verdict = evaluate(HEALTHY)
    assert (verdict.status, verdict.rule, verdict.findings) == ("ok", "all_clear", ())


def test_a_tenant_without_connections_is_ok() -> None:
    assert evaluate(TenantFacts(now=NOW)).status == "ok"


def test_rules_are_ordered_worst_first_with_unique_ids_and_descriptions() -> None:
    order = [STATUSES.index(rule.status) for rule in RULES]
    assert order == sorted(order, reverse=True)
    assert len({rule.id for rule in RULES}) == len(RULES)
    assert all(rule.description.endswith(".") for rule in RULES)
    assert {rule.status for rule in RULES} == {"failing", "degraded"}


def test_one_misbound_connection_fails_the_tenant() -> None:
    facts = replace(HEALTHY, connections={"active": 99, "misbound": 1})
    verdict = evaluate(facts)
    assert (verdict.status, verdict.rule) == ("failing", "misbound_connections")
    assert "1 connection(s) misbound" in verdict.reason


@pytest.mark.parametrize(
    ("needs_reauth", "active", "revoked", "expected"),
    [
        (5, 5, 0, ("failing", "reauth_majority")),  # exactly half
        (4, 6, 0, ("degraded", "reauth_wave")),  # 40 %
        (2, 8, 0, ("degraded", "reauth_wave")),  # exactly a fifth
        (1, 9, 0, ("ok", "all_clear")),  # 10 %: patients leave one by one
        (1, 9, 90, ("ok", "all_clear")),  # revoked connections do not dilute ...
        (5, 5, 90, ("failing", "reauth_majority")),  # ... nor count against
    ],
)
def test_the_share_needing_reauthorization(
    needs_reauth: int, active: int, revoked: int, expected: tuple[str, str]
) -> None:
    facts = replace(
        HEALTHY, connections={"active": active, "needs_reauth": needs_reauth, "revoked": revoked}
    )
    verdict = evaluate(facts)
    assert (verdict.status, verdict.rule) == expected


def test_no_successful_sync_for_a_day_fails_only_once_connections_are_old_enough() -> None:
    stale = replace(HEALTHY, last_sync_success_at=NOW - dt.timedelta(hours=25))
    assert evaluate(stale).rule == "no_recent_sync"
    never = replace(HEALTHY, last_sync_success_at=None)
    assert evaluate(never).rule == "no_recent_sync"
    assert "ever" in evaluate(never).reason
    # A tenant whose connections are all younger than a day is not judged on it yet.
    young = replace(never, oldest_active_since=NOW - dt.timedelta(hours=23))
    assert evaluate(young).status == "ok"
    # Nor a tenant without active connections.
    idle = replace(never, connections={"revoked": 4})
    assert evaluate(idle).status == "ok"
    recent = replace(HEALTHY, last_sync_success_at=NOW - dt.timedelta(hours=23))
    assert evaluate(recent).status == "ok"


def test_discovery_failing_without_a_document_fails_with_one_degrades() -> None:
    failing = replace(HEALTHY, discovery_error="503", has_discovery_document=False)
    assert (evaluate(failing).status, evaluate(failing).rule) == ("failing", "discovery_failing")
    stale = replace(HEALTHY, discovery_error="503", has_discovery_document=True)
    assert (evaluate(stale).status, evaluate(stale).rule) == ("degraded", "discovery_stale")


def test_transient_errors_degrade_from_the_threshold_and_only_transient_classes_count() -> None:
    below = {"throttled": TRANSIENT_ERRORS_DEGRADED - 1, "invalid_grant": 50}
    assert evaluate(replace(HEALTHY, errors_last_hour=below)).status == "ok"
    at = {"throttled": 1, "upstream_5xx": 1, "timeout": TRANSIENT_ERRORS_DEGRADED - 2}
    verdict = evaluate(replace(HEALTHY, errors_last_hour=at))
    assert (verdict.status, verdict.rule) == ("degraded", "transient_errors")
    assert "throttled x1" in verdict.reason
    # The last day alone does not count: the rule is about now.
    assert evaluate(replace(HEALTHY, errors_last_day={"throttled": 40})).status == "ok"


@pytest.mark.parametrize(
    "error_class", ["tenant_mismatch", "foreign_next_link", "compartment_violation", "paging_loop"]
)
def test_data_outside_the_binding_in_the_last_day_degrades(error_class: str) -> None:
    verdict = evaluate(replace(HEALTHY, errors_last_day={error_class: 1}))
    assert (verdict.status, verdict.rule) == ("degraded", "integrity_errors")
    assert error_class in verdict.reason


def test_insufficient_scope_in_the_last_day_degrades() -> None:
    verdict = evaluate(replace(HEALTHY, errors_last_day={"insufficient_scope": 2}))
    assert (verdict.status, verdict.rule) == ("degraded", "insufficient_scope")


def test_a_connection_in_error_degrades() -> None:
    verdict = evaluate(replace(HEALTHY, connections={"active": 9, "error": 1}))
    assert (verdict.status, verdict.rule) == ("degraded", "error_connections")


def test_sync_lag_over_six_hours_degrades() -> None:
    assert evaluate(replace(HEALTHY, sync_lag_p95_seconds=6 * 3600.0)).status == "ok"
    verdict = evaluate(replace(HEALTHY, sync_lag_p95_seconds=6 * 3600.0 + 1))
    assert (verdict.status, verdict.rule) == ("degraded", "sync_lag")


def test_the_worst_rule_decides_and_every_fired_rule_is_listed() -> None:
    facts = replace(
        HEALTHY,
        connections={"active": 8, "misbound": 1, "error": 1},
        errors_last_hour={"throttled": 5},
        discovery_error="timeout",
    )
    verdict = evaluate(facts)
    assert (verdict.status, verdict.rule) == ("failing", "misbound_connections")
    assert _fired(facts) == [
        "misbound_connections",
        "transient_errors",
        "error_connections",
        "discovery_stale",
    ]


def test_worst_of_statuses() -> None:
    assert worst([]) == "ok"
    assert worst(["ok", "degraded", "ok"]) == "degraded"
    assert worst(["degraded", "failing", "ok"]) == "failing"


def test_nearest_rank_percentiles() -> None:
    assert percentile([], 50) is None
    assert percentile([7.0], 95) == 7.0
    values = [float(n) for n in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 95) == 95.0
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def _connection(**overrides: object) -> ConnectionFacts:
    fields: dict[str, object] = {
        "tenant_id": "t",
        "status": "active",
        "status_reason": None,
        "created_at": NOW - dt.timedelta(days=2),
        "connected_at": NOW - dt.timedelta(days=2),
        "last_refresh_at": None,
        "last_success_at": None,
        "next_refresh_at": None,
        "requested_scopes": ("launch/patient", "offline_access", "patient/Observation.read"),
        "granted_scopes": ("launch/patient", "offline_access", "patient/Observation.read"),
        "has_refresh_token": True,
    }
    fields.update(overrides)
    return ConnectionFacts(**fields)  # type: ignore[arg-type]


def test_scope_report_counts_requests_and_grants() -> None:
    grants = scope_grants(
        [
            _connection(),
            # Epic leaves offline_access out of the scope string but issues a refresh token.
            _connection(granted_scopes=("launch/patient", "patient/Observation.read")),
            _connection(
                requested_scopes=("launch/patient", "patient/Condition.rs"),
                granted_scopes=("launch/patient",),
                has_refresh_token=False,
            ),
        ]
    )
    table = {g.scope: (g.requested, g.granted, g.trimmed) for g in grants}
    assert table == {
        "launch/patient": (3, 3, 0),
        "offline_access": (2, 2, 0),
        "patient/Condition.rs": (1, 0, 1),
        "patient/Observation.read": (2, 2, 0),
    }


def test_outcome_buckets_cover_the_last_24_hours() -> None:
    runs = [
        (NOW - dt.timedelta(minutes=5), "ok"),
        (NOW - dt.timedelta(minutes=20), "transient"),
        (NOW - dt.timedelta(hours=23), "partial"),
        (NOW - dt.timedelta(hours=24), "ok"),  # before the first bucket
        (NOW + dt.timedelta(hours=1), "ok"),  # clock skew: not drawn
    ]
    buckets = outcome_buckets(runs, NOW)
    assert len(buckets) == 24
    assert buckets[-1].start == NOW.replace(minute=0)
    assert buckets[0].start == NOW.replace(minute=0) - 23 * HOUR
    assert (buckets[-1].outcomes["ok"], buckets[-1].outcomes["transient"]) == (1, 1)
    assert buckets[0].outcomes["partial"] == 1
    assert sum(b.total for b in buckets) == 3


def test_error_window_sums_classes_and_insufficient_scope_per_type() -> None:
    window = ErrorWindow.of(
        [
            ErrorCount("t", "throttled", None, 2),
            ErrorCount("t", "insufficient_scope", "Condition", 3),
            ErrorCount("t", "insufficient_scope", "Observation", 1),
            ErrorCount("t", "insufficient_scope", None, 1),
        ]
    )
    assert window.by_class == {"insufficient_scope": 5, "throttled": 2}
    assert window.insufficient_scope_by_type == {"Condition": 3, "Observation": 1, "unknown": 1}
    assert window.total == 7


def _tenant() -> Tenant:
    return Tenant(
        id="t",
        name="acme",
        display_name="Acme",
        vendor="generic",
        endpoints={"token_endpoint": "https://ehr.example/token"},
        discovery_fetched_at=NOW - HOUR,
        discovery_error=None,
    )


def test_build_health_computes_lag_horizon_and_verdict() -> None:
    connections = [
        _connection(last_success_at=NOW - dt.timedelta(minutes=10), next_refresh_at=NOW + HOUR / 2),
        _connection(last_success_at=NOW - dt.timedelta(minutes=30), next_refresh_at=NOW + 2 * HOUR),
        # Never synced: its lag runs from when it was connected.
        _connection(next_refresh_at=NOW - HOUR),
        _connection(status="revoked", last_success_at=NOW, next_refresh_at=NOW),
    ]
    report = build_health(
        _tenant(),
        connections=connections,
        errors_hour=[ErrorCount("t", "throttled", None, 1)],
        errors_day=[ErrorCount("t", "throttled", None, 4)],
        now=NOW,
        runs=[(NOW, "ok")],
    )
    assert report.connections == {
        "active": 3,
        "no_access": 0,
        "needs_reauth": 0,
        "revoked": 1,
        "misbound": 0,
        "error": 0,
    }
    assert report.lag_connections == 3
    assert report.lag_p50_seconds == 1800.0
    assert report.lag_p95_seconds == 2 * 86400.0
    assert report.last_sync_success_at == NOW
    assert (report.refresh_earliest, report.refresh_latest) == (NOW - HOUR, NOW + 2 * HOUR)
    assert report.refresh_due_next_hour == 2  # the overdue one and the one in half an hour
    assert report.discovery_age_seconds == 3600.0
    # Lag over six hours (the never-synced connection) degrades the tenant.
    assert (report.status, report.verdict.rule) == ("degraded", "sync_lag")
    body = report.to_json()
    assert body["errors"]["last_day"]["total"] == 4
    assert body["sync_outcomes"]["buckets"][-1]["ok"] == 1


def test_chart_scales_to_the_busiest_hour_and_draws_nothing_when_idle() -> None:
    idle = outcome_chart(outcome_buckets([], NOW))
    assert (idle.bars, idle.peak, idle.runs) == ((), 0, 0)
    assert len(idle.labels) == 4
    busy = outcome_chart(
        outcome_buckets(
            [(NOW, "ok"), (NOW, "ok"), (NOW, "transient"), (NOW, "error"), (NOW - HOUR, "ok")], NOW
        )
    )
    assert busy.peak == 4
    latest = [bar for bar in busy.bars if bar.x == max(b.x for b in busy.bars)]
    assert [bar.css_class for bar in latest] == ["bar-ok", "bar-failed"]
    # Both halves of the busiest hour fill the plot, stacked from the bottom.
    assert sum(bar.height for bar in latest) == pytest.approx(HEIGHT - 14)
    assert latest[0].title.endswith("2 ok")


def test_refused_searches_in_the_last_day_degrade() -> None:
    verdict = evaluate(replace(HEALTHY, errors_last_day={"refused": 2}))
    assert (verdict.status, verdict.rule) == ("degraded", "refused_searches")
    assert "2 search(es) refused" in verdict.reason


def test_reauth_without_offline_access_does_not_ask_patients_back_where_it_is_never_granted() -> (
    None
):
    offline_only = {"reauth_offline_access": 3}
    counts = {"connections": {"active": 1, "needs_reauth": 3}}
    never = evaluate(TenantFacts(now=NOW, grants_offline_access=False, **counts, **offline_only))
    assert never.rule not in ("reauth_majority", "reauth_wave")
    granted = evaluate(TenantFacts(now=NOW, grants_offline_access=True, **counts, **offline_only))
    assert granted.rule == "reauth_majority"


def test_launch_failure_rules_count_only_what_points_at_the_tenant() -> None:
    noisy = evaluate(
        TenantFacts(now=NOW, launch_failures_last_day={"access_denied": 9, "state_replayed": 9})
    )
    assert noisy.status == "ok"
    mixed = evaluate(
        TenantFacts(
            now=NOW,
            launch_failures_last_day={"missing-patient": LAUNCH_FAILURES_DEGRADED},
            launches_succeeded_last_day=LAUNCH_FAILURES_DEGRADED,
        )
    )
    assert (mixed.status, mixed.rule) == ("degraded", "launch_failures")
    mostly_fine = evaluate(
        TenantFacts(
            now=NOW,
            launch_failures_last_day={"missing-patient": LAUNCH_FAILURES_DEGRADED},
            launches_succeeded_last_day=LAUNCH_FAILURES_DEGRADED + 1,
        )
    )
    assert mostly_fine.status == "ok"
    none_connect = evaluate(
        TenantFacts(now=NOW, launch_failures_last_day={"id_token_aud": LAUNCH_FAILURES_FAILING})
    )
    assert (none_connect.status, none_connect.rule) == ("failing", "launches_failing")


def test_a_tenant_where_no_connection_can_sync_is_never_ok() -> None:
    for statuses in ({"no_access": 2}, {"no_access": 1, "revoked": 3}, {"error": 1}):
        verdict = evaluate(replace(HEALTHY, connections=statuses))
        assert verdict.status == "failing", statuses
        assert "nothing_can_sync" in [f.rule for f in verdict.findings]
    # Only revoked connections: nothing is expected to sync.
    assert evaluate(replace(HEALTHY, connections={"revoked": 2})).status == "ok"


def test_no_access_connections_degrade_a_tenant_that_still_syncs() -> None:
    verdict = evaluate(replace(HEALTHY, connections={"active": 9, "no_access": 1}))
    assert (verdict.status, verdict.rule) == ("degraded", "no_access_connections")


def test_missing_offline_access_degrades_only_where_the_tenant_offers_it() -> None:
    facts = replace(HEALTHY, without_offline_access=2)
    assert evaluate(facts).status == "ok"  # the tenant never grants offline access
    verdict = evaluate(replace(facts, offline_access_advertised=True))
    assert (verdict.status, verdict.rule) == ("degraded", "offline_access_not_granted")
    assert "2 connection(s)" in verdict.reason


def test_withdrawn_types_degrade_a_tenant() -> None:
    verdict = evaluate(replace(HEALTHY, withdrawn_types={"Condition": 3, "Goal": 0}))
    assert (verdict.status, verdict.rule) == ("degraded", "withdrawn_types")
    assert verdict.reason.endswith("(Condition x3).")
