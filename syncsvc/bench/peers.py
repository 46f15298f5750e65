"""The same pull written with the FHIR client libraries a team would otherwise use.

Each peer runs in a fresh process (default garbage collector, its own memory), pulls every
patient's Observations page by page the way the library's documentation shows, and stores one
row per resource into SQLite with the standard ``sqlite3`` module, committing per page. The
child times itself from the first request to the last commit and reports back through a pipe.

* ``fhirclient`` (SMART's Python client, synchronous): ``Observation.where(...)
  .perform_iter(server)`` over a client restored from its saved state, patients one by one.
* ``fhirpy`` (asynchronous): ``client.resources("Observation").search(...).limit(n)`` iterated
  with ``async for``, every patient at once.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.util
import json
import multiprocessing
import sqlite3
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any, Literal

from syncsvc.bench.measure import peak_rss_mib, reset_peak_rss, rss_mib

PeerName = Literal["fhirclient", "fhirpy"]
PEERS: tuple[PeerName, ...] = ("fhirclient", "fhirpy")
#: A peer round that takes longer than this is abandoned (the process is terminated).
PEER_TIMEOUT_SECONDS = 900.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS resources ("
    " patient_id TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL,"
    " last_updated TEXT, body TEXT NOT NULL,"
    " PRIMARY KEY (patient_id, resource_type, resource_id))"
)
_INSERT = "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?)"


def _open(db_path: str) -> sqlite3.Connection:
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute(_SCHEMA)
    db.commit()
    return db


def _fhirclient(fhir_base: str, grants: Sequence[tuple[str, str]], db_path: str, count: int) -> int:
    # Optional (the bench extra) and untyped: imported here, used only here.
    from fhirclient import client  # noqa: PLC0415
    from fhirclient.models.observation import (  # noqa: PLC0415
        Observation,
    )

    db = _open(db_path)
    stored = 0
    for patient, token in grants:
        state = {
            "app_id": "bench",
            "server": {
                "base_uri": fhir_base + "/",
                "auth_type": "oauth2",
                "auth": {"app_id": "bench", "access_token": token},
            },
        }
        smart = client.FHIRClient(state=state)
        search = Observation.where(struct={"patient": patient, "_count": str(count)})
        for bundle in search.perform_iter(smart.server):
            rows = [
                (
                    patient,
                    "Observation",
                    entry.resource.id,
                    entry.resource.meta.lastUpdated.isostring if entry.resource.meta else None,
                    json.dumps(entry.resource.as_json()),
                )
                for entry in bundle.entry or []
            ]
            db.executemany(_INSERT, rows)
            db.commit()
            stored += len(rows)
    db.close()
    return stored


def _fhirpy(fhir_base: str, grants: Sequence[tuple[str, str]], db_path: str, count: int) -> int:
    from fhirpy import AsyncFHIRClient  # noqa: PLC0415 - optional: the bench extra

    db = _open(db_path)

    async def one(patient: str, token: str) -> int:
        fhir = AsyncFHIRClient(fhir_base, authorization=f"Bearer {token}")
        search = fhir.resources("Observation").search(patient=patient).limit(count)
        page: list[tuple[str, str, str, str | None, str]] = []
        stored = 0
        async for observation in search:
            resource = observation.serialize()  # type: ignore[no-untyped-call]  # fhirpy
            meta = resource.get("meta") or {}
            page.append(
                (
                    patient,
                    "Observation",
                    resource["id"],
                    meta.get("lastUpdated"),
                    json.dumps(resource),
                )
            )
            if len(page) == count:
                db.executemany(_INSERT, page)
                db.commit()
                stored += len(page)
                page = []
        if page:
            db.executemany(_INSERT, page)
            db.commit()
            stored += len(page)
        return stored

    async def everyone() -> int:
        return sum(await asyncio.gather(*(one(p, t) for p, t in grants)))

    stored = asyncio.run(everyone())
    db.close()
    return stored


def _child(
    name: PeerName,
    *,
    fhir_base: str,
    grants: list[tuple[str, str]],
    db_path: str,
    count: int,
    pipe: Pipe,
) -> None:
    # Import the library before the clock starts: start-up is not what is compared.
    importlib.import_module("fhirclient.models.observation" if name == "fhirclient" else "fhirpy")
    before = rss_mib()
    reset_peak_rss()
    wall, cpu = time.perf_counter(), time.process_time()
    pull = _fhirclient if name == "fhirclient" else _fhirpy
    try:
        stored = pull(fhir_base, grants, db_path, count)
    except Exception as exc:  # report any library failure to the parent, which says it
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    pipe.send(
        {
            "seconds": time.perf_counter() - wall,
            "cpu_seconds": time.process_time() - cpu,
            "items": stored,
            "rss_before_mib": before,
            "peak_rss_mib": peak_rss_mib(),
        }
    )


def peer_available(name: PeerName) -> bool:
    """Whether the peer's library is installed (the ``bench`` extra)."""
    return importlib.util.find_spec(name) is not None


def run_peer(
    name: PeerName,
    fhir_base: str,
    grants: Sequence[tuple[str, str]],
    db_path: Path,
    *,
    count: int,
) -> dict[str, Any]:
    """Run one peer round in a fresh process; its measurements (or ``{"error": ...}``)."""
    db_path.unlink(missing_ok=True)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(
        target=_child,
        args=(name,),
        kwargs={
            "fhir_base": fhir_base,
            "grants": list(grants),
            "db_path": str(db_path),
            "count": count,
            "pipe": child,
        },
        daemon=True,
    )
    process.start()
    child.close()
    try:
        if not parent.poll(PEER_TIMEOUT_SECONDS):
            return {"error": "timed out"}
        result: dict[str, Any] = parent.recv()
        return result
    except EOFError:
        return {"error": f"the peer process died (exit code {process.exitcode})"}
    finally:
        parent.close()
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(10)
