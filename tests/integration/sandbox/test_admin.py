"""The sandbox admin API over real HTTP: data, policy, faults, grants, clock, request log."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import aiohttp
import orjson
import pytest

from syncsvc.sandbox.server import RunningSandbox
from tests.fixtures.sandbox import CERNER_TENANT, EPIC_TENANT, GENERIC_TENANT

from .tokens import bearer, claims_of, mint_access_token

#: The sandbox admin API takes changes as JSON only (no page can send that cross-origin).
JSON = {"Content-Type": "application/json"}

NANCY = "12724066"
WILMA = "12742400"
SCOPES = (
    "patient/Observation.read patient/Condition.read patient/Goal.read patient/Patient.read "
    "patient/CarePlan.read"
)


class Admin:
    """Calls the admin API and the FHIR API of one tenant as Nancy."""

    def __init__(self, sandbox: RunningSandbox, http: aiohttp.ClientSession) -> None:
        self.sandbox = sandbox
        self.http = http
        self.token = mint_access_token(sandbox, CERNER_TENANT, NANCY, SCOPES)
        self.base = sandbox.urls(CERNER_TENANT).fhir_base

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        data = orjson.dumps(body) if body is not None else None
        url = f"{self.sandbox.origin}/admin/{path}"
        async with self.http.request(method, url, data=data, headers=JSON) as response:
            raw = await response.read()
            return response.status, orjson.loads(raw) if raw else None

    def resources(self, resource_type: str, patient: str = NANCY) -> str:
        return f"tenants/{CERNER_TENANT}/patients/{patient}/{resource_type}"

    async def fhir(self, query: str, token: str | None = None) -> tuple[int, Any]:
        headers = bearer(token or self.token)
        async with self.http.get(f"{self.base}/{query}", headers=headers) as response:
            raw = await response.read()
            return response.status, orjson.loads(raw) if raw else None


@pytest.fixture
def admin(sandbox: RunningSandbox, http: aiohttp.ClientSession) -> Admin:
    """An admin client of the running sandbox."""
    return Admin(sandbox, http)


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", [])]


async def test_an_added_resource_is_newest_and_found_incrementally(
    admin: Admin, sandbox: RunningSandbox
) -> None:
    _, before = await admin.fhir(f"Observation?patient={NANCY}&_count=200")
    newest = before["entry"][-1]["resource"]["meta"]["lastUpdated"]
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{WILMA}"},
        "valueQuantity": {"value": 71, "unit": "/min"},
    }

    status, added = await admin.call("POST", admin.resources("Observation"), observation)
    _, since = await admin.fhir(f"Observation?patient={NANCY}&_lastUpdated=gt{newest}")

    assert status == 201
    assert added["meta"]["versionId"] == "1"
    # The store files a resource under the patient it was posted for, whatever it claimed.
    assert added["subject"] == {"reference": f"Patient/{NANCY}"}
    assert abs(_epoch(added["meta"]["lastUpdated"]) - sandbox.state.now()) < 5
    assert _ids(since) == [added["id"]]
    assert since["entry"][0]["resource"] == added


async def test_update_makes_a_new_version_with_a_new_last_updated(admin: Admin) -> None:
    _, listing = await admin.call("GET", admin.resources("Condition"))
    oldest = listing[0]

    _, replaced = await admin.call(
        "PUT",
        f"{admin.resources('Condition')}/{oldest['id']}",
        {"resourceType": "Condition", "code": {"text": "Replaced"}},
    )
    _, patched = await admin.call(
        "PATCH", f"{admin.resources('Condition')}/{oldest['id']}", {"note": [{"text": "seen"}]}
    )
    _, touched = await admin.call("PATCH", f"{admin.resources('Condition')}/{oldest['id']}")
    status, read = await admin.fhir(f"Condition/{oldest['id']}")
    _, after = await admin.call("GET", admin.resources("Condition"))

    assert [replaced["meta"]["versionId"], patched["meta"]["versionId"]] == ["2", "3"]
    assert touched["meta"]["versionId"] == "4"
    assert patched["code"] == {"text": "Replaced"}
    assert patched["note"] == [{"text": "seen"}]
    assert replaced["meta"]["lastUpdated"] > oldest["lastUpdated"]
    assert (status, read) == (200, touched)
    assert after[-1]["id"] == oldest["id"]
    assert oldest["id"] not in [r["id"] for r in after[:-1]]


async def test_delete_removes_from_search_and_reads_answer_410(admin: Admin) -> None:
    _, before = await admin.fhir(f"Condition?patient={NANCY}&_count=100")
    victim = before["entry"][0]["resource"]["id"]

    status, _ = await admin.call("DELETE", f"{admin.resources('Condition')}/{victim}")
    _, after = await admin.fhir(f"Condition?patient={NANCY}&_count=100")
    read_status, outcome = await admin.fhir(f"Condition/{victim}")
    again, _ = await admin.call("DELETE", f"{admin.resources('Condition')}/{victim}")

    assert status == 204
    assert after["total"] == before["total"] - 1
    assert victim not in _ids(after)
    assert (read_status, outcome["issue"][0]["code"]) == (410, "deleted")
    assert again == 404


async def test_entered_in_error_is_a_new_version_per_type(admin: Admin) -> None:
    _, observations = await admin.call("GET", admin.resources("Observation"))
    _, conditions = await admin.call("GET", admin.resources("Condition"))
    _, goals = await admin.call("GET", admin.resources("Goal"))

    _, observation = await admin.call(
        "POST", f"{admin.resources('Observation')}/{observations[0]['id']}/entered-in-error"
    )
    _, condition = await admin.call(
        "POST", f"{admin.resources('Condition')}/{conditions[0]['id']}/entered-in-error"
    )
    _, goal = await admin.call(
        "POST", f"{admin.resources('Goal')}/{goals[0]['id']}/entered-in-error"
    )
    _, searched = await admin.fhir(f"Observation?patient={NANCY}&_count=200")

    assert observation["status"] == "entered-in-error"
    assert observation["meta"]["versionId"] == "2"
    assert condition["verificationStatus"]["coding"][0]["code"] == "entered-in-error"
    assert "clinicalStatus" not in condition
    assert goal["lifecycleStatus"] == "entered-in-error"
    # Still searchable: clients must see the status to retract what they stored.
    assert searched["entry"][-1]["resource"] == observation


@pytest.mark.parametrize(
    ("path", "body", "expected"),
    [
        ("tenants/nope/patients/12724066/Observation", {}, 404),
        ("tenants/{tenant}/patients/nobody/Observation", {}, 404),
        ("tenants/{tenant}/patients/12724066/Basic", {}, 404),
        ("tenants/{tenant}/patients/12724066/Patient", {}, 400),
        ("tenants/{tenant}/patients/12724066/Observation", {"resourceType": "Condition"}, 400),
        ("tenants/{tenant}/patients/12724066/Observation", {"id": "bad id!"}, 400),
        ("tenants/{tenant}/patients/12724066/Observation", [1, 2], 400),
    ],
)
async def test_bad_resource_calls_are_refused(
    admin: Admin, path: str, body: Any, expected: int
) -> None:
    status, answer = await admin.call("POST", path.format(tenant=CERNER_TENANT), body)

    assert status == expected
    assert answer["error"]


async def test_adding_an_existing_id_conflicts(admin: Admin) -> None:
    _, listing = await admin.call("GET", admin.resources("Goal"))

    status, _ = await admin.call("POST", admin.resources("Goal"), {"id": listing[0]["id"]})

    assert status == 409


async def test_patch_policy_changes_search_rules_at_run_time(admin: Admin) -> None:
    path = f"tenants/{CERNER_TENANT}/policy"

    status, policy = await admin.call("PATCH", path, {"count_defaults": {"Condition": 3}})
    _, bundle = await admin.fhir(f"Condition?patient={NANCY}")
    _, read_back = await admin.call("GET", path)

    assert status == 200
    assert policy["count_defaults"] == {"Observation": 50, "DocumentReference": 10, "Condition": 3}
    assert len(bundle["entry"]) == 3
    assert read_back == policy


async def test_patch_policy_can_remove_a_required_category(admin: Admin) -> None:
    path = f"tenants/{CERNER_TENANT}/policy"
    required, _ = await admin.fhir(f"CarePlan?patient={NANCY}")

    await admin.call("PATCH", path, {"required_categories": {"CarePlan": None}})
    _, policy = await admin.call("GET", path)
    allowed, _ = await admin.fhir(f"CarePlan?patient={NANCY}")

    assert (required, allowed) == (400, 200)
    assert policy["required_categories"] == {}


@pytest.mark.parametrize(
    "patch",
    [{"no_such_switch": True}, {"default_count": "ten"}, {"default_count": 5, "pkce": "bogus"}],
)
async def test_patch_policy_refuses_unknown_or_invalid_fields_atomically(
    admin: Admin, patch: dict[str, Any]
) -> None:
    path = f"tenants/{CERNER_TENANT}/policy"
    _, before = await admin.call("GET", path)

    status, answer = await admin.call("PATCH", path, patch)
    _, after = await admin.call("GET", path)

    assert status == 400
    assert answer["error"] in ("unknown_field", "invalid_value")
    assert after == before


async def test_faults_are_replaced_counted_and_cleared(admin: Admin) -> None:
    path = f"tenants/{CERNER_TENANT}/faults"

    status, faults = await admin.call(
        "PUT", path, [{"kind": "status_503", "count": 1}, {"kind": "latency", "rate": 0.0}]
    )
    first, _ = await admin.fhir(f"Condition?patient={NANCY}")
    second, _ = await admin.fhir(f"Condition?patient={NANCY}")
    _, listed = await admin.call("GET", path)
    cleared, _ = await admin.call("DELETE", path)
    _, empty = await admin.call("GET", path)

    assert status == 200
    assert [f["kind"] for f in faults] == ["status_503", "latency"]
    assert (first, second) == (503, 200)
    assert [f["fired"] for f in listed] == [1, 0]
    assert cleared == 204
    assert empty == []


@pytest.mark.parametrize(
    "faults",
    [
        [{"kind": "meteor_strike"}],
        [{"kind": "status_500", "colour": "red"}],
        [{"kind": "status_500", "rate": 2}],
        [{"kind": "status_500", "count": -1}],
        [{"target": "fhir"}],
        {"kind": "status_500"},
    ],
)
async def test_invalid_faults_are_refused(admin: Admin, faults: Any) -> None:
    status, _ = await admin.call("PUT", f"tenants/{CERNER_TENANT}/faults", faults)

    assert status == 400
    assert admin.sandbox.tenant(CERNER_TENANT).faults == []


async def test_revoking_a_grant_stops_its_tokens(admin: Admin) -> None:
    gid = claims_of(admin.sandbox, admin.token)["gid"]
    assert (await admin.fhir(f"Goal?patient={NANCY}"))[0] == 200

    status, answer = await admin.call("POST", "grants/revoke", {"gid": gid})

    assert (status, answer) == (200, {"revoked": [gid]})
    assert (await admin.fhir(f"Goal?patient={NANCY}"))[0] == 401


async def test_revoking_by_patient_and_client(admin: Admin, sandbox: RunningSandbox) -> None:
    other = mint_access_token(sandbox, EPIC_TENANT, NANCY, SCOPES, client_id="other-app")
    wilma = mint_access_token(sandbox, CERNER_TENANT, WILMA, SCOPES)

    _, by_patient = await admin.call("POST", "grants/revoke", {"patient": NANCY})
    grants = sandbox.state.grants

    assert sorted(by_patient["revoked"]) == sorted(
        str(claims_of(sandbox, t)["gid"]) for t in (admin.token, other)
    )
    assert not grants[str(claims_of(sandbox, wilma)["gid"])].revoked
    _, by_client = await admin.call(
        "POST", "grants/revoke", {"client_id": "syncsvc-public", "tenant": CERNER_TENANT}
    )
    assert str(claims_of(sandbox, wilma)["gid"]) in by_client["revoked"]


@pytest.mark.parametrize("body", [{}, {"grant": "x"}, None])
async def test_revoke_needs_a_selector(admin: Admin, body: Any) -> None:
    status, _ = await admin.call("POST", "grants/revoke", body)

    assert status == 400


async def test_grants_summary_shows_no_token_values(admin: Admin, sandbox: RunningSandbox) -> None:
    gid = str(claims_of(sandbox, admin.token)["gid"])
    sandbox.state.grants[gid].refresh_token = "refresh-token-value"

    status, grants = await admin.call("GET", "grants")
    async with admin.http.get(f"{sandbox.origin}/admin/grants") as response:
        text = await response.text()

    assert status == 200
    assert [g["gid"] for g in grants] == [gid]
    assert grants[0]["has_refresh_token"] is True
    assert grants[0]["patient"] == NANCY
    assert "refresh-token-value" not in text
    assert admin.token not in text


async def test_clock_advance_expires_tokens(admin: Admin) -> None:
    _, before = await admin.call("GET", "clock")

    status, after = await admin.call("POST", "clock/advance", {"seconds": 600})
    expired, _ = await admin.fhir(f"Goal?patient={NANCY}")

    assert status == 200
    assert after["offset"] == before["offset"] + 600
    assert after["now"] >= before["now"] + 600
    assert expired == 401


@pytest.mark.parametrize("body", [{"seconds": "600"}, {"seconds": True}, {}])
async def test_clock_advance_needs_a_number(admin: Admin, body: Any) -> None:
    status, _ = await admin.call("POST", "clock/advance", body)

    assert status == 400


async def test_request_log_records_whose_token_went_where(
    admin: Admin, sandbox: RunningSandbox
) -> None:
    epic_token = mint_access_token(sandbox, EPIC_TENANT, NANCY, SCOPES)
    await admin.call("DELETE", "requests")
    await admin.fhir(f"Goal?patient={NANCY}")
    # An Epic token sent to the Cerner tenant: the log must show it.
    await admin.fhir(f"Goal?patient={NANCY}", token=epic_token)

    _, log = await admin.call("GET", "requests")
    _, cerner_only = await admin.call("GET", f"requests?tenant={CERNER_TENANT}&since=1")
    _, epic = await admin.call("GET", f"requests?tenant={EPIC_TENANT}")

    fhir_entries = [e for e in log if "/admin/" not in e["url"]]
    assert [(e["tenant_id"], e["token_tenant"], e["status"]) for e in fhir_entries] == [
        (CERNER_TENANT, CERNER_TENANT, 200),
        (CERNER_TENANT, EPIC_TENANT, 401),
    ]
    assert fhir_entries[0]["url"] == f"{admin.base}/Goal?patient={NANCY}"
    assert fhir_entries[0]["token_id"] == claims_of(sandbox, admin.token)["jti"]
    assert all(e["index"] >= 1 for e in cerner_only)
    assert [e["token_tenant"] for e in epic] == [EPIC_TENANT]
    assert admin.token not in orjson.dumps(log).decode()


async def test_request_log_clear_and_bad_since(admin: Admin) -> None:
    await admin.fhir(f"Goal?patient={NANCY}")

    cleared, _ = await admin.call("DELETE", "requests")
    _, log = await admin.call("GET", "requests")
    bad, _ = await admin.call("GET", "requests?since=-3")

    assert cleared == 204
    # Only the DELETE itself, logged once it finished.
    assert [e["method"] for e in log] == ["DELETE"]
    assert bad == 400


async def test_admin_paths_do_not_count_as_tenant_requests(admin: Admin) -> None:
    await admin.call("DELETE", "requests")
    await admin.call("GET", f"tenants/{GENERIC_TENANT}/policy")

    _, log = await admin.call("GET", f"requests?tenant={GENERIC_TENANT}")

    assert log == []


def _epoch(instant: str) -> float:
    return datetime.fromisoformat(instant).timestamp()


@pytest.mark.parametrize(
    ("headers", "body"),
    [
        # CSRF: a page elsewhere posts a "simple" request (no preflight) from the browser.
        ({"Content-Type": "text/plain", "Origin": "https://evil.example"}, b'{"seconds": 9e6}'),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"seconds=9000000"),
        # A page of another origin that managed a JSON body (only after a preflight, never
        # granted here) is still refused by its Origin.
        ({"Content-Type": "application/json", "Origin": "http://evil.example"}, b'{"seconds": 1}'),
        # DNS rebinding: evil.example now resolves to 127.0.0.1, so the page is same-origin
        # with the sandbox; the Host header still names it.
        (
            {"Content-Type": "application/json", "Host": "rebind.evil.example:8765"},
            b'{"seconds": 9e6}',
        ),
    ],
)
async def test_a_web_page_cannot_drive_the_admin_api(
    admin: Admin, sandbox: RunningSandbox, headers: dict[str, str], body: bytes
) -> None:
    offset = sandbox.state.clock_offset
    url = f"{sandbox.origin}/admin/clock/advance"
    async with admin.http.post(url, data=body, headers=headers) as response:
        answer = await response.json()
    assert response.status == 403
    assert answer["error"] == "forbidden"
    assert sandbox.state.clock_offset == offset
    # The same change from a local tool (JSON, loopback Host, no foreign Origin) goes through.
    local = {"Content-Type": "application/json", "Origin": sandbox.origin}
    async with admin.http.post(url, data=b'{"seconds": 5}', headers=local) as response:
        assert response.status == 200
    assert sandbox.state.clock_offset == offset + 5
    async with admin.http.get(f"{sandbox.origin}/admin/clock", headers={"Host": "localhost"}) as r:
        assert r.status == 200


async def test_the_request_log_says_how_many_were_served_at_once(admin: Admin) -> None:
    faults = f"tenants/{CERNER_TENANT}/faults"
    await admin.call("PUT", faults, [{"kind": "latency", "latency_ms": 300}])
    await admin.call("DELETE", "requests")
    try:
        # Three at once, held by the latency until all three have arrived; then one alone.
        async with asyncio.timeout(10):
            await asyncio.gather(*(admin.fhir(f"Goal?patient={NANCY}") for _ in range(3)))
            await admin.fhir(f"Goal?patient={NANCY}")
    finally:
        await admin.call("DELETE", faults)

    _, log = await admin.call("GET", f"requests?tenant={CERNER_TENANT}")

    assert sorted(e["in_flight"] for e in log[:3]) == [1, 2, 3]
    assert log[3]["in_flight"] == 1
