"""One incremental pass over a fleet written with the FHIR client libraries a team would use.

What a team writes instead of syncsvc to keep patients current: for each connection, refresh
the access token with a plain HTTP POST to the token endpoint (storing the new tokens, since a
rolling refresh token replaces the old one), read the Patient, and search each other resource
type for the patient, with ``_lastUpdated=gt<last sync>`` where the EHR supports it and whole
otherwise; every resource is stored in SQLite with the standard ``sqlite3`` module, committing
per connection. Each loop runs in a fresh process and times itself from the first request to
the last commit, as :mod:`syncsvc.bench.peers` does for the first sync.

* ``fhirclient`` (synchronous): ``requests`` for the token, ``Patient.read`` and
  ``Type.where(...).perform_iter(server)``; connections one after the other.
* ``fhirpy`` (asynchronous): ``aiohttp`` for the token, ``client.reference(...).to_resource()``
  and ``client.resources(type).search(...)`` iterated with ``async for``; every connection at
  once.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import multiprocessing
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from pathlib import Path
from typing import Any

from syncsvc.bench.peers import PEER_TIMEOUT_SECONDS, PeerName

#: Each HTTP request of a peer gives up after this long.
REQUEST_TIMEOUT_SECONDS = 60.0

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS resources ("
    " patient_id TEXT NOT NULL, resource_type TEXT NOT NULL, resource_id TEXT NOT NULL,"
    " last_updated TEXT, body TEXT NOT NULL,"
    " PRIMARY KEY (patient_id, resource_type, resource_id));"
    "CREATE TABLE IF NOT EXISTS tokens ("
    " connection TEXT PRIMARY KEY, access_token TEXT, refresh_token TEXT, expires_in INTEGER)"
)
_INSERT = "INSERT OR REPLACE INTO resources VALUES (?, ?, ?, ?, ?)"
_TOKENS = "INSERT OR REPLACE INTO tokens VALUES (?, ?, ?, ?)"


@dataclass
class PeerConnection:
    """What a team's loop keeps per connection (plain values: it crosses a process boundary)."""

    key: str
    patient: str
    fhir_base: str
    token_url: str
    client_id: str
    refresh_token: str
    #: Resource types other than Patient, each with whether the EHR takes ``_lastUpdated``.
    types: list[tuple[str, bool]]
    #: ``_lastUpdated`` lower bound: the connection's last sync, as ``YYYY-MM-DDTHH:MM:SSZ``.
    since: str


def _open(db_path: str) -> sqlite3.Connection:
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA journal_mode = WAL")
    db.executescript(_SCHEMA)
    db.commit()
    return db


def _row(patient: str, resource: dict[str, Any]) -> tuple[str, str, str, str | None, str]:
    meta = resource.get("meta") or {}
    return (
        patient,
        resource["resourceType"],
        resource["id"],
        meta.get("lastUpdated"),
        json.dumps(resource),
    )


def _fhirclient(connections: Sequence[PeerConnection], db_path: str) -> dict[str, Any]:
    # Optional (the bench extra) and untyped: imported here, used only here.
    import requests  # noqa: PLC0415
    from fhirclient import client  # noqa: PLC0415
    from fhirclient.models.patient import Patient  # noqa: PLC0415

    db = _open(db_path)
    stored = requests_made = 0
    rotated: dict[str, str] = {}
    with requests.Session() as http:
        for c in connections:
            answer = http.post(
                c.token_url,
                data={
                    "grant_type": "refresh_token",
                    "refresh_token": c.refresh_token,
                    "client_id": c.client_id,
                },
                timeout=REQUEST_TIMEOUT_SECONDS,
            )
            requests_made += 1
            answer.raise_for_status()
            token = answer.json()
            refresh = token.get("refresh_token") or c.refresh_token
            rotated[c.key] = refresh
            db.execute(_TOKENS, (c.key, token["access_token"], refresh, token.get("expires_in")))
            state = {
                "app_id": "bench",
                "server": {
                    "base_uri": c.fhir_base + "/",
                    "auth_type": "oauth2",
                    "auth": {"app_id": "bench", "access_token": token["access_token"]},
                },
            }
            smart = client.FHIRClient(state=state)
            rows = [_row(c.patient, Patient.read(c.patient, smart.server).as_json())]
            requests_made += 1
            for resource_type, incremental in c.types:
                model = getattr(
                    importlib.import_module(f"fhirclient.models.{resource_type.lower()}"),
                    resource_type,
                )
                struct = {"patient": c.patient}
                if incremental:
                    struct["_lastUpdated"] = f"gt{c.since}"
                for bundle in model.where(struct=struct).perform_iter(smart.server):
                    requests_made += 1
                    rows += [_row(c.patient, e.resource.as_json()) for e in bundle.entry or []]
            db.executemany(_INSERT, rows)
            db.commit()
            stored += len(rows)
    db.close()
    return {"items": stored, "requests": requests_made, "rotated": rotated}


def _fhirpy(connections: Sequence[PeerConnection], db_path: str) -> dict[str, Any]:
    import aiohttp  # noqa: PLC0415 - fhirpy's own HTTP client
    from fhirpy import AsyncFHIRClient  # noqa: PLC0415 - optional: the bench extra

    db = _open(db_path)
    rotated: dict[str, str] = {}
    counted = {"requests": 0}

    async def one(http: aiohttp.ClientSession, c: PeerConnection) -> int:
        form = {
            "grant_type": "refresh_token",
            "refresh_token": c.refresh_token,
            "client_id": c.client_id,
        }
        async with http.post(c.token_url, data=form) as answer:
            answer.raise_for_status()
            token = await answer.json()
        counted["requests"] += 1
        refresh = token.get("refresh_token") or c.refresh_token
        rotated[c.key] = refresh
        db.execute(_TOKENS, (c.key, token["access_token"], refresh, token.get("expires_in")))
        fhir = AsyncFHIRClient(c.fhir_base, authorization=f"Bearer {token['access_token']}")
        patient = await fhir.reference("Patient", c.patient).to_resource()
        counted["requests"] += 1
        rows = [_row(c.patient, patient.serialize())]  # type: ignore[no-untyped-call]  # fhirpy
        for resource_type, incremental in c.types:
            search = fhir.resources(resource_type).search(patient=c.patient)
            if incremental:
                search = search.search(_lastUpdated=f"gt{c.since}")
            # fhirpy fetches the pages as it iterates; at least one request per search.
            counted["requests"] += 1
            async for resource in search:
                rows.append(_row(c.patient, resource.serialize()))  # type: ignore[no-untyped-call]
        db.executemany(_INSERT, rows)
        db.commit()
        return len(rows)

    async def everyone() -> int:
        timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            return sum(await asyncio.gather(*(one(http, c) for c in connections)))

    stored = asyncio.run(everyone())
    db.close()
    return {"items": stored, "requests": counted["requests"], "rotated": rotated}


def _child(name: PeerName, connections: list[PeerConnection], db_path: str, pipe: Pipe) -> None:
    # Import the libraries before the clock starts: start-up is not what is compared.
    importlib.import_module("fhirclient.models.patient" if name == "fhirclient" else "fhirpy")
    wall, cpu = time.perf_counter(), time.process_time()
    loop = _fhirclient if name == "fhirclient" else _fhirpy
    try:
        done = loop(connections, db_path)
    except Exception as exc:  # report any library failure to the parent, which says it
        pipe.send({"error": f"{type(exc).__name__}: {exc}"})
        return
    pipe.send(
        done | {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}
    )


def run_pass(
    name: PeerName, connections: Sequence[PeerConnection], db_path: Path
) -> dict[str, Any]:
    """One incremental pass of ``name`` in a fresh process; its figures (or ``{"error": ...}``).

    The figures hold ``rotated``: each connection's refresh token after the pass.
    """
    db_path.unlink(missing_ok=True)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(
        target=_child, args=(name, list(connections), str(db_path), child), daemon=True
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
