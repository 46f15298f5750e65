"""Run ``python -m syncsvc`` as a real process with a test's settings in its environment."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import orjson

from syncsvc.settings import Settings
from syncsvc.vault import format_key_ring

ROOT = Path(__file__).resolve().parents[3]
COMMAND_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Finished:
    """A finished command: exit code and both streams."""

    code: int
    stdout: str
    stderr: str

    def json(self) -> object:
        """Standard output parsed as one JSON document."""
        return orjson.loads(self.stdout)


def environment(settings: Settings) -> dict[str, str]:
    """``SYNCSVC_*`` variables that reproduce ``settings`` in a child process."""
    assert settings.link_signing_key is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNCSVC_")}
    env |= {
        "SYNCSVC_DATA_DIR": str(settings.data_dir),
        "SYNCSVC_DATABASE_URL": settings.database_url,
        "SYNCSVC_PUBLIC_URL": settings.public_url,
        "SYNCSVC_VAULT_KEYS": format_key_ring(settings.vault_keys),
        "SYNCSVC_LINK_SIGNING_KEY": settings.link_signing_key.reveal(),
        "SYNCSVC_LOG_LEVEL": "WARNING",
    }
    return env


async def syncsvc(
    settings: Settings | None, *args: str, env: dict[str, str] | None = None
) -> Finished:
    """Run one command to completion (bounded by a timeout)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncsvc",
        *args,
        cwd=ROOT,
        env=env if env is not None else environment(settings) if settings else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), COMMAND_TIMEOUT_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return Finished(process.returncode, out.decode(), err.decode())
