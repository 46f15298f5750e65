"""Settings: environment and file parsing, precedence, validation, secrets that never print."""

from __future__ import annotations

import base64
import json
import secrets
from pathlib import Path

import pytest

from syncsvc.db.engine import normalise_url
from syncsvc.errors import ConfigError
from syncsvc.settings import (
    DB_POOL_RESERVE,
    MASK,
    MAX_DEFAULT_DB_POOL_SIZE,
    SOCKETS_PER_CONNECTION,
    Secret,
    Settings,
    censor_dsn,
    default_db_pool_size,
    default_sync_concurrency,
)
from syncsvc.sync.pull import TYPES_AT_ONCE


def _key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


def test_defaults_use_sqlite_in_the_data_dir() -> None:
    settings = Settings.from_env({})
    assert settings.data_dir == Path(".syncsvc")
    assert settings.database_url == "sqlite+aiosqlite:///.syncsvc/syncsvc.db"
    assert settings.public_url == "http://127.0.0.1:8000"
    assert settings.public_url_configured is False
    assert settings.tick_seconds == 5.0
    assert settings.keepalive_days == 30
    assert settings.vault_keys == ()
    assert settings.log_format == "auto"  # console on a terminal, JSON otherwise
    assert settings.decode_workers is None  # chosen from the host's cores at start
    assert settings.write_lanes is None  # chosen from the database at start


def test_environment_is_parsed_into_types() -> None:
    first, second = _key(), _key()
    settings = Settings.from_env(
        {
            "SYNCSVC_DATA_DIR": "data/x",
            "SYNCSVC_PUBLIC_URL": "https://sync.example.org/",
            "SYNCSVC_VAULT_KEYS": f"new:{first}, old:{second}",
            "SYNCSVC_API_KEYS": "a1,b2",
            "SYNCSVC_ADMIN_TOKEN": "adm",
            "SYNCSVC_LINK_SIGNING_KEY": "hmac",
            "SYNCSVC_TICK_SECONDS": "0.5",
            "SYNCSVC_KEEPALIVE_DAYS": "7",
            "SYNCSVC_LOG_LEVEL": "debug",
            "SYNCSVC_LOG_FORMAT": "console",
            "SYNCSVC_DECODE_WORKERS": "0",
            "SYNCSVC_WRITE_LANES": "3",
        }
    )
    assert settings.database_url == "sqlite+aiosqlite:///data/x/syncsvc.db"
    assert settings.public_url == "https://sync.example.org"
    assert settings.public_is_https
    assert [key.kid for key in settings.vault_keys] == ["new", "old"]
    assert settings.vault_keys[0].key == base64.b64decode(first)
    assert [key.reveal() for key in settings.api_keys] == ["a1", "b2"]
    assert settings.admin_token is not None
    assert settings.admin_token.reveal() == "adm"
    assert settings.tick_seconds == 0.5
    assert settings.keepalive_days == 7
    assert settings.log_level == "DEBUG"
    assert settings.decode_workers == 0
    assert settings.write_lanes == 3


def test_environment_wins_over_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "syncsvc.toml"
    config.write_text(
        'public_url = "https://file.example"\n'
        'database_url = "postgresql://u:p@db/file"\n'
        'api_keys = ["k1", "k2"]\n'
        "keepalive_days = 10\n"
    )
    settings = Settings.from_env(
        {"SYNCSVC_CONFIG": str(config), "SYNCSVC_PUBLIC_URL": "https://env.example"}
    )
    assert settings.public_url == "https://env.example"
    assert settings.database_url == "postgresql://u:p@db/file"
    assert len(settings.api_keys) == 2
    assert settings.keepalive_days == 10


def test_key_file_is_read_primary_first(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"primary": "b", "keys": {"a": _key(), "b": _key()}}))
    settings = Settings.from_env({"SYNCSVC_VAULT_KEY_FILE": str(path)})
    assert [key.kid for key in settings.vault_keys] == ["b", "a"]
    assert settings.vault_key_file == path


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"SYNCSVC_TICK_SECONDS": "soon"}, "tick_seconds"),
        ({"SYNCSVC_TICK_SECONDS": "0"}, "tick_seconds"),
        ({"SYNCSVC_KEEPALIVE_DAYS": "-1"}, "keepalive_days"),
        ({"SYNCSVC_LOG_FORMAT": "xml"}, "log_format"),
        ({"SYNCSVC_DECODE_WORKERS": "-1"}, "decode_workers"),
        ({"SYNCSVC_DECODE_WORKERS": "65"}, "decode_workers"),
        ({"SYNCSVC_DECODE_WORKERS": "many"}, "decode_workers"),
        ({"SYNCSVC_WRITE_LANES": "0"}, "write_lanes"),
        ({"SYNCSVC_WRITE_LANES": "17"}, "write_lanes"),
        ({"SYNCSVC_WRITE_LANES": "two"}, "write_lanes"),
        ({"SYNCSVC_LOG_LEVEL": "loud"}, "log_level"),
        ({"SYNCSVC_PUBLIC_URL": "sync.example.org"}, "public_url"),
        ({"SYNCSVC_VAULT_KEYS": "nocolon"}, "vault_keys"),
        ({"SYNCSVC_VAULT_KEYS": "k1:!!notbase64!!"}, "vault key"),
        ({"SYNCSVC_VAULT_KEYS": "k1:" + base64.b64encode(b"short").decode()}, "32 bytes"),
        ({"SYNCSVC_VAULT_KEYS": "bad.kid:" + base64.b64encode(bytes(32)).decode()}, "key id"),
        ({"SYNCSVC_VAULT_KEY_FILE": "/nonexistent/keys.json"}, "key file"),
        ({"SYNCSVC_CONFIG": "/nonexistent/syncsvc.toml"}, "config file"),
    ],
)
def test_invalid_values_raise_config_error_naming_the_setting(
    env: dict[str, str], names: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert names in caught.value.message


def test_duplicate_kids_and_both_key_sources_are_refused(tmp_path: Path) -> None:
    key = _key()
    with pytest.raises(ConfigError, match="unique"):
        Settings.from_env({"SYNCSVC_VAULT_KEYS": f"a:{key},a:{key}"})
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"primary": "a", "keys": {"a": key}}))
    with pytest.raises(ConfigError, match="not both"):
        Settings.from_env({"SYNCSVC_VAULT_KEYS": f"a:{key}", "SYNCSVC_VAULT_KEY_FILE": str(path)})


def test_unknown_file_setting_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "syncsvc.toml"
    config.write_text('public_uri = "https://typo.example"\n')
    with pytest.raises(ConfigError, match="public_uri"):
        Settings.from_env({"SYNCSVC_CONFIG": str(config)})


def test_secrets_never_print() -> None:
    secret = Secret("hunter2-token")
    assert str(secret) == MASK
    assert "hunter2" not in repr(secret)
    assert f"{secret}" == MASK
    assert secret.reveal() == "hunter2-token"
    assert secret == Secret("hunter2-token")
    assert secret != Secret("other")


def test_settings_repr_shows_no_secret_or_password() -> None:
    settings = Settings.for_tests(
        database_url="postgresql://syncsvc:pa55word@db.example/prod",
        admin_token=Secret("admin-secret-value"),
    )
    shown = repr(settings)
    assert "pa55word" not in shown
    assert "admin-secret-value" not in shown
    assert settings.link_signing_key is not None
    assert settings.link_signing_key.reveal() not in shown
    for key in settings.vault_keys:
        assert key.encoded() not in shown
    assert settings.database_url_censored == "postgresql://syncsvc:***@db.example/prod"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:secret@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://u:p%40ss@h/db?sslmode=require", "postgresql://u:***@h/db?sslmode=require"),
        ("sqlite+aiosqlite:///x/y.db", "sqlite+aiosqlite:///x/y.db"),
    ],
)
def test_censor_dsn(url: str, shown: str) -> None:
    assert censor_dsn(url) == shown


def test_replace_revalidates() -> None:
    settings = Settings.for_tests()
    assert settings.replace(keepalive_days=3).keepalive_days == 3
    with pytest.raises(ConfigError):
        settings.replace(log_format="yaml")


@pytest.mark.parametrize(
    ("url", "driver"),
    [
        ("postgresql://u@h/db", "postgresql+asyncpg"),
        ("postgres://u@h/db", "postgresql+asyncpg"),
        ("sqlite:///x.db", "sqlite+aiosqlite"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite"),
    ],
)
def test_database_urls_are_rewritten_to_async_drivers(url: str, driver: str) -> None:
    assert normalise_url(url).drivername == driver


def test_unsupported_database_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="mysql"):
        normalise_url("mysql://u@h/db")


def test_an_unset_public_url_follows_the_server_and_a_set_one_does_not() -> None:
    unset = Settings.from_env({})
    assert unset.serving_at("127.0.0.1", 18123).public_url == "http://127.0.0.1:18123"
    assert unset.serving_at("::1", 18123).public_url == "http://[::1]:18123"
    # A rebuilt copy keeps knowing the URL was not chosen by the operator.
    assert unset.replace(tick_seconds=1).serving_at("localhost", 9).public_url == (
        "http://localhost:9"
    )
    configured = Settings.from_env({"SYNCSVC_PUBLIC_URL": "https://sync.example.org/"})
    assert configured.public_url_configured is True
    wildcard = "0.0.0.0"  # noqa: S104 - an argument, nothing binds here
    assert configured.serving_at(wildcard, 18123).public_url == "https://sync.example.org"
    # The derived flag is not a setting of its own.
    ignored = Settings.from_env({"SYNCSVC_PUBLIC_URL_CONFIGURED": "true"})
    assert ignored.public_url_configured is False


def test_the_default_concurrency_is_what_the_descriptors_hold_up_to_a_cap() -> None:
    # Each worked connection may hold a socket per type pulled at once and one for its token.
    assert SOCKETS_PER_CONNECTION >= TYPES_AT_ONCE + 1
    assert default_sync_concurrency(1024) == (1024 - 256) // SOCKETS_PER_CONNECTION
    assert default_sync_concurrency(1 << 20) == 512
    assert default_sync_concurrency(260) == 8  # never below the old fixed default
    # SQLite has one writer: fewer at once there.
    assert default_sync_concurrency(1 << 20, sqlite=True) == 64
    sqlite = Settings.for_tests(database_url="sqlite+aiosqlite:///x.db")
    assert sqlite.sync_concurrency == default_sync_concurrency(sqlite=True)
    postgres = Settings.for_tests(database_url="postgresql+asyncpg://u@127.0.0.1/x")
    assert postgres.sync_concurrency == default_sync_concurrency()
    assert Settings.for_tests(sync_concurrency=3).sync_concurrency == 3
    # Replacing another setting keeps what was derived or set.
    assert postgres.replace(tick_seconds=1.0).sync_concurrency == postgres.sync_concurrency


def test_the_database_pool_follows_the_concurrency_up_to_a_cap() -> None:
    # One per connection worked at once and per write lane, a reserve for the rest ...
    assert default_db_pool_size(8) == 8 + 2 + DB_POOL_RESERVE
    assert default_db_pool_size(8, write_lanes=4) == 8 + 4 + DB_POOL_RESERVE
    # ... bounded: hundreds in flight share a few dozen (their transactions are short).
    assert default_db_pool_size(512) == MAX_DEFAULT_DB_POOL_SIZE
    derived = Settings.for_tests(sync_concurrency=4, write_lanes=1)
    assert derived.db_pool_size == 4 + 1 + DB_POOL_RESERVE
    # Set, it is taken as it is, past the cap too.
    assert Settings.for_tests(db_pool_size=80).db_pool_size == 80
    assert Settings.from_env({"SYNCSVC_DB_POOL_SIZE": "12"}).db_pool_size == 12
    with pytest.raises(ConfigError, match="db_pool_size"):
        Settings.for_tests(db_pool_size=-1)


def test_a_copy_with_other_concurrency_derives_its_pool_again_unless_the_pool_was_set() -> None:
    derived = Settings.for_tests(sync_concurrency=4, write_lanes=1)
    wider = derived.replace(sync_concurrency=10)
    assert wider.db_pool_size == 10 + 1 + DB_POOL_RESERVE
    assert wider.replace(write_lanes=3).db_pool_size == 10 + 3 + DB_POOL_RESERVE
    assert derived.replace(db_pool_size=5).db_pool_size == 5
    # A pool that was set stays as set whatever else a copy changes.
    assert Settings.for_tests(db_pool_size=7).replace(sync_concurrency=50).db_pool_size == 7
    assert derived.replace(db_pool_size=5).replace(sync_concurrency=50).db_pool_size == 5
