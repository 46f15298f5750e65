"""Per-type and per-run outcomes of a pull when the EHR refuses, misbehaves or breaks."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from prometheus_client import generate_latest
from sqlalchemy.ext.asyncio import AsyncSession

from syncsvc.db import repo, resource_repo, run_repo
from syncsvc.sandbox.config import SandboxConfig
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.sync.context import SyncContext
from syncsvc.sync.pull import TYPES_AT_ONCE, pull_connection
from tests.fixtures.sandbox import CERNER_TENANT, GENERIC_TENANT
from tests.integration.connected import connect_patient, register_sandbox_tenant
from tests.integration.operators.exposition import parse

from . import NANCY, MintedTokens, SandboxAdmin, StoredTokens, ids_of, stored

TYPES = ("Patient", "Condition", "Observation", "Goal")
SCOPES = " ".join(f"patient/{t}.read" for t in TYPES)
# The sandbox's answer time in the side-by-side test: searches asked for together still start
# well within one answer of each other on a loaded machine.
LATENCY_MS = 600


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """Nancy with a few pages of Conditions and Observations."""
    for tenant in sandbox_config.tenants:
        tenant.patients[0].sizes = {"Condition": 25, "Observation": 250, "Goal": 4}
    return sandbox_config


async def _connected(
    ctx: SyncContext, sandbox: RunningSandbox, sandbox_tenant: str = GENERIC_TENANT
) -> StoredTokens:
    tenant = await register_sandbox_tenant(
        ctx.sessionmaker, ctx.vault, ctx.http, sandbox, sandbox_tenant, resource_types=TYPES
    )
    connection = await connect_patient(
        ctx.sessionmaker, ctx.vault, ctx.http, sandbox, tenant, sandbox_tenant=sandbox_tenant
    )
    return StoredTokens(ctx, connection, tenant)


async def test_insufficient_scope_denies_one_type_until_the_grant_changes(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    connection = (await _connected(ctx, sandbox)).connection
    # The EHR recorded Goal in the grant but its tokens do not carry it.
    narrow = MintedTokens(sandbox, GENERIC_TENANT, NANCY, SCOPES.replace("patient/Goal.read", ""))

    first = await pull_connection(ctx, connection.id, narrow)

    assert first.outcome == "partial"
    assert first.types["Goal"].status == "denied"
    assert first.types["Goal"].error_class == "insufficient_scope"
    assert {first.types[t].status for t in ("Patient", "Condition", "Observation")} == {"ok"}
    rows = await stored(ctx, connection.id)
    assert len(ids_of(rows, "Condition")) == 25
    assert not ids_of(rows, "Goal")
    mark = len(await admin.requests())

    again = await pull_connection(ctx, connection.id, narrow)

    assert again.types["Goal"].status == "skipped"
    assert not [e for e in await admin.requests(mark) if "/Goal?" in e["url"]]
    # A new grant (the patient reconnected with Goal) lifts the denial. The connection asked in
    # v1 or v2 as the sandbox advertises; the new grant spells Goal both ways, so it differs.
    async with ctx.sessionmaker.begin() as session:
        row = await repo.get_connection(session, connection.id)
        assert row is not None
        others = [scope for scope in row.granted_scopes if "/Goal." not in scope]
        row.granted_scopes = [*others, "patient/Goal.read", "patient/Goal.rs"]
    full = MintedTokens(sandbox, GENERIC_TENANT, NANCY, SCOPES)
    regranted = await pull_connection(ctx, connection.id, full, types=["Goal"])
    assert regranted.types["Goal"].status == "ok"
    assert regranted.types["Goal"].counts.new == 4


@pytest.mark.parametrize("ctx", ["in-place", "worker"], indirect=True)
async def test_a_next_link_to_another_origin_stops_the_type_and_the_token_stays_home(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox)
    await admin.faults(GENERIC_TENANT, [{"kind": "next_foreign", "target": "Observation"}])

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    observation = summary.types["Observation"]
    assert summary.outcome == "partial"
    assert observation.status == "error"
    assert observation.error_class == "foreign_next_link"
    assert observation.counts.new == 100  # the first page, from the right origin
    assert summary.types["Goal"].status == "ok"  # later types carried on
    log = await admin.requests()
    home = urlsplit(sandbox.origin).netloc
    assert all(urlsplit(entry["url"]).netloc == home for entry in log)
    # Every request syncsvc made is in the sandbox's log: none went anywhere else.
    fhir = [e for e in log if e["tenant_id"] == GENERIC_TENANT and "/admin/" not in e["url"]]
    assert len([e for e in fhir if e["token_id"]]) == summary.requests
    async with ctx.sessionmaker() as session:
        states = await run_repo.sync_states(session, tokens.connection.id)
    assert states["Observation"].status == "error"
    assert states["Observation"].watermark is None  # the type did not complete


@pytest.mark.parametrize("ctx", ["in-place", "worker"], indirect=True)
async def test_a_next_link_equal_to_the_page_itself_stops_the_type(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox)
    await admin.faults(GENERIC_TENANT, [{"kind": "next_self", "target": "Observation"}])

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.types["Observation"].status == "error"
    assert summary.types["Observation"].error_class == "paging_loop"
    assert summary.types["Observation"].counts.new == 100
    obs_requests = [e for e in await admin.requests() if "/Observation?" in e["url"]]
    assert len(obs_requests) == 1  # the loop was seen before the page was fetched again


@pytest.mark.parametrize("ctx", ["in-place", "worker"], indirect=True)
async def test_another_patients_entry_is_rejected_counted_and_never_stored(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox)
    await admin.faults(
        GENERIC_TENANT, [{"kind": "foreign_patient_entry", "target": "Condition", "count": 1}]
    )

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    condition = summary.types["Condition"]
    assert summary.outcome == "ok"
    assert condition.counts.rejected == 1
    assert condition.counts.new == 25
    assert len(condition.rejected) == 1
    rejected_id = condition.rejected[0].split("/", 1)[1]
    rows = await stored(ctx, tokens.connection.id)
    assert ("Condition", rejected_id) not in rows
    assert ids_of(rows, "Condition") == await admin.ids(GENERIC_TENANT, NANCY, "Condition")
    async with ctx.sessionmaker() as session:
        run = await run_repo.get_run(session, summary.run_id or "")
    assert run is not None
    assert run.rejected_count == 1
    assert run.type_results["Condition"]["rejected_ids"] == condition.rejected


async def test_tenant_mismatch_makes_the_connection_misbound_and_stops(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    connection = (await _connected(ctx, sandbox, CERNER_TENANT)).connection
    foreign = MintedTokens(sandbox, CERNER_TENANT, NANCY, SCOPES, host="fhir.other.example")

    summary = await pull_connection(ctx, connection.id, foreign)

    assert summary.outcome == "misbound"
    assert summary.error_class == "tenant_mismatch"
    assert summary.requests == 1
    assert foreign.forced == 0  # not retried with another token
    async with ctx.sessionmaker() as session:
        row = await repo.get_connection(session, connection.id)
    assert row is not None
    assert (row.status, row.status_reason) == ("misbound", "tenant_mismatch")
    assert row.status_message
    assert row.last_success_at is None
    assert row.last_sync_at == summary.finished_at
    later = await pull_connection(ctx, connection.id, foreign)
    assert later.outcome == "inactive"
    fhir = [e for e in await admin.requests() if e["tenant_id"] and e["token_id"]]
    assert len(fhir) == 1  # the refused one; nothing after the connection was misbound


@pytest.mark.parametrize("ctx", ["in-place", "worker"], indirect=True)
@pytest.mark.parametrize(
    ("fault", "count", "reason"),
    [
        ("status_502", 1, "http_502"),
        ("status_503", 2, "http_503"),
        ("status_504", 1, "http_504"),
        ("throttle", 1, "http_429"),
        ("truncated", 1, "reset"),
        ("reset_mid_body", 1, "reset"),
        # aiohttp quietly retries a request once when a reused connection is reset.
        ("reset", 2, "reset"),
    ],
)
async def test_a_passing_failure_is_retried_in_place_and_the_run_completes(
    ctx: SyncContext,
    sandbox: RunningSandbox,
    admin: SandboxAdmin,
    fault: str,
    count: int,
    reason: str,
) -> None:
    tokens = await _connected(ctx, sandbox)
    await admin.faults(GENERIC_TENANT, [{"kind": fault, "target": "Observation", "count": count}])

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "ok"
    assert {r.status for r in summary.types.values()} == {"ok"}
    assert summary.retries.get(reason, 0) >= 1
    assert set(summary.retries) == {reason}
    assert len(await stored(ctx, tokens.connection.id)) == 1 + 25 + 250 + 4
    async with ctx.sessionmaker() as session:
        assert summary.run_id is not None
        run = await run_repo.get_run(session, summary.run_id)
    assert run is not None
    assert run.retries == sum(summary.retries.values())
    # Every retry went out as a request of its own: three pages and the failed tries.
    log = await admin.requests()
    observations = [e for e in log if "/Observation" in e["url"] and e["token_id"]]
    assert len(observations) == 3 + count
    # aiohttp's own retry of a reset request is not ours to count.
    assert sum(summary.retries.values()) == (1 if fault == "reset" else count)


@pytest.mark.parametrize("ctx", ["in-place", "worker"], indirect=True)
@pytest.mark.parametrize(
    ("fault", "error_class"),
    [
        ("malformed_json", "transient"),
        ("status_500", "upstream_5xx"),
        ("status_503", "upstream_5xx"),
        ("reset_mid_body", "reset"),
    ],
)
async def test_a_type_that_keeps_failing_ends_alone_and_the_rest_of_the_record_is_stored(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin, fault: str, error_class: str
) -> None:
    tokens = await _connected(ctx, sandbox)
    # Persistent: every retry in place fails too.
    await admin.faults(GENERIC_TENANT, [{"kind": fault, "target": "Observation"}])

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "partial"
    observation = summary.types["Observation"]
    assert observation.status == "transient_error"
    assert observation.error_class == error_class
    assert observation.next_attempt_at is not None
    assert observation.next_attempt_at > summary.finished_at
    # Every other type started and finished.
    assert {t: r.status for t, r in summary.types.items() if t != "Observation"} == {
        "Patient": "ok",
        "Condition": "ok",
        "Goal": "ok",
    }
    rows = await stored(ctx, tokens.connection.id)
    assert (len(ids_of(rows, "Condition")), len(ids_of(rows, "Goal"))) == (25, 4)
    async with ctx.sessionmaker() as session:
        states = await run_repo.sync_states(session, tokens.connection.id)
        connection = await repo.get_connection(session, tokens.connection.id)
    assert states["Observation"].status == "transient_error"
    assert states["Observation"].watermark is None  # the type did not complete
    assert states["Observation"].failure_count == 1
    assert states["Observation"].next_attempt_at == observation.next_attempt_at
    assert connection is not None
    assert connection.last_success_at == summary.finished_at
    assert connection.status == "active"
    # The connection is due again when the failed type is, before the sync interval is up.
    assert summary.next_due_at == observation.next_attempt_at

    await admin.faults(GENERIC_TENANT, [])
    retried = await pull_connection(ctx, tokens.connection.id, tokens, types=["Observation"])

    assert retried.outcome == "ok"
    assert retried.types["Observation"].counts.new == 250
    async with ctx.sessionmaker() as session:
        states = await run_repo.sync_states(session, tokens.connection.id)
    assert states["Observation"].status == "ok"
    assert (states["Observation"].failure_count, states["Observation"].next_attempt_at) == (0, None)
    assert len(await stored(ctx, tokens.connection.id)) == 1 + 25 + 250 + 4


async def test_a_run_that_fails_on_its_first_type_starts_no_other(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox)
    # A 429 asking for a minute: not waited out in place, and it speaks for the whole tenant.
    await admin.faults(
        GENERIC_TENANT,
        [{"kind": "throttle", "target": "Patient", "count": 1, "retry_after": 60}],
    )

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "transient"
    assert summary.retry_after == 60
    assert summary.retries == {}
    assert list(summary.types) == ["Patient"]
    assert summary.types["Patient"].status == "incomplete"
    assert summary.stopped_type == "Patient"
    fhir = [e["url"] for e in await admin.requests() if e["tenant_id"] and e["token_id"]]
    assert len(fhir) == 1
    assert "/Patient/" in fhir[0]


async def test_types_are_pulled_side_by_side_once_the_first_was_answered(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox)
    # Every answer takes 600 ms: one type after another, each search's first page would be asked
    # for only after the one before it was answered, at least 600 ms apart; side by side they
    # are asked for while the others still wait for their answers.
    await admin.faults(GENERIC_TENANT, [{"kind": "latency", "latency_ms": LATENCY_MS}])

    answer = LATENCY_MS / 1000
    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "ok", summary
    assert list(summary.types) == ["Patient", "Condition", "Observation", "Goal"]
    log = [e for e in await admin.requests() if e["tenant_id"] and e["token_id"]]
    patient = next(e for e in log if "/Patient/" in e["url"])
    firsts = {
        name: min(e["at"] for e in log if f"/{name}?" in e["url"])
        for name in ("Condition", "Observation", "Goal")
    }
    # The others waited for the Patient's answer (a refused token goes out once)...
    assert all(at >= patient["at"] + answer - 0.01 for at in firsts.values())
    # ...then the first TYPES_AT_ONCE were asked for before any of them was answered: they
    # overlapped. (A bound of one answer's latency, not a speed: in sequence they could not be
    # closer than that however fast the machine.)
    started = sorted(firsts.values())[: TYPES_AT_ONCE - 1]
    assert started[-1] - started[0] < answer


async def test_an_unexpected_error_in_the_first_type_ends_the_run_before_any_other(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = await _connected(ctx, sandbox)
    real = resource_repo.has_resources

    async def broken(session: AsyncSession, connection_id: str, resource_type: str) -> bool:
        if resource_type == "Patient":
            raise RuntimeError("the database broke")
        return await real(session, connection_id, resource_type)

    monkeypatch.setattr(resource_repo, "has_resources", broken)

    with pytest.raises(RuntimeError, match="the database broke"):
        await pull_connection(ctx, tokens.connection.id, tokens)

    fhir = [e["url"] for e in await admin.requests() if e["tenant_id"] and e["token_id"]]
    assert not [url for url in fhir if "?" in url]  # no search began


@pytest.mark.parametrize("ctx", ["in-place", "worker"], indirect=True)
async def test_an_access_token_expiring_mid_pull_is_replaced_once(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin
) -> None:
    tokens = await _connected(ctx, sandbox, CERNER_TENANT)

    async def expire_after_third_request(call: int) -> None:
        if call == 4:
            # Cerner's tokens live 570 s: ten minutes pass between two pages.
            await admin.advance_clock(600)

    tokens.before_call = expire_after_third_request

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    assert summary.outcome == "ok", summary
    assert tokens.forced == summary.forced_refreshes == 1
    rows = await stored(ctx, tokens.connection.id)
    for resource_type in ("Condition", "Observation", "Goal"):
        assert ids_of(rows, resource_type) == await admin.ids(CERNER_TENANT, NANCY, resource_type)
    refused = [e for e in await admin.requests() if e["status"] == 401]
    # The requests in flight when it expired (types are pulled side by side), each retried once
    # with the one replacement.
    assert 1 <= len(refused) <= TYPES_AT_ONCE
    assert len({e["url"] for e in refused}) == len(refused)

    # The metrics say the same, counted in this process (pages decoded by a worker process
    # included): each refused request and its one retry, every stored resource, the run.
    m = parse(generate_latest(ctx.metrics.registry).decode())
    assert m.total("syncsvc_ehr_requests_total", status="401") == len(refused)
    assert m.total("syncsvc_ehr_requests_total") == summary.requests
    assert m.total("syncsvc_ehr_retries_total", reason="invalid_token") == len(refused)
    assert m.total("syncsvc_ehr_retries_total") == len(refused)
    assert m.total("syncsvc_resources_stored_total", change="new") == len(rows) > 0
    assert m.total("syncsvc_sync_runs_total", outcome="ok") == 1


@pytest.mark.parametrize(
    "escape",
    [
        "/..;/..;/admin/grants",
        "/%252e%252e/%252e%252e/admin/grants",
        "/Observation/..;x=1/../../admin/grants",
        "/.%2e/.%2e/admin/grants",
    ],
)
async def test_a_next_link_escaping_the_base_by_encoded_dot_segments_gets_no_token(
    ctx: SyncContext, sandbox: RunningSandbox, admin: SandboxAdmin, escape: str
) -> None:
    """Same origin, a path that a Tomcat-style server or a decoding proxy reads as outside it."""
    tokens = await _connected(ctx, sandbox)
    await admin.faults(
        GENERIC_TENANT, [{"kind": "next_escape", "target": "Observation", "next_path": escape}]
    )

    summary = await pull_connection(ctx, tokens.connection.id, tokens)

    observation = summary.types["Observation"]
    assert observation.status == "error"
    assert observation.error_class == "foreign_next_link"
    assert observation.counts.new == 100  # the first page was fetched
    assert summary.types["Goal"].status == "ok"
    base = sandbox.urls(GENERIC_TENANT).fhir_base
    with_token = [e["url"] for e in await admin.requests() if e["token_id"]]
    assert with_token, "no FHIR request carried a token at all"
    for url in with_token:
        assert url.startswith(base + "/"), url
        assert ";" not in url, url
        assert "%25" not in url, url
        assert ".." not in url, url
