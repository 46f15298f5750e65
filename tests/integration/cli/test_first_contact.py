"""A new operator's first contact: wrong database URLs in words, the first key, the first start.

Every command runs as a real process. A database URL that is malformed, names an unsupported
scheme, points at a closed port or at a database that does not exist must give one plain line on
stderr (never a traceback, never the password) and the documented exit code: 2 for a wrong
setting, 1 for a database that is down.
"""

from __future__ import annotations

import asyncio
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from sqlalchemy.engine import make_url

from syncsvc.sandbox.config import default_config
from syncsvc.sandbox.patient import ScriptedPatient
from syncsvc.sandbox.server import running_sandbox
from syncsvc.settings import Settings, parse_vault_keys, read_key_file
from tests.fixtures.sandbox import CERNER_TENANT
from tests.integration.cli.runner import Finished, environment, started, syncsvc

DATA = Path(__file__).resolve().parents[2] / "data" / "endpoints"
PASSWORD = "hunter2-not-for-logs"
READY_TIMEOUT_SECONDS = 30.0

#: Every command that touches the database, with arguments that get it that far.
COMMANDS: tuple[tuple[str, ...], ...] = (
    ("migrate",),
    ("serve", "--port", "0"),
    ("worker",),
    ("sync", "--once"),
    ("config", "check"),
    ("keys", "status"),
    ("keys", "rotate", "--reencrypt-only"),
    ("tenants", "list"),
    ("tenants", "show", "clinic"),
    ("tenants", "check", "clinic"),
    ("tenants", "remove", "clinic"),
    ("tenants", "add", "--name", "clinic", "--base", "https://fhir.invalid/r4", "--client-id", "c"),
    ("tenants", "import", str(DATA / "oracle_current.json"), "--client-id", "c"),
    ("connections", "list"),
    ("connections", "show", "some-id"),
    ("connections", "sync", "some-id"),
    ("connections", "disconnect", "some-id"),
    ("connect-link", "--user", "u1"),
)


@dataclass(frozen=True)
class BadDatabase:
    """A wrong database URL, what the operator must read, and the exit code."""

    url: str
    words: str
    code: int


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _bad_databases(postgres_server: str) -> list[BadDatabase]:
    closed = _closed_port()
    missing = make_url(postgres_server).set(database="syncsvc_no_such_database")
    return [
        BadDatabase("db.internal:5432/syncsvc", "is not a valid database URL", 2),
        BadDatabase("mysql://syncsvc@127.0.0.1/x", "scheme 'mysql' is not supported", 2),
        BadDatabase(
            f"postgresql://syncsvc:{PASSWORD}@127.0.0.1:{closed}/x",
            f"connection refused by 127.0.0.1:{closed}",
            1,
        ),
        BadDatabase(
            missing.render_as_string(hide_password=False),
            'database "syncsvc_no_such_database" does not exist',
            1,
        ),
    ]


def _assert_one_plain_line(result: Finished, bad: BadDatabase, command: tuple[str, ...]) -> None:
    output = result.stdout + result.stderr
    assert result.code == bad.code, (command, bad.url, output)
    assert "Traceback" not in output
    assert PASSWORD not in output
    assert "SYNCSVC_DATABASE_URL" in output
    if command == ("config", "check") and bad.code == 1:
        # config check prints the settings; the database line says what is wrong with it.
        assert "database: cannot use the database" in result.stdout
        assert bad.words in result.stdout
        return
    [line] = result.stderr.splitlines()
    assert line.startswith(f"syncsvc {_name(command)}: ")
    assert bad.words in line


def _name(command: tuple[str, ...]) -> str:
    """How the command names itself: ``tenants add`` for a group's action, else ``serve``."""
    groups = {"tenants", "connections", "keys", "config"}
    return " ".join(command[:2]) if command[0] in groups else command[0]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c[:2]))
async def test_a_wrong_database_url_is_one_line_with_the_right_exit_code(
    command: tuple[str, ...], postgres_server: str, tmp_path: Path
) -> None:
    base = environment(Settings.for_tests(data_dir=tmp_path))
    cases = _bad_databases(postgres_server)
    results = await asyncio.gather(
        *(syncsvc(None, *command, env=base | {"SYNCSVC_DATABASE_URL": bad.url}) for bad in cases)
    )
    for bad, result in zip(cases, results, strict=True):
        _assert_one_plain_line(result, bad, command)


def _empty_machine(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a machine where nothing of syncsvc is set but ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCSVC_")}
    return env | {f"SYNCSVC_{name.upper()}": value for name, value in settings.items()}


async def _wait_ready(origin: str) -> dict[str, object]:
    async with aiohttp.ClientSession() as http, asyncio.timeout(READY_TIMEOUT_SECONDS):
        while True:
            try:
                async with http.get(f"{origin}/readyz") as response:
                    if response.status == 200:
                        body: dict[str, object] = await response.json()
                        return body
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.1)


async def test_keys_init_config_check_migrate_and_serve_on_an_empty_folder(
    tmp_path: Path,
) -> None:
    port = _closed_port()
    env = _empty_machine(tmp_path, public_url=f"http://127.0.0.1:{port}")

    before = await syncsvc(None, "config", "check", env=env, cwd=tmp_path)
    assert before.code == 2, before.stderr
    assert "MISSING: vault key" in before.stdout
    assert "syncsvc keys init" in before.stdout

    init = await syncsvc(None, "keys", "init", env=env, cwd=tmp_path)
    assert init.code == 0, init.stderr
    key_file = tmp_path / ".syncsvc" / "vault-keys.json"
    link_key = tmp_path / ".syncsvc" / "link-signing-key"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert link_key.stat().st_mode & 0o777 == 0o600
    again = await syncsvc(None, "keys", "init", env=env, cwd=tmp_path)
    assert again.code == 2
    assert "already exists" in again.stderr

    check = await syncsvc(None, "config", "check", env=env, cwd=tmp_path)
    assert check.code == 0, check.stdout + check.stderr
    assert "MISSING" not in check.stdout
    assert "run `syncsvc migrate`" in check.stdout
    # Secrets are masked: neither key's bytes are printed.
    assert link_key.read_text().strip() not in check.stdout
    assert key_file.read_text().split('"')[-2] not in check.stdout

    first = await syncsvc(None, "migrate", env=env, cwd=tmp_path)
    assert first.code == 0, first.stderr
    assert "upgraded the schema from empty to" in first.stdout
    second = await syncsvc(None, "migrate", env=env, cwd=tmp_path)
    assert second.code == 0, second.stderr
    assert "already at the newest schema" in second.stdout

    async with started("serve", "--port", str(port), env=env, cwd=tmp_path):
        body = await _wait_ready(f"http://127.0.0.1:{port}")
    assert body["status"] == "ready"


async def test_serve_and_worker_refuse_an_unmigrated_database(tmp_path: Path) -> None:
    env = environment(Settings.for_tests(data_dir=tmp_path))
    env["SYNCSVC_DATABASE_URL"] = f"sqlite:///{tmp_path / 'empty.db'}"
    for command in (("serve", "--port", "0"), ("worker",)):
        result = await syncsvc(None, *command, env=env)
        assert result.code == 1, result.stderr
        [line] = result.stderr.splitlines()
        assert "has no syncsvc schema yet: run `syncsvc migrate`" in line


async def test_worker_waits_for_the_database_and_says_so_once(tmp_path: Path) -> None:
    env = environment(Settings.for_tests(data_dir=tmp_path))
    env["SYNCSVC_DATABASE_URL"] = f"sqlite:///{tmp_path / 'later.db'}"
    env["SYNCSVC_LOG_LEVEL"] = "INFO"
    env["SYNCSVC_LOG_FORMAT"] = "console"
    async with started("worker", "--wait-for-db", "60", env=env) as worker:
        await worker.wait_for_line(lambda line: "waiting for the database" in line)
        migrated = await syncsvc(None, "migrate", env=env)
        assert migrated.code == 0, migrated.stderr
        await worker.wait_for_line(lambda line: "database ready" in line)
        await worker.wait_for_line(lambda line: "scheduler started" in line)
    assert worker.process.returncode == 0
    # Several attempts failed while waiting, one line said so.
    assert sum("waiting for the database" in line for line in worker.lines) == 1
    assert not any("Traceback" in line for line in worker.lines)


async def test_serve_without_a_public_url_issues_links_and_redirect_uris_on_its_port(
    settings: Settings, tmp_path: Path
) -> None:
    port = _closed_port()
    origin = f"http://127.0.0.1:{port}"
    env = environment(settings) | {"SYNCSVC_API_KEYS": "host-app-key"}
    del env["SYNCSVC_PUBLIC_URL"]
    sandbox_config = default_config(redirect_uris=[f"{origin}/callback/cerner"])
    async with running_sandbox(sandbox_config, host="127.0.0.1", port=0) as sandbox:
        added = await syncsvc(
            None,
            "tenants", "add", "--name", "cerner", "--base", sandbox.urls(CERNER_TENANT).fhir_base,
            "--client-id", "syncsvc-public", "--vendor", "cerner",
            env=env,
        )  # fmt: skip
        assert added.code == 0, added.stderr
        async with started("serve", "--port", str(port), "--no-sync", env=env):
            await _wait_ready(origin)
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{origin}/api/v1/connect-links",
                    json={"user_id": "user-1", "tenant": "cerner"},
                    headers={"Authorization": "Bearer host-app-key"},
                ) as response,
            ):
                assert response.status == 201, await response.text()
                link: str = (await response.json())["url"]
            assert link.startswith(f"{origin}/connect?")
            async with ScriptedPatient(username="nancysmart") as patient:
                page = await patient.connect(link)
    assert page.status == 200, page.body
    authorize = next(url for url in patient.visited if "redirect_uri=" in url)
    assert f"redirect_uri=http%3A%2F%2F127.0.0.1%3A{port}%2Fcallback%2Fcerner&" in authorize


async def test_an_idle_serve_at_info_prints_no_scheduler_chatter(settings: Settings) -> None:
    port = _closed_port()
    origin = f"http://127.0.0.1:{port}"
    env = environment(settings) | {
        "SYNCSVC_LOG_LEVEL": "INFO",
        "SYNCSVC_LOG_FORMAT": "json",
        "SYNCSVC_TICK_SECONDS": "0.2",
    }

    async def serve_for_ticks(env: dict[str, str]) -> list[str]:
        async with started("serve", "--port", str(port), env=env) as serve:
            await _wait_ready(origin)
            await _wait_for_ticks(origin, IDLE_TICKS)
        assert serve.process.returncode == 0, serve.lines
        return serve.lines

    lines = await serve_for_ticks(env)
    assert not [line for line in lines if "apscheduler" in line.lower()]
    assert not [line for line in lines if "Traceback" in line]
    # The same run at DEBUG shows APScheduler's lines: the check above could have failed.
    noisy = await serve_for_ticks(env | {"SYNCSVC_LOG_LEVEL": "DEBUG"})
    assert [line for line in noisy if "apscheduler" in line.lower()]


IDLE_TICKS = 10


async def _wait_for_ticks(origin: str, count: int) -> None:
    """Wait until /readyz has shown ``count`` different times of the scheduler's last tick."""
    seen: set[object] = set()
    async with aiohttp.ClientSession() as http, asyncio.timeout(READY_TIMEOUT_SECONDS):
        while len(seen) < count:
            async with http.get(f"{origin}/readyz") as response:
                body = await response.json()
            if body.get("last_tick_at") is not None:
                seen.add(body["last_tick_at"])
            await asyncio.sleep(0.05)


async def test_tenant_names_are_checked_before_anything_runs() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCSVC_")}
    result = await syncsvc(
        None,
        "tenants", "add", "--name", "bad name!", "--base", "https://fhir.example.org/r4",
        "--client-id", "c",
        env=env,
    )  # fmt: skip
    assert result.code == 2
    assert "tenant name 'bad name!' is not valid" in result.stderr
    assert "Traceback" not in result.stderr


async def test_an_unreachable_fhir_base_is_said_in_words(settings: Settings) -> None:
    port = _closed_port()
    result = await syncsvc(
        settings,
        "tenants", "add", "--name", "nowhere", "--base", f"http://127.0.0.1:{port}/fhir",
        "--client-id", "c",
    )  # fmt: skip
    assert result.code == 1
    [line] = result.stderr.splitlines()
    assert line == (
        f"syncsvc tenants add: Could not reach http://127.0.0.1:{port}/fhir: "
        f"connection refused by 127.0.0.1:{port}"
    )


async def test_a_port_in_use_is_named(settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for command in (("serve",), ("sandbox",)):
            result = await syncsvc(settings, *command, "--port", str(port))
            assert result.code == 1, result.stderr
            assert result.stderr.splitlines() == [
                f"syncsvc {command[0]}: cannot listen on 127.0.0.1:{port}: port {port} is "
                "already in use (another syncsvc, or another program?)"
            ]


async def test_keys_init_writes_a_named_key_file_or_prints_a_key_ring(tmp_path: Path) -> None:
    env = _empty_machine(tmp_path)
    key_file = tmp_path / "etc" / "vault-keys.json"
    made = await syncsvc(None, "keys", "init", "--file", str(key_file), env=env, cwd=tmp_path)
    assert made.code == 0, made.stderr
    assert made.stdout == f"SYNCSVC_VAULT_KEY_FILE={key_file}\n"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / ".syncsvc").exists()  # nothing else was written
    ring = read_key_file(key_file)
    assert len(ring) == 1

    printed = await syncsvc(None, "keys", "init", "--print", env=env, cwd=tmp_path)
    assert printed.code == 0, printed.stderr
    name, _, value = printed.stdout.strip().partition("=")
    assert name == "SYNCSVC_VAULT_KEYS"
    [key] = parse_vault_keys(value)
    assert len(key.key) == 32
    assert key.kid != ring[0].kid
    # The printed ring works as the setting: config check finds the vault key.
    check = await syncsvc(
        None, "config", "check", "--no-database", env=env | {name: value}, cwd=tmp_path
    )
    assert "MISSING: vault key" not in check.stdout
    assert value.partition(":")[2] not in check.stdout
