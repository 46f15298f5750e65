"""The sandbox EHR in a child process, so its CPU does not count against the measured side."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
from collections.abc import Iterator
from multiprocessing.connection import Connection as Pipe

from syncsvc.sandbox.config import SandboxConfig
from syncsvc.sandbox.server import running_sandbox

#: How long the child may take to generate nothing and bind (data is generated lazily).
START_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 10.0


def _serve(config: SandboxConfig, pipe: Pipe) -> None:
    """Child process: serve the sandbox on an ephemeral loopback port until the pipe closes."""

    async def serve() -> None:
        async with running_sandbox(config, host="127.0.0.1", port=0) as sandbox:
            pipe.send(sandbox.origin)
            loop = asyncio.get_running_loop()
            closed = asyncio.Event()
            # The parent closing its end (or dying) is the stop signal.
            loop.add_reader(pipe.fileno(), closed.set)
            await closed.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


@contextlib.contextmanager
def sandbox_process(config: SandboxConfig) -> Iterator[str]:
    """Start the sandbox in a spawned process; yields its origin (``http://127.0.0.1:port``)."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_serve, args=(config, child), daemon=True)
    process.start()
    child.close()
    try:
        if not parent.poll(START_TIMEOUT_SECONDS):
            raise RuntimeError("the sandbox process did not start in time")
        origin = parent.recv()
        if not isinstance(origin, str):
            raise RuntimeError("the sandbox process sent no origin")
        yield origin
    finally:
        parent.close()
        process.join(STOP_TIMEOUT_SECONDS)
        if process.is_alive():
            process.terminate()
            process.join(STOP_TIMEOUT_SECONDS)
