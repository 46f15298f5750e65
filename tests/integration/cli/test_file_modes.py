"""The default SQLite database is private to its owner: directory 0700, files 0600.

It was created 0644 in a 0755 directory, so every local user could read the encrypted tokens'
ciphertexts, key ids and every synced patient record.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from tests.integration.cli.runner import syncsvc


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCSVC_")}
    # No database URL: the default SQLite file under the data directory is used.
    env["SYNCSVC_DATA_DIR"] = str(data_dir)
    return env


async def test_default_database_is_created_private_even_under_a_loose_umask(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "fresh" / "data"
    previous = os.umask(0o022)  # the common default: files 0644, directories 0755
    try:
        done = await syncsvc(None, "migrate", env=_env(data_dir))
    finally:
        os.umask(previous)
    assert done.code == 0, done.stderr
    database = data_dir / "syncsvc.db"
    assert database.stat().st_size > 0  # the schema is in it
    assert _mode(data_dir) == 0o700
    for file in data_dir.iterdir():
        assert _mode(file) & 0o077 == 0, (file.name, oct(_mode(file)))
    assert _mode(database) == 0o600


async def test_an_existing_world_readable_database_is_narrowed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    database = data_dir / "syncsvc.db"
    database.touch()
    database.chmod(0o644)
    done = await syncsvc(None, "migrate", env=_env(data_dir))
    assert done.code == 0, done.stderr
    assert _mode(database) == 0o600
