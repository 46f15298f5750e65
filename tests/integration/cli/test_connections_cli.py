"""``syncsvc connections list|show|sync|disconnect`` as an operator runs them: real processes."""

from __future__ import annotations

import aiohttp
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from syncsvc.db import repo
from syncsvc.db.models.connections import Connection, Credential
from syncsvc.db.models.records import Resource
from syncsvc.sandbox.config import FaultSpec
from syncsvc.sandbox.server import RunningSandbox
from syncsvc.settings import Settings
from syncsvc.sync.context import utcnow
from syncsvc.sync.credentials import load_tokens
from syncsvc.vault import Vault
from tests.fixtures.sandbox import GENERIC_TENANT
from tests.integration.cli.runner import syncsvc
from tests.integration.connected import connect_patient, register_sandbox_tenant

Sessionmaker = async_sessionmaker[AsyncSession]


async def _connected(
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
    *,
    user_id: str = "user-1",
    patient_id: str = "12724066",
) -> Connection:
    async with sessionmaker() as session:
        tenant = await repo.get_tenant_by_name(session, "generic")
    if tenant is None:
        tenant = await register_sandbox_tenant(
            sessionmaker, vault, http, sandbox, GENERIC_TENANT, name="generic"
        )
    return await connect_patient(
        sessionmaker,
        vault,
        http,
        sandbox,
        tenant,
        sandbox_tenant=GENERIC_TENANT,
        user_id=user_id,
        patient_id=patient_id,
    )


async def _count(sessionmaker: Sessionmaker, model: type[Resource | Credential], cid: str) -> int:
    async with sessionmaker() as session:
        total = await session.scalar(
            select(func.count()).select_from(model).where(model.connection_id == cid)
        )
    return total or 0


async def test_list_show_and_filters(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    nancy = await _connected(sessionmaker, vault, http, sandbox, user_id="u-1")
    wilma = await _connected(
        sessionmaker, vault, http, sandbox, user_id="u-2", patient_id="12742400"
    )
    synced = await syncsvc(settings, "connections", "sync", nancy.id, "--now")
    assert synced.code == 0, synced.stderr

    listed = await syncsvc(settings, "connections", "list", "--json")
    assert listed.code == 0, listed.stderr
    rows = listed.json()
    assert isinstance(rows, list)
    assert [row["id"] for row in rows] == [nancy.id, wilma.id]
    first = rows[0]
    assert set(first) >= {
        "id", "tenant", "user", "patient", "status", "reason", "granted_scopes",
        "last_success_at", "resource_counts",
    }  # fmt: skip
    assert first["tenant"] == "generic"
    assert first["user"] == "u-1"
    assert first["patient"] == "12724066"
    assert first["status"] == "active"
    assert first["reason"] is None
    assert "patient/Observation.rs" in first["granted_scopes"]
    assert first["last_success_at"] is not None
    assert first["resource_counts"]["Patient"] == 1
    assert rows[1]["resource_counts"] == {}
    assert rows[1]["last_success_at"] is None

    only = await syncsvc(settings, "connections", "list", "--user", "u-2", "--json")
    assert [row["id"] for row in only.json()] == [wilma.id]
    none = await syncsvc(settings, "connections", "list", "--status", "revoked", "--json")
    assert none.json() == []
    text = await syncsvc(settings, "connections", "list", "--tenant", "generic")
    assert text.code == 0
    assert f"{nancy.id}\tgeneric\tu-1\tactive\t" in text.stdout
    unknown_tenant = await syncsvc(settings, "connections", "list", "--tenant", "nope")
    assert unknown_tenant.code == 1
    assert "no tenant named 'nope'" in unknown_tenant.stderr
    bad_status = await syncsvc(settings, "connections", "list", "--status", "sleeping")
    assert bad_status.code == 2

    shown = await syncsvc(settings, "connections", "show", nancy.id, "--json")
    assert shown.code == 0, shown.stderr
    detail = shown.json()
    assert isinstance(detail, dict)
    assert detail["tokens"]["refresh_token"] is True
    assert detail["sync_states"]["Observation"]["status"] == "ok"
    assert detail["pending_revocations"] == []
    human = await syncsvc(settings, "connections", "show", nancy.id)
    assert "status          active" in human.stdout
    assert "tokens          refresh and access" in human.stdout
    stored = await _stored_tokens(sessionmaker, vault, nancy.id)
    for output in (shown.stdout, human.stdout, listed.stdout):
        assert all(token not in output for token in stored)


async def _stored_tokens(sessionmaker: Sessionmaker, vault: Vault, cid: str) -> list[str]:
    async with sessionmaker() as session:
        tokens = await load_tokens(session, vault, cid)
    assert tokens is not None
    return [t for t in (tokens.access_token, tokens.refresh_token) if t]


async def test_sync_marks_due_and_sync_now_works_it(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    connection = await _connected(sessionmaker, vault, http, sandbox)
    async with sessionmaker.begin() as session:
        row = await repo.get_connection(session, connection.id)
        assert row is not None
        row.next_sync_at = None
    due = await syncsvc(settings, "connections", "sync", connection.id)
    assert due.code == 0, due.stderr
    assert "due now" in due.stdout
    async with sessionmaker() as session:
        row = await repo.get_connection(session, connection.id)
    assert row is not None
    assert row.next_sync_at is not None
    assert row.next_sync_at <= utcnow()

    now = await syncsvc(settings, "connections", "sync", connection.id, "--now")
    assert now.code == 0, now.stderr
    report = now.json()
    assert isinstance(report, dict)
    assert report["connections"] == 1
    assert report["sync"] == {"ok": 1}
    assert report["resources"]["new"] > 0
    assert "syncing connection" in now.stderr
    assert await _count(sessionmaker, Resource, connection.id) == report["resources"]["new"]

    usage = await syncsvc(settings, "connections", "sync")
    assert usage.code == 2


async def test_disconnect_from_the_command_line(
    settings: Settings,
    sessionmaker: Sessionmaker,
    vault: Vault,
    http: aiohttp.ClientSession,
    sandbox: RunningSandbox,
) -> None:
    connection = await _connected(sessionmaker, vault, http, sandbox)
    assert (await syncsvc(settings, "connections", "sync", connection.id, "--now")).code == 0
    synced = await _count(sessionmaker, Resource, connection.id)
    sandbox.tenant(GENERIC_TENANT).faults.append(FaultSpec(kind="status_503", target="revoke"))

    kept = await syncsvc(settings, "connections", "disconnect", connection.id, "--keep-data")
    assert kept.code == 0, kept.stderr
    assert "tokens deleted" in kept.stdout
    assert "revocation pending" in kept.stdout
    assert f"data kept ({synced} resources)" in kept.stdout
    assert await _count(sessionmaker, Credential, connection.id) == 0
    assert await _count(sessionmaker, Resource, connection.id) == synced

    shown = await syncsvc(settings, "connections", "show", connection.id, "--json")
    detail = shown.json()
    assert isinstance(detail, dict)
    assert detail["status"] == "revoked"
    assert detail["reason"] == "disconnected_by_operator"
    assert detail["tokens"] is None
    [queued] = detail["pending_revocations"]
    assert queued["attempts"] == 1
    cannot = await syncsvc(settings, "connections", "sync", connection.id)
    assert cannot.code == 1
    assert "is revoked (disconnected_by_operator)" in cannot.stderr

    sandbox.tenant(GENERIC_TENANT).faults.clear()
    erased = await syncsvc(settings, "connections", "disconnect", connection.id, "--json")
    assert erased.code == 0, erased.stderr
    assert erased.json() == {
        "connection_id": connection.id,
        "tenant": "generic",
        "provider": "Generic SMART Sandbox",
        "already_disconnected": True,
        "tokens_deleted": False,
        "revocation": "pending",
        "data_erased": True,
        "resources_erased": synced,
        "resources_kept": 0,
    }
    assert await _count(sessionmaker, Resource, connection.id) == 0


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(("show", "no-such-id"), "no connection with id 'no-such-id'", id="show"),
        pytest.param(("sync", "no-such-id", "--now"), "no connection with id", id="sync-now"),
        pytest.param(
            ("disconnect", "no-such-id"), "no connection with id 'no-such-id'", id="disconnect"
        ),
    ],
)
async def test_an_unknown_connection_id_is_refused(
    settings: Settings, args: tuple[str, ...], expected: str
) -> None:
    missing = await syncsvc(settings, "connections", *args)
    assert missing.code == 1
    assert expected in missing.stderr
    assert "Traceback" not in missing.stderr


async def test_help_is_consistent(settings: Settings) -> None:
    top = await syncsvc(settings, "connections", "--help")
    assert top.code == 0
    for action in ("list", "show", "sync", "disconnect"):
        assert action in top.stdout
        shown = await syncsvc(settings, "connections", action, "--help")
        assert shown.code == 0, action
        assert shown.stdout.startswith(f"usage: syncsvc connections {action}")
    nothing = await syncsvc(settings, "connections")
    assert nothing.code == 2
