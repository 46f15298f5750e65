"""Every log line of a full launch and sync, through the real logging setup, holds no secret or PHI.

Two patients connect through the real pages (a client-secret tenant and a private-key tenant),
then the runner refreshes and syncs both. The captured log must hold none of: access and refresh
tokens (before and after the sync's refresh), authorization codes, states, connect links, the
client secret, the private key, and the patients' ids, names and birth dates as the synced Patient
resources spell them.
"""

from __future__ import annotations

import io
import re

import orjson
from sqlalchemy import select
from yarl import URL

from syncsvc.db.models.connections import Connection
from syncsvc.db.models.records import Resource
from syncsvc.web.keys import SERVICES
from tests.integration.connected import SANDBOX_SECRET
from tests.integration.web.flows import Flow, stored_tokens, sync_now
from tests.integration.web.service import RunningService

#: Identifiers shorter than this could match digits of a timing by chance.
MIN_ID_LENGTH = 6


async def _patient_identifiers(service: RunningService) -> tuple[list[str], list[str]]:
    """(ids, names and birth dates) of the connected patients, from the synced Patient rows."""
    ids: list[str] = []
    words: list[str] = []
    async with service.app[SERVICES].sessionmaker() as session:
        for connection in await session.scalars(select(Connection)):
            ids.append(connection.patient_id)
        for row in await session.scalars(
            select(Resource).where(Resource.resource_type == "Patient")
        ):
            patient = orjson.loads(row.body)
            ids.append(patient["id"])
            words.append(patient["birthDate"])
            for name in patient["name"]:
                given = " ".join(name.get("given", []))
                words += [*name.get("given", []), f"{given} {name['family']}"]
                words.append(name["family"])
    assert ids
    assert words
    return ids, words


async def test_logs_of_a_full_launch_and_sync_hold_no_secret_or_patient_identifier(
    captured_logs: io.StringIO, flow: Flow, pkjwt_private_key: str
) -> None:
    service = flow.service
    visited = await flow.connect_confidential_clients(pkjwt_private_key)
    secrets = await stored_tokens(service)
    report = await sync_now(service)
    assert report.sync["ok"] == 2, report.to_json()
    secrets += await stored_tokens(service)
    secrets += [SANDBOX_SECRET, *pkjwt_private_key.splitlines()[1:3]]
    callbacks = [URL(u) for u in visited if u.startswith(service.callback)]
    assert len(callbacks) == 2
    for callback in callbacks:
        secrets += [callback.query["code"], callback.query["state"]]
    links = [URL(u).query["link"] for u in visited if "/connect?link=" in u]
    assert len(links) == 2
    secrets += links
    ids, words = await _patient_identifiers(service)

    text = captured_logs.getvalue()
    # The capture really saw the launch, the callback's access line and the sync runs.
    assert "launch_completed" in text
    assert "/callback" in text
    assert text.count('"sync run"') == 2
    for secret in secrets:
        assert secret not in text
    for patient_id in ids:
        assert len(patient_id) >= MIN_ID_LENGTH
        assert patient_id not in text
    for word in words:
        assert not re.search(rf"\b{re.escape(word)}\b", text), word
