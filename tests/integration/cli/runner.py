"""Run ``python -m syncsvc`` as a real process with a test's settings in its environment."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
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
    settings: Settings | None,
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> Finished:
    """Run one command to completion (bounded by a timeout)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncsvc",
        *args,
        cwd=cwd,
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


@dataclass
class Started:
    """A long-running command (``serve``, ``worker``) and the stderr lines it wrote so far."""

    process: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _done: bool = False

    async def wait_for_line(self, matches: Callable[[str], bool]) -> str:
        """The first stderr line ``matches`` accepts (waiting for it, bounded)."""
        seen = 0
        async with asyncio.timeout(COMMAND_TIMEOUT_SECONDS):
            while True:
                # No await between scanning and clearing: the reader cannot slip a line in.
                for line in self.lines[seen:]:
                    if matches(line):
                        return line
                seen = len(self.lines)
                if self._done:
                    raise AssertionError(f"exited {self.process.returncode}: {self.lines}")
                self._changed.clear()
                await self._changed.wait()

    async def _read(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode().rstrip("\n"))
            self._changed.set()
        await self.process.wait()
        self._done = True
        self._changed.set()


@asynccontextmanager
async def started(*args: str, env: dict[str, str], cwd: Path = ROOT) -> AsyncIterator[Started]:
    """Start ``syncsvc ARGS``; on exit, SIGTERM it and wait (bounded), then kill if needed."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "syncsvc",
        *args,
        cwd=cwd,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    running = Started(process)
    reader = asyncio.create_task(running._read())
    try:
        yield running
    finally:
        if process.returncode is None:
            with suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), COMMAND_TIMEOUT_SECONDS)
        except TimeoutError:
            process.kill()
            await process.wait()
        with suppress(TimeoutError):
            await asyncio.wait_for(reader, 5)
