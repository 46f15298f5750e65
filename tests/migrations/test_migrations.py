"""Migrations: every revision upgrades, downgrades and upgrades again, and head matches the models.

Both run on SQLite and PostgreSQL from an empty database, through Alembic's own commands.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import orjson
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url

from syncsvc import vocabulary
from syncsvc.db import migrate, search_repo
from syncsvc.db.base import Base
from syncsvc.db.engine import create_engine, create_sessionmaker
from syncsvc.smart.scopes import DEFAULT_RESOURCE_TYPES


def _revisions() -> list[str]:
    script = ScriptDirectory.from_config(migrate.alembic_config())
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


async def _tables(url: str) -> set[str]:
    """The tables of the models: the search index's own (SQLite's FTS5 tables) left out."""
    return {table for table in await _schema(url) if not table.startswith(migrate.HAND_MADE)}


Described = tuple[set[str], set[str], dict[str, Any]]


def _describe(sync: Any) -> dict[str, Described]:
    inspector = inspect(sync)
    return {
        table: (
            {column["name"] for column in inspector.get_columns(table)},
            {str(index["name"]) for index in inspector.get_indexes(table)},
            inspector.get_table_options(table),
        )
        for table in inspector.get_table_names()
        if table != "alembic_version"
    }


async def _schema(url: str) -> dict[str, Described]:
    """Every table with its column and index names and its options (PostgreSQL's fillfactor)."""
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(_describe)
    finally:
        await engine.dispose()


def test_one_head_and_a_linear_history() -> None:
    script = ScriptDirectory.from_config(migrate.alembic_config())
    assert len(script.get_heads()) == 1
    for revision in script.walk_revisions():
        assert not isinstance(revision.down_revision, tuple | list)  # no merge revisions
        assert not revision.is_branch_point
    assert migrate.head_revision() == _revisions()[-1]


async def test_stairway(empty_db_url: str) -> None:
    """upgrade → downgrade → upgrade, one revision at a time: every downgrade really reverts."""
    assert await migrate.current_revision(empty_db_url) is None
    previous: str | None = None
    before = await _schema(empty_db_url)
    for revision in _revisions():
        assert await migrate.upgrade(empty_db_url, revision) == revision
        after = await _schema(empty_db_url)
        assert await migrate.downgrade(empty_db_url, previous or "base") == previous
        assert await _schema(empty_db_url) == before  # the downgrade undid exactly this step
        assert await migrate.upgrade(empty_db_url, revision) == revision
        assert await _schema(empty_db_url) == after
        previous, before = revision, after
    assert await _tables(empty_db_url) == set(Base.metadata.tables)
    await migrate.downgrade(empty_db_url, "base")
    assert set(await _schema(empty_db_url)) == set()


async def test_models_match_migrations(empty_db_url: str) -> None:
    """The in-suite `alembic check`: autogenerate finds nothing to add at head."""
    assert await migrate.upgrade_to_head(empty_db_url) == migrate.head_revision()
    assert await migrate.schema_diff(empty_db_url) == []
    await migrate.check(empty_db_url)


async def test_table_options_match_models(empty_db_url: str) -> None:
    """Autogenerate does not compare table options (``postgresql_with``): compared here."""
    await migrate.upgrade_to_head(empty_db_url)
    dialect = make_url(empty_db_url).get_backend_name()
    schema = await _schema(empty_db_url)
    reflected = {
        table: options
        for table, (_, _, options) in schema.items()
        if not table.startswith(migrate.HAND_MADE)
    }
    # Reflection reads storage parameters back as text.
    expected = {
        table.name: {
            key: {name: str(value) for name, value in value.items()}
            if isinstance(value, dict)
            else value
            for key, value in table.dialect_kwargs.items()
            if key.startswith(f"{dialect}_")
        }
        for table in Base.metadata.tables.values()
    }
    assert reflected == expected
    if dialect == "postgresql":
        assert reflected["connections"] == {"postgresql_with": {"fillfactor": "80"}}


async def test_check_detects_drift(empty_db_url: str) -> None:
    """The comparison is live: a database behind the models shows a difference."""
    await migrate.upgrade_to_head(empty_db_url)
    engine = create_engine(empty_db_url)
    try:
        async with engine.begin() as connection:
            await connection.exec_driver_sql("DROP INDEX ix_connections_user_id")
    finally:
        await engine.dispose()
    diff = await migrate.schema_diff(empty_db_url)
    assert [entry[0] for entry in diff] == ["add_index"]
    with pytest.raises(Exception, match="New upgrade operations detected"):
        await migrate.check(empty_db_url)


def _check_values(sync: Any) -> dict[str, set[str]]:
    inspector = inspect(sync)
    found: dict[str, set[str]] = {}
    for table in ("connections", "sync_states", "sync_runs"):
        for check in inspector.get_check_constraints(table):
            found[str(check["name"])] = set(re.findall(r"'([a-z_]+)'", check["sqltext"]))
    return found


async def test_check_constraints_carry_the_vocabulary(empty_db_url: str) -> None:
    """Autogenerate does not compare CHECK constraints: the stored states are compared here."""
    await migrate.upgrade_to_head(empty_db_url)
    engine = create_engine(empty_db_url)
    try:
        async with engine.connect() as connection:
            found = await connection.run_sync(_check_values)
    finally:
        await engine.dispose()
    assert found["ck_connections_status"] == set(vocabulary.CONNECTION_STATUSES)
    assert found["ck_sync_states_status"] == set(vocabulary.TYPE_STATES)
    assert found["ck_sync_runs_outcome"] == set(vocabulary.RUN_OUTCOMES)


async def test_active_grants_that_read_nothing_become_no_access(empty_db_url: str) -> None:
    """The grant-states revision moves stored ``active`` connections that can read nothing."""
    before = "5c1a7e9d2b40"
    await migrate.upgrade(empty_db_url, before)
    now = dt.datetime.now(dt.UTC)
    engine = create_engine(empty_db_url)
    try:
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO tenants (id, name, display_name, vendor, fhir_base, endpoints, "
                    "capabilities, client_id, auth_method, redirect_uri, configured_scopes, "
                    "created_at, updated_at) VALUES ('t', 't', 'T', 'generic', 'https://x/r4', "
                    "'{}', '[]', 'c', 'public', 'https://s/cb', '[]', :now, :now)"
                ),
                {"now": now},
            )
            for cid, granted in (
                ("reads", '["openid", "patient/Observation.read"]'),
                ("nothing", '["openid", "fhirUser", "launch", "online_access"]'),
            ):
                await connection.execute(
                    text(
                        "INSERT INTO connections (id, tenant_id, user_id, patient_id, fhir_base, "
                        "aud, token_endpoint, client_id, requested_scopes, granted_scopes, "
                        "status, created_at, updated_at, failure_count, next_sync_at) VALUES "
                        "(:id, 't', :id, 'p', 'https://x/r4', 'https://x/r4', 'https://x/t', "
                        "'c', '[]', :granted, 'active', :now, :now, 0, :now)"
                    ),
                    {"id": cid, "granted": granted, "now": now},
                )
        await migrate.upgrade_to_head(empty_db_url)
        async with engine.connect() as connection:
            rows = dict(
                (
                    await connection.execute(
                        text(
                            "SELECT id, status || '/' || COALESCE(status_reason, '') "
                            "FROM connections"
                        )
                    )
                ).all()
            )
        assert rows == {"reads": "active/", "nothing": "no_access/no_readable_type"}
        await migrate.downgrade(empty_db_url, before)
        async with engine.connect() as connection:
            statuses = set(
                (await connection.execute(text("SELECT status FROM connections"))).scalars()
            )
        assert statuses == {"active", "needs_reauth"}
    finally:
        await engine.dispose()


async def test_the_search_index_is_made_at_head(empty_db_url: str) -> None:
    """The hand-made provider search index exists on each database."""
    await migrate.upgrade_to_head(empty_db_url)
    schema = await _schema(empty_db_url)
    if make_url(empty_db_url).get_backend_name() == "sqlite":
        assert "tenant_search_fts" in schema
    else:
        assert "ix_tenant_search_document_fts" in schema["tenant_search"][1]


async def test_tenants_keep_the_types_they_pulled_when_the_default_grows(
    empty_db_url: str,
) -> None:
    """The US Core revision pins a tenant that followed the default to the twelve it had."""
    before = "9a4c2e7b1d63"
    await migrate.upgrade(empty_db_url, before)
    now = dt.datetime.now(dt.UTC)
    engine = create_engine(empty_db_url)
    try:
        async with engine.begin() as connection:
            for tid, types in (("followed", "[]"), ("chose", '["Patient", "Observation"]')):
                await connection.execute(
                    text(
                        "INSERT INTO tenants (id, name, display_name, vendor, fhir_base, "
                        "endpoints, capabilities, client_id, auth_method, redirect_uri, "
                        "configured_scopes, aliases, created_at, updated_at) VALUES (:id, :id, "
                        "'T', 'generic', :base, '{}', '[]', 'c', 'public', 'https://s/cb', "
                        ":types, '[]', :now, :now)"
                    ),
                    {"id": tid, "base": f"https://x/{tid}", "types": types, "now": now},
                )
        await migrate.upgrade_to_head(empty_db_url)
        async with engine.connect() as connection:
            rows = (
                await connection.execute(text("SELECT id, configured_scopes FROM tenants"))
            ).all()
        stored = {
            tid: orjson.loads(types) if isinstance(types, str) else types for tid, types in rows
        }
        assert stored["chose"] == ["Patient", "Observation"]
        assert len(stored["followed"]) == 12
        assert set(stored["followed"]) < set(DEFAULT_RESOURCE_TYPES)
        assert not {"Coverage", "Provenance", "CareTeam"} & set(stored["followed"])
    finally:
        await engine.dispose()


async def test_tenants_registered_before_the_search_are_found_by_folded_names(
    empty_db_url: str,
) -> None:
    """The search revision's backfill lower-cased names only; a later revision folds them as the
    search does, so "hopital" finds a "Hôpital" registered before the search existed."""
    await migrate.upgrade(empty_db_url, "5b0e7f2a9c41")
    now = dt.datetime.now(dt.UTC)
    engine = create_engine(empty_db_url)
    try:
        async with engine.begin() as connection:
            for tenant_id, name in (("t1", "HÔPITAL Sainte-Anne"), ("t2", "Clínica São José")):
                await connection.execute(
                    text(
                        "INSERT INTO tenants (id, name, display_name, vendor, fhir_base, "
                        "endpoints, capabilities, client_id, auth_method, redirect_uri, "
                        "configured_scopes, created_at, updated_at) VALUES (:id, :id, :name, "
                        "'generic', :base, '{}', '[]', 'c', 'public', 'https://s/cb', '[]', "
                        ":now, :now)"
                    ),
                    {"id": tenant_id, "name": name, "base": f"https://{tenant_id}/r4", "now": now},
                )
        await migrate.upgrade_to_head(empty_db_url)
        async with create_sessionmaker(engine)() as session:
            for typed, found in (
                ("hopital", ["t1"]),
                ("Hôpital sainte-anne", ["t1"]),
                ("clinica sao", ["t2"]),
                ("SÃO JOSÉ", ["t2"]),
            ):
                page = await search_repo.search_tenants(session, typed)
                assert [t.id for t in page.tenants] == found, typed
    finally:
        await engine.dispose()
