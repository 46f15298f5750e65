"""Injected faults of the FHIR server, observed the way a client sees them over real HTTP."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest

from syncsvc.sandbox.config import FaultSpec, SandboxConfig
from syncsvc.sandbox.faults import RESET_LOG_STATUS
from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import GENERIC_TENANT

from .tokens import bearer, mint_access_token

NANCY = "12724066"
SCOPES = "patient/Goal.read patient/Condition.read patient/Observation.read"


@pytest.fixture
def sandbox_config(sandbox_config: SandboxConfig) -> SandboxConfig:
    """Nancy with 3 Goals and 12 Conditions."""
    sandbox_config.tenants[0].patients[0].sizes = {"Goal": 3, "Condition": 12}
    return sandbox_config


class Client:
    """A FHIR client of the generic tenant for Nancy."""

    def __init__(self, sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
        self.sandbox = sandbox
        self.http = http
        self.base = sandbox.urls(GENERIC_TENANT).fhir_base
        self.token = mint_access_token(sandbox, GENERIC_TENANT, NANCY, SCOPES)

    def inject(self, *faults: FaultSpec) -> None:
        self.sandbox.tenant(GENERIC_TENANT).faults[:] = list(faults)

    def url(self, query: str) -> str:
        return query if query.startswith("http") else f"{self.base}/{query}"

    async def raw(self, query: str) -> tuple[int, dict[str, str], bytes]:
        async with self.http.get(self.url(query), headers=bearer(self.token)) as response:
            return response.status, dict(response.headers), await response.read()

    async def json(self, query: str) -> tuple[int, dict[str, Any]]:
        status, _, body = await self.raw(query)
        return status, orjson.loads(body)


@pytest.fixture
def client(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> Client:
    """A client of the running sandbox."""
    return Client(sandbox, http)


def _next(bundle: dict[str, Any]) -> str | None:
    return next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)


async def test_latency_delays_the_answer(client: Client) -> None:
    client.inject(FaultSpec(kind="latency", latency_ms=200, count=1))

    started = time.monotonic()
    status, _ = await client.json(f"Goal?patient={NANCY}")
    delayed = time.monotonic() - started

    assert status == 200
    # A lower bound only: the sandbox sleeps at least this long before answering.
    assert delayed >= 0.19


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("status_500", 500, "exception"),
        ("status_502", 502, "transient"),
        ("status_503", 503, "transient"),
        ("status_504", 504, "timeout"),
    ],
)
async def test_server_errors_fire_count_times(
    client: Client, kind: Any, status: int, code: str
) -> None:
    client.inject(FaultSpec(kind=kind, count=2))

    answers = [await client.json(f"Goal?patient={NANCY}") for _ in range(3)]

    assert [a[0] for a in answers] == [status, status, 200]
    assert answers[0][1]["issue"][0]["code"] == code


@pytest.mark.parametrize("kind", ["status_500", "status_502", "status_503", "status_504"])
async def test_server_errors_carry_retry_after_only_when_asked(client: Client, kind: Any) -> None:
    client.inject(
        FaultSpec(kind=kind, count=1, retry_after=4, with_retry_after=True),
        FaultSpec(kind=kind, count=1),
    )

    _, told, _ = await client.raw(f"Goal?patient={NANCY}")
    _, untold, _ = await client.raw(f"Goal?patient={NANCY}")

    assert told["Retry-After"] == "4"
    assert "Retry-After" not in untold


async def test_a_patients_fault_fires_only_for_that_patients_token(
    client: Client, sandbox: RunningSandbox
) -> None:
    wilma = "12742400"
    client.inject(FaultSpec(kind="status_503", target="Condition", patient=wilma))
    wilma_token = mint_access_token(sandbox, GENERIC_TENANT, wilma, SCOPES)

    nancy_status, _ = await client.json(f"Condition?patient={NANCY}")
    async with client.http.get(
        client.url(f"Condition?patient={wilma}"), headers=bearer(wilma_token)
    ) as response:
        wilma_status = response.status
    async with client.http.get(
        client.url(f"Goal?patient={wilma}"), headers=bearer(wilma_token)
    ) as response:
        other_type = response.status
    # A request without a valid token is refused before any patient's fault is consulted.
    async with client.http.get(client.url(f"Condition?patient={wilma}")) as response:
        anonymous = response.status

    assert (nancy_status, wilma_status, other_type, anonymous) == (200, 503, 200, 401)
    assert sandbox.state.fault_counters == {}  # a persistent fault keeps no count


async def test_a_patients_slow_answer_outlasts_a_client_timeout(client: Client) -> None:
    client.inject(FaultSpec(kind="latency", latency_ms=600, patient=NANCY, count=1))
    timeout = aiohttp.ClientTimeout(total=0.2)

    with pytest.raises(TimeoutError):
        async with client.http.get(
            client.url(f"Goal?patient={NANCY}"), headers=bearer(client.token), timeout=timeout
        ) as response:
            await response.read()
    assert (await client.json(f"Goal?patient={NANCY}"))[0] == 200


async def test_throttle_answers_429_throttled_with_retry_after(client: Client) -> None:
    client.inject(FaultSpec(kind="throttle", retry_after=7, count=1))

    status, headers, body = await client.raw(f"Goal?patient={NANCY}")

    assert status == 429
    assert headers["Retry-After"] == "7"
    assert orjson.loads(body)["issue"][0]["code"] == "throttled"


async def test_throttle_without_retry_after(client: Client) -> None:
    client.inject(FaultSpec(kind="throttle_no_retry_after", count=1))

    status, headers, body = await client.raw(f"Goal?patient={NANCY}")

    assert status == 429
    assert "Retry-After" not in headers
    assert orjson.loads(body)["issue"][0]["code"] == "throttled"


async def test_reset_drops_the_connection(client: Client, sandbox: RunningSandbox) -> None:
    # aiohttp retries an idempotent request once after a reset, so it takes two to surface.
    client.inject(FaultSpec(kind="reset", count=2))

    with pytest.raises(aiohttp.ClientConnectionError):
        await client.raw(f"Goal?patient={NANCY}")
    status, _ = await client.json(f"Goal?patient={NANCY}")

    assert status == 200
    statuses = [e.status for e in sandbox.state.request_log]
    assert statuses[-3:] == [RESET_LOG_STATUS, RESET_LOG_STATUS, 200]


async def test_malformed_json_is_a_200_that_does_not_parse(client: Client) -> None:
    client.inject(FaultSpec(kind="malformed_json", count=1))

    status, headers, body = await client.raw(f"Goal?patient={NANCY}")

    assert status == 200
    assert headers["Content-Type"] == "application/fhir+json"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)


async def test_truncated_body_is_shorter_than_announced(client: Client) -> None:
    client.inject(FaultSpec(kind="truncated", count=1))

    with pytest.raises(aiohttp.ClientPayloadError):
        await client.raw(f"Goal?patient={NANCY}")
    assert (await client.json(f"Goal?patient={NANCY}"))[0] == 200


async def test_reset_mid_body_sends_part_of_the_page_then_drops_the_connection(
    client: Client,
) -> None:
    client.inject(FaultSpec(kind="reset_mid_body", target="Condition", patient=NANCY, count=1))

    with pytest.raises((aiohttp.ClientPayloadError, aiohttp.ClientConnectionError)):
        await client.raw(f"Condition?patient={NANCY}")
    assert (await client.json(f"Condition?patient={NANCY}"))[0] == 200


async def test_body_faults_apply_to_reads(client: Client) -> None:
    _, bundle = await client.json(f"Condition?patient={NANCY}")
    condition_id = bundle["entry"][0]["resource"]["id"]
    client.inject(FaultSpec(kind="malformed_json", target="Condition", count=1))

    status, _, body = await client.raw(f"Condition/{condition_id}")

    assert status == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(body)


async def test_next_self_points_at_the_current_page(client: Client) -> None:
    client.inject(FaultSpec(kind="next_self", count=1))

    _, bundle = await client.json(f"Condition?patient={NANCY}&_count=5")

    self_url = bundle["link"][0]["url"]
    assert _next(bundle) == self_url == f"{client.base}/Condition?patient={NANCY}&_count=5"


async def test_next_foreign_leaves_the_origin(client: Client, sandbox: RunningSandbox) -> None:
    client.inject(FaultSpec(kind="next_foreign", count=1))

    _, bundle = await client.json(f"Condition?patient={NANCY}&_count=5")

    next_url = _next(bundle)
    assert next_url is not None
    foreign = urlsplit(next_url)
    assert foreign.hostname == "127.0.0.2"
    assert foreign.port == urlsplit(sandbox.origin).port
    assert foreign.path == urlsplit(client.base).path + "/Condition"
    assert "pageContext=" in foreign.query


async def test_an_empty_last_page_still_has_a_next_then_paging_ends(client: Client) -> None:
    client.inject(FaultSpec(kind="empty_last_page_with_next"))

    pages: list[dict[str, Any]] = []
    url: str | None = f"Goal?patient={NANCY}&_count=10"
    while url is not None and len(pages) < 10:
        status, bundle = await client.json(url)
        assert status == 200
        pages.append(bundle)
        url = _next(bundle)

    assert [len(p.get("entry", [])) for p in pages] == [3, 0, 0]
    assert _next(pages[1]) is not None
    assert _next(pages[2]) is None


async def test_a_foreign_patient_entry_is_injected(client: Client) -> None:
    client.inject(FaultSpec(kind="foreign_patient_entry", count=1))

    _, bundle = await client.json(f"Goal?patient={NANCY}")
    _, clean = await client.json(f"Goal?patient={NANCY}")

    subjects = [e["resource"]["subject"]["reference"] for e in bundle["entry"]]
    assert len(subjects) == 4
    assert subjects.count(f"Patient/{NANCY}") == 3
    assert len(clean["entry"]) == 3


async def test_a_retried_page_context_serves_the_same_page_after_an_outage(
    client: Client,
) -> None:
    _, first = await client.json(f"Condition?patient={NANCY}&_count=5")
    next_url = _next(first)
    assert next_url is not None
    client.inject(FaultSpec(kind="status_503", count=1))

    failed, _ = await client.json(next_url)
    retried, second = await client.json(next_url)
    _, again = await client.json(next_url)

    assert (failed, retried) == (503, 200)
    assert [e["resource"]["id"] for e in second["entry"]] == [
        e["resource"]["id"] for e in again["entry"]
    ]


async def test_a_type_target_only_hits_that_type(client: Client) -> None:
    client.inject(FaultSpec(kind="status_500", target="Condition"))

    assert (await client.json(f"Goal?patient={NANCY}"))[0] == 200
    assert (await client.json(f"Condition?patient={NANCY}"))[0] == 500


async def test_token_faults_do_not_touch_the_fhir_server(client: Client) -> None:
    client.inject(
        FaultSpec(kind="status_500", target="token"), FaultSpec(kind="token_outage", target="fhir")
    )

    assert (await client.json(f"Goal?patient={NANCY}"))[0] == 200


async def test_rate_zero_never_fires_and_rate_one_always_fires(client: Client) -> None:
    client.inject(FaultSpec(kind="status_503", rate=0.0))
    assert [(await client.json(f"Goal?patient={NANCY}"))[0] for _ in range(3)] == [200] * 3

    client.inject(FaultSpec(kind="status_503", rate=1.0))
    assert [(await client.json(f"Goal?patient={NANCY}"))[0] for _ in range(3)] == [503] * 3
